"""OpenTelemetry tracing, switched on by the standard OTEL_* environment variables.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP endpoint
is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``);
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off. Then each worker process
sets up the SDK's tracer provider (service name ``leukodx`` unless ``OTEL_SERVICE_NAME`` or
``OTEL_RESOURCE_ATTRIBUTES`` say otherwise; sampler from ``OTEL_TRACES_SAMPLER``; batching from
``OTEL_BSP_*``; the OTLP exporter reads ``OTEL_EXPORTER_OTLP_*``, HTTP/protobuf) and instruments the
FastAPI app (a server span per request, named by route template).

The API adds its own spans (the engine imports nothing of OpenTelemetry): ``leukodx.parse`` (the
CDS request body), ``leukodx.fhir.fetch`` (the queries to the EHR's FHIR server), ``leukodx.map``
(FHIR to a case), ``leukodx.assess`` (``engine.assess``: parse, normalize, reason, rank and explain
of the case), ``leukodx.orders`` (the order check) and ``leukodx.cards``. No span carries patient
data: no query string (``?patient=`` is cut from the URL attributes), no body, no exception message
(only its type). FastAPI's own telemetry is switched off (api/app.py), whatever the environment asks
of it (``FASTAPI_OTEL_AUTO_CONFIGURE``): nothing else leaves the process.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .middleware import masked_path

__all__ = ["enabled_by_environment", "configure", "span", "traced", "scrub_server_span"]

T = TypeVar("T")
_NOOP = trace.get_tracer("leukodx")
_TRACER: list[trace.Tracer] = [_NOOP]   # a no-op until a provider is configured
_EXCLUDED = "healthz,readyz,metrics,static"


def enabled_by_environment(env: Optional[dict[str, str]] = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters() -> list[Any]:
    from importlib.metadata import entry_points
    out = []
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").lower()
            name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise RuntimeError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} is installed"
                               + (" (pip install opentelemetry-exporter-otlp-proto-grpc)" if "grpc" in name else ""))
        out.append(found[0].load()())
    return out


def configure(app: Any, provider: Any = None) -> bool:
    """Trace ``app``: with ``provider`` (tests: an SDK TracerProvider with an in-memory exporter), else
    from the OTEL_* variables (then the provider is also the process's global one). False when off."""
    if provider is None:
        if not enabled_by_environment():
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "leukodx"}))
        for exporter in _exporters():
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        logging.getLogger("leukodx.api").info("tracing on", extra={"exporters": os.environ.get("OTEL_TRACES_EXPORTER",
                                                                                               "otlp")})
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    _TRACER[0] = provider.get_tracer("leukodx")
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, server_request_hook=scrub_server_span,
                                       excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", _EXCLUDED),
                                       exclude_spans=["receive", "send"])
    return True


def scrub_server_span(span: Any, scope: dict[str, Any]) -> None:
    """The server span without the query string (``/v1/assess/fhir?patient=...`` names a patient) and without a report
    link's token in its path (a bearer credential: api/middleware.masked_path)."""
    path = scope.get("path") or ""
    if not span.is_recording() or not (scope.get("query_string") or masked_path(path) != path):
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in ("http.url", "url.full", "http.target", "url.path"):
        if name in attributes:
            value = str(attributes[name]).split("?", 1)[0]
            span.set_attribute(name, value.replace(path, masked_path(path)) if path else value)
    if "url.query" in attributes:
        span.set_attribute("url.query", "REDACTED")


def _off() -> bool:
    """No tracer provider anywhere: a span would record nothing (it still cost about 20 us)."""
    return _TRACER[0] is _NOOP and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child span of the current one; an exception marks it failed with its type only (an
    exception's message may quote the case). With tracing off, a span that records nothing."""
    if _off():
        yield trace.INVALID_SPAN
        return
    with _TRACER[0].start_as_current_span(name, attributes=attributes or None, record_exception=False,
                                          set_status_on_exception=False) as s:
        try:
            yield s
        except BaseException as e:
            if s.is_recording():
                s.set_status(Status(StatusCode.ERROR, type(e).__name__))
                s.set_attribute("error.type", type(e).__name__)
            raise


def traced(name: str, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run inside :func:`span` (for work handed to a worker thread by run_cpu: the thread gets
    the request's context, so the span has the request's span as its parent). With tracing off, ``fn``
    is called as it is (routes wrap their steps on each call: no ``functools.wraps``, no context manager)."""
    def run(*args: Any, **kwargs: Any) -> T:
        if _off():
            return fn(*args, **kwargs)
        with span(name):
            return fn(*args, **kwargs)
    return run
