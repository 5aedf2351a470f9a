"""Prometheus metrics at ``/metrics`` (prometheus-client; HTTP requests observed by the request-context
middleware through :func:`http_observer`).

========================================  ================================================================
metric                                    what
========================================  ================================================================
``http_requests_total``                   requests by ``handler`` (the route template, ``none`` for a path
                                          no route matches), ``method`` and ``status`` (the exact code)
``http_request_duration_seconds``         their latency, same labels (histogram)
``leukodx_assessments_total``             assessments by ``channel`` (rest, rest_fhir, cds) and ``tier``
``leukodx_assessment_alerts_total``       alerts raised, by ``alert`` id
``leukodx_case_errors_total``             cases the engine refused (422 on REST), by ``channel``
``leukodx_cds_cards_total``               CDS cards returned, by ``service`` and ``indicator``
``leukodx_fhir_fetch_duration_seconds``   one CDS call's queries to the EHR's FHIR server (histogram)
``leukodx_fhir_fetch_queries_total``      those queries by prefetch ``key`` and ``outcome`` (complete,
                                          partial, failed)
``leukodx_engine_failures_total``         rules-engine calls that failed (not a case error), by ``operation``
``leukodx_engine_recycles_total``         engines rebuilt after a failure (observed from the API)
``leukodx_audit_records_total``           audit records written, by ``event`` and ``outcome``
``leukodx_audit_write_failures_total``    audit records that could not be written (alert on it)
========================================  ================================================================

Several worker processes (``leukodx serve --workers N``): each keeps its own counts, so
``leukodx serve`` runs every worker in prometheus-client's multiprocess mode (api/serving.py sets
``PROMETHEUS_MULTIPROC_DIR``), and ``/metrics``, whichever worker answers, adds up all of them.

The API observes the engine without the engine knowing (it imports neither prometheus-client nor
OpenTelemetry): the route dependency ``engine`` is overridden by :func:`observed_engine`, which
hands routes an :class:`ObservedEngine` around the worker's engine.
"""
from __future__ import annotations

import os
import time
from typing import Any, Awaitable, Callable, Iterable, Optional

from fastapi import FastAPI, Response
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               disable_created_metrics, generate_latest)
from starlette.routing import Match
from starlette.types import Scope

from leukodx.engine import CaseError, Engine, get_engine

from . import audit, tracing

__all__ = ["install", "http_observer", "route_template", "observed_engine", "ObservedEngine", "observed_fetch",
           "cards_returned", "note_engine", "labelled"]

disable_created_metrics()   # no *_created series: a start time per label set doubles the series for nothing
HTTP_REQUESTS = Counter("http_requests", "HTTP requests by route template, method and status",
                        ["handler", "method", "status"])
HTTP_LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency by route template, method and status",
                         ["handler", "method", "status"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ASSESSMENTS = Counter("leukodx_assessments", "Assessments by channel and neutrophil risk tier", ["channel", "tier"])
ALERTS = Counter("leukodx_assessment_alerts", "Alerts raised by assessments, by alert id", ["alert"])
CASE_ERRORS = Counter("leukodx_case_errors", "Cases the engine refused (CaseError), by channel", ["channel"])
CARDS = Counter("leukodx_cds_cards", "CDS Hooks cards returned, by service and indicator", ["service", "indicator"])
FHIR_FETCH = Histogram("leukodx_fhir_fetch_duration_seconds", "One CDS call's queries to the EHR's FHIR server",
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30))
FHIR_QUERIES = Counter("leukodx_fhir_fetch_queries", "FHIR queries by prefetch key and outcome (complete, partial, "
                                                     "failed)", ["key", "outcome"])
ENGINE_FAILURES = Counter("leukodx_engine_failures", "Rules-engine calls that failed (not a case error)",
                          ["operation"])
ENGINE_RECYCLES = Counter("leukodx_engine_recycles", "Rules engines rebuilt after a failure")
AUDIT_RECORDS = Counter("leukodx_audit_records", "Audit records written, by event and outcome", ["event", "outcome"])
AUDIT_FAILURES = Counter("leukodx_audit_write_failures", "Audit records that could not be written")


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, kept: prometheus-client checks the values and takes a lock on each call
    (a few microseconds, about seven times a CDS call), and keeps each label set's child for the
    process's life anyway, so keeping them here adds no series and no memory that grows with traffic."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


# -- HTTP -------------------------------------------------------------------------------------------

