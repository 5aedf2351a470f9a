"""/metrics (api/metrics.py): the Prometheus text parses with prometheus_client's own parser, and each
counter moves by what known requests should move it by: HTTP requests and latency by route template
and status, assessments by tier and alert, CDS cards by indicator, FHIR fetches (against a real HTTP
server) and their failures, rules-engine failures and recycles; with two workers, every worker's
counts are added up (prometheus-client's multiprocess mode, set up by `leukodx serve`)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from leukodx.api.app import create_app
from leukodx.api.config import Settings

from conftest import CASES, free_port, start_server, stop_server
from test_cds_fhir_fallback import call as fhir_call
from test_cds_fhir_fallback import fhir_server  # noqa: F401 - the real FHIR server fixture
from test_cds_hooks import CBC_SEVERE, PATIENT, prefetch, request

SEVERE_CASE = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"
Samples = dict[tuple[str, frozenset], float]


def scrape(client) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def client(tmp_path):
    settings = Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path}/fb.db", fhir_allow_loopback=True,
                        fhir_deadline_seconds=1)
    with TestClient(create_app(settings)) as c:
        yield c


def cds(client, pre):
    return client.post("/cds-services/leukodx-patient-view", json=request("patient-view", pre))


def test_requests_assessments_and_cards_are_counted(client):
    before = scrape(client)
    assert client.post("/v1/assess", content=SEVERE_CASE.read_bytes(),
                       headers={"content-type": "application/yaml"}).status_code == 200
    assert client.post("/v1/assess", json={"labs": []}).status_code == 422
    r = cds(client, prefetch(CBC_SEVERE))
    assert r.status_code == 200
    indicators = [c["indicator"] for c in r.json()["cards"]]
    assert cds(client, {**prefetch(CBC_SEVERE), "observations": None}).status_code == 200   # nothing to assess
    assert client.post("/cds-services/leukodx-patient-view",
                       json={**request("patient-view", None)}).status_code == 412   # no prefetch, no fhirServer
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)

    def http(handler: str, status: int) -> float:
        return moved(before, after, "http_requests_total", handler=handler, method="POST", status=str(status))
    assert http("/v1/assess", 200) == 1 and http("/v1/assess", 422) == 1
    assert http("/cds-services/{service_id}", 200) == 2 and http("/cds-services/{service_id}", 412) == 1
    assert moved(before, after, "http_requests_total", handler="none", method="GET", status="404") == 1
    assert moved(before, after, "http_request_duration_seconds_count", handler="/v1/assess", method="POST",
                 status="200") == 1
    assert moved(before, after, "http_request_duration_seconds_bucket", handler="/v1/assess", method="POST",
                 status="200", le="+Inf") == 1
    assert not any(name == "http_requests_total" and dict(labels).get("handler") == "/metrics"
                   for name, labels in after)   # the scrapes themselves are not counted
    assert moved(before, after, "leukodx_assessments_total", channel="rest", tier="severe") == 1
    assert moved(before, after, "leukodx_assessment_alerts_total", alert="agranulocytosis") >= 1
    assert moved(before, after, "leukodx_case_errors_total", channel="rest") == 1
    cds_assessed = sum(v for (name, labels), v in after.items() if name == "leukodx_assessments_total"
                       and dict(labels)["channel"] == "cds") - \
        sum(v for (name, labels), v in before.items() if name == "leukodx_assessments_total"
            and dict(labels)["channel"] == "cds")
    assert cds_assessed == 1
    assert "critical" in indicators
    for indicator in set(indicators):
        assert moved(before, after, "leukodx_cds_cards_total", service="leukodx-patient-view",
                     indicator=indicator) == indicators.count(indicator)


def test_fhir_fetches_are_timed_and_their_failures_counted(client, fhir_server):  # noqa: F811
    before = scrape(client)
    assert fhir_call(client, f"{fhir_server}/ok").status_code == 200
    assert fhir_call(client, f"{fhir_server}/broken").status_code == 412
    after = scrape(client)
    assert moved(before, after, "leukodx_fhir_fetch_duration_seconds_count") == 2
    assert moved(before, after, "leukodx_fhir_fetch_duration_seconds_sum") > 0
    assert moved(before, after, "leukodx_fhir_fetch_queries_total", key="observations", outcome="complete") == 1
    assert moved(before, after, "leukodx_fhir_fetch_queries_total", key="observations", outcome="failed") == 1
    assert moved(before, after, "leukodx_fhir_fetch_queries_total", key="patient", outcome="failed") == 1


def test_engine_failures_and_recycles_are_counted(client, monkeypatch):
    """A durable-rules error fails one request (500) and breaks the engine; the next request gets a
    rebuilt engine: one failure and one recycle, both seen from the API."""
    import durable_rules_engine
    body = SEVERE_CASE.read_bytes()
    headers = {"content-type": "application/yaml"}
    assert client.post("/v1/assess", content=body, headers=headers).status_code == 200
    before = scrape(client)

    def explode(*args, **kwargs):
        raise RuntimeError("Could not assert fact, error code: 303")

    original = durable_rules_engine.assert_fact
    monkeypatch.setattr(durable_rules_engine, "assert_fact", explode)
    records: list[logging.LogRecord] = []
    catch = logging.Handler()
    catch.emit = records.append
    logging.getLogger("leukodx.audit").addHandler(catch)
    try:
        assert client.post("/v1/assess", content=body, headers=headers).status_code == 500
    finally:
        logging.getLogger("leukodx.audit").removeHandler(catch)
    [failed] = records                    # the audit record of the failed call: an error, its type only
    assert (failed.outcome, failed.status, failed.reason) == ("error", 500, "internal error (ReasoningError)")
    monkeypatch.setattr(durable_rules_engine, "assert_fact", original)
    assert client.post("/v1/assess", content=body, headers=headers).status_code == 200
    after = scrape(client)
    assert moved(before, after, "leukodx_engine_failures_total", operation="assess") == 1
    assert moved(before, after, "leukodx_engine_recycles_total") == 1
    assert moved(before, after, "http_requests_total", handler="/v1/assess", method="POST", status="500") == 1


def test_metrics_can_be_switched_off(tmp_path):
    with TestClient(create_app(Settings(cds_auth="off", feedback_db_url="sqlite://", metrics=False))) as c:
        assert c.get("/metrics").status_code == 404


# ---- several workers: one count for the service ----------------------------------------------------

STALE = """
from prometheus_client import Counter
Counter("http_requests", "stale", ["handler", "method", "status"]).labels("/v1/assess", "POST", "200").inc(1000)
"""


def test_two_workers_report_one_sum_and_stale_counts_are_cleared(tmp_path):
    """`leukodx serve --workers 2`: whichever worker answers /metrics, the counts are the service's
    (both workers' added up); the multiprocess directory's files of an earlier run are cleared at start;
    the two workers' audit records land whole, one per line, in one append-only file."""
    directory = tmp_path / "prom"
    directory.mkdir()
    subprocess.run([sys.executable, "-c", STALE], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
                   check=True)
    assert list(directory.glob("*.db"))           # an earlier run's counts: 1000 requests
    audit_file = tmp_path / "audit.jsonl"
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path}/fb.db", workers=2, LEUKODX_CDS_AUTH="off",
                        LEUKODX_LOG_LEVEL="WARNING", PROMETHEUS_MULTIPROC_DIR=str(directory),
                        LEUKODX_AUDIT_KEY="k" * 40, LEUKODX_AUDIT_LOG_FILE=str(audit_file))
    base = f"http://127.0.0.1:{port}"
    n = 16
    try:
        body = SEVERE_CASE.read_bytes()
        for _ in range(n):   # a new connection each: the kernel hands them to either worker
            r = httpx.post(f"{base}/v1/assess", content=body, headers={"content-type": "application/yaml",
                                                                       "connection": "close"})
            assert r.status_code == 200
        totals = set()
        pids = set()
        for _ in range(12):
            with httpx.Client() as c:
                text = c.get(f"{base}/metrics", headers={"connection": "close"}).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            totals.add(sum(s.value for s in families["http_requests"].samples
                           if s.name == "http_requests_total" and s.labels["handler"] == "/v1/assess"))
            assert sum(s.value for s in families["leukodx_assessments"].samples
                       if s.name == "leukodx_assessments_total") == n
            pids.update(p.name.split("_")[-1] for p in directory.glob("counter_*.db"))
        assert totals == {n}
        assert len(pids) >= 2            # each worker writes its own files; the stale ones are gone
    finally:
        stop_server(proc)
    lines = audit_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == n and all(r["event"] == "rest.assess" and r["outcome"] == "answered" for r in records)
    assert len({r["request_id"] for r in records}) == n


def test_serve_sets_up_the_multiprocess_directory_only_for_several_workers(monkeypatch, tmp_path):
    from leukodx.api import serving
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")     # recorded, so what serve sets below is undone
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert serving._metrics_dir(1) is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    made = serving._metrics_dir(2)
    try:
        assert made and os.environ["PROMETHEUS_MULTIPROC_DIR"] == made and Path(made).is_dir()
    finally:
        os.rmdir(made)
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"stale")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    assert serving._metrics_dir(2) is None       # the operator's directory: kept, its counts cleared
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]


def test_a_route_the_router_did_not_name_is_found_by_its_template():
    """Requests are labelled by scope["route"]; where a router leaves it out (older Starlette, whose
    application lists every route flat), the path is matched against the routes, and a path no
    route takes is `none`."""
    from leukodx.api import rest
    from leukodx.api.cds import routes as cds_routes
    from leukodx.api.metrics import route_template
    app = create_app(Settings(cds_auth="off", feedback_db_url="sqlite://"))
    flat = [*rest.router.routes, *cds_routes.router.routes, *(r for r in app.routes if getattr(r, "path", None))]

    def template(method: str, path: str, **more) -> str:
        return route_template({"type": "http", "method": method, "path": path, "root_path": "", "headers": [],
                               **more}, lambda: flat)
    assert template("POST", "/cds-services/leukodx-patient-view") == "/cds-services/{service_id}"
    assert template("POST", "/v1/assess") == "/v1/assess"
    assert template("GET", "/no/such/page") == "none"
    healthz = next(r for r in app.routes if getattr(r, "path", "") == "/healthz")
    assert template("GET", "/no/such/page", route=healthz) == "/healthz"


def test_a_kept_labelled_child_counts_into_the_same_series_as_labels():
    """api/metrics.labelled keeps prometheus-client's child of a label set: counting through it and
    through ``labels`` adds up in one series, and another label set is another child."""
    from prometheus_client import CollectorRegistry, Counter
    from leukodx.api.metrics import labelled
    c = Counter("leukodx_test_kept_children", "test", ["a", "b"], registry=CollectorRegistry())
    labelled(c, "x", "y").inc()
    labelled(c, "x", "y").inc(2)
    c.labels("x", "y").inc()
    labelled(c, "x", "z").inc()
    assert labelled(c, "x", "y") is c.labels("x", "y")
    assert c.labels("x", "y")._value.get() == 4 and c.labels("x", "z")._value.get() == 1