def route_template(scope: Scope, routes: Callable[[], Iterable[Any]]) -> str:
    """The template of the route that answered (``/cds-services/{service_id}``), ``none`` when no route
    matched, so a scan of random paths adds no series. The route is the one the router chose
    (``scope["route"]``); where a router leaves it out (older Starlette, whose application lists its
    routes flat), the path is matched against the routes again."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes() if getattr(r, "path", None) and r.matches(scope)[0] is Match.FULL), None)
    return getattr(route, "path", None) or "none"


def http_observer(routes: Callable[[], Iterable[Any]]) -> Callable[[Scope, int, float], None]:
    """What RequestContext (api/middleware.py) calls once each request is answered: counts and times
    it by route template, method and status (an exception is counted as the 500 it is answered
    with). ``/metrics`` itself is not counted."""
    def observe(scope: Scope, status: int, seconds: float) -> None:
        if scope.get("path") == "/metrics":
            return
        labels = (route_template(scope, routes), scope.get("method", ""), str(status))
        labelled(HTTP_REQUESTS, *labels).inc()
        labelled(HTTP_LATENCY, *labels).observe(seconds)
    return observe


def registry() -> CollectorRegistry:
    """What /metrics exposes: this process's metrics, or every worker's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged
    return REGISTRY


def install(app: FastAPI) -> None:
    """The /metrics route (the HTTP requests are observed by RequestContext with :func:`http_observer`)."""
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)


# -- the engine, observed from the API --------------------------------------------------------------

_SEEN: list[Optional[Engine]] = [None]


def note_engine(eng: Engine) -> Engine:
    """Count a recycle when the process's engine is not the one seen last (get_engine rebuilt it)."""
    if _SEEN[0] is not None and _SEEN[0] is not eng:
        ENGINE_RECYCLES.inc()
    _SEEN[0] = eng
    audit.note_engine(eng.kb.version)
    return eng


def _channel() -> str:
    rec = audit.current()
    return rec.channel() if rec is not None else "other"


class ObservedEngine:
    """The worker's engine with a span, metrics and the audit record around ``assess`` and
    ``check_orders``; everything else is the engine's own."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def assess(self, raw: Any, ctcae_version: Optional[str] = None, partial: bool = False) -> Any:
        channel = _channel()
        with tracing.span("leukodx.assess", **{"leukodx.channel": channel, "leukodx.partial": partial}) as s:
            try:
                a = self._engine.assess(raw, ctcae_version, partial)
            except CaseError:
                CASE_ERRORS.labels(channel).inc()
                s.set_attribute("leukodx.outcome", "case_error")
                raise
            except Exception:
                ENGINE_FAILURES.labels("assess").inc()
                raise
            tier = a.risk_tier.tier
            labelled(ASSESSMENTS, channel, tier).inc()
            for alert in a.alerts:
                labelled(ALERTS, alert.id).inc()
            s.set_attribute("leukodx.tier", tier)
            s.set_attribute("leukodx.alerts", [x.id for x in a.alerts])
            s.set_attribute("leukodx.kb_version", a.kb_version)
            audit.note_assessment(a)
            return a

    def check_orders(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._engine.check_orders(*args, **kwargs)
        except Exception:
            ENGINE_FAILURES.labels("check_orders").inc()
            raise


def observed_engine() -> ObservedEngine:
    """The routes' engine (api/deps.py), as create_app provides it."""
    return ObservedEngine(note_engine(get_engine()))


# -- CDS Hooks --------------------------------------------------------------------------------------

async def observed_fetch(fetch: Callable[..., Awaitable[dict[str, Any]]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fetch(*args, **kwargs)`` (api/fhir/fetch.py's fetch_queries) in a span, timed, each query's
    outcome counted by its prefetch key."""
    start = time.perf_counter()
    with tracing.span("leukodx.fhir.fetch") as s:
        outcomes = await fetch(*args, **kwargs)
        counts = {"complete": 0, "partial": 0, "failed": 0}
        for key, out in outcomes.items():
            outcome = "failed" if out.resources is None else ("partial" if out.note else "complete")
            counts[outcome] += 1
            FHIR_QUERIES.labels(key, outcome).inc()
        for outcome, n in counts.items():
            s.set_attribute(f"leukodx.fhir.{outcome}", n)
    FHIR_FETCH.observe(time.perf_counter() - start)
    return outcomes


def cards_returned(service: str, cards: Iterable[Any]) -> None:
    """The cards of one CDS call: counted by indicator and written to the audit record."""
    cards = list(cards)
    for card in cards:
        labelled(CARDS, service, card.indicator).inc()
    audit.note_cards(cards)
