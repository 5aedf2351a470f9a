"""OpenTelemetry tracing (api/tracing.py), checked with the SDK's in-memory span exporter: a CDS call
that fetches from a real FHIR server gives one trace (the server span, then parse, FHIR fetch, map,
assess, cards, orders); no span carries patient data or an exception's message; the standard OTEL_*
variables switch it on (a real process exporting to the console) and it is off without them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from leukodx.api import tracing
from leukodx.api.app import create_app
from leukodx.api.config import Settings

from conftest import CASES
from test_cds_fhir_fallback import call as fhir_call
from test_cds_fhir_fallback import fhir_server  # noqa: F401 - the real FHIR server fixture
from test_cds_hooks import CBC_SEVERE, PATIENT

SECRET_PATIENT = "pt-trace-5d1c9e"


@pytest.fixture
def traced_client(tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path}/fb.db",
                              fhir_allow_loopback=True, fhir_deadline_seconds=1))
    assert tracing.configure(app, provider)
    try:
        with TestClient(app) as c:
            yield c, exporter
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
        tracing._TRACER[0] = tracing._NOOP


def _attribute_text(spans) -> str:
    return json.dumps([{"name": s.name, "attributes": dict(s.attributes or {}),
                        "status": s.status.description, "events": [(e.name, dict(e.attributes or {}))
                                                                    for e in s.events]} for s in spans],
                      default=str)


def test_a_cds_call_is_one_trace_with_a_span_per_step(traced_client, fhir_server):  # noqa: F811
    client, exporter = traced_client
    r = fhir_call(client, f"{fhir_server}/ok")
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    server = by_name["POST /cds-services/{service_id}"]
    assert server.kind == trace.SpanKind.SERVER and server.attributes["http.route"] == "/cds-services/{service_id}"
    steps = ["leukodx.parse", "leukodx.fhir.fetch", "leukodx.map", "leukodx.assess", "leukodx.cards",
             "leukodx.orders"]
    for name in steps:
        span = by_name[name]
        assert span.context.trace_id == server.context.trace_id, name
        assert span.parent is not None and span.parent.span_id == server.context.span_id, name
    starts = [by_name[name].start_time for name in steps]
    assert starts == sorted(starts)                       # in the order of the call
    assert by_name["leukodx.fhir.fetch"].attributes["leukodx.fhir.complete"] >= 1
    assessed = by_name["leukodx.assess"].attributes
    assert assessed["leukodx.tier"] == "severe" and assessed["leukodx.channel"] == "cds" and assessed["leukodx.kb_version"]
    assert PATIENT not in _attribute_text(spans)


def test_no_span_carries_the_patient_or_an_exception_message(traced_client):
    client, exporter = traced_client
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": SECRET_PATIENT, "gender": "male", "birthDate": "1960-01-01"}},
        *({"resource": {**o, "subject": {"reference": f"Patient/{SECRET_PATIENT}"}}} for o in CBC_SEVERE)]}
    r = client.post(f"/v1/assess/fhir?patient={SECRET_PATIENT}", json=bundle,
                    headers={"content-type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    bad_case = {"id": "secret-case-id-4242", "labs": [{"test": "wbc", "value": "Rarecondition", "unit": "10^9/L"}]}
    assert client.post("/v1/assess", json=bad_case).status_code == 422
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("leukodx.assess") == 2 and "POST /v1/assess/fhir" in names
    text = _attribute_text(spans)
    for secret in (SECRET_PATIENT, "secret-case-id-4242", "Rarecondition"):
        assert secret not in text
    server = next(s for s in spans if s.name == "POST /v1/assess/fhir")
    assert "?" not in server.attributes.get("http.url", "") and server.attributes.get("http.target") == "/v1/assess/fhir"
    refused = [s for s in spans if s.name == "leukodx.assess" and s.status.status_code == StatusCode.ERROR]
    assert len(refused) == 1 and refused[0].status.description == "CaseError" and not refused[0].events


def test_a_report_links_token_is_in_no_span_and_no_access_log_line(traced_client, caplog):
    """Security red-team round 27: the access log line and the server span of GET /report/<token> kept the token, a
    bearer credential the database keeps only hashes of (a copy of the log opened the patient's report)."""
    import logging
    client, exporter = traced_client
    token = "tok-" + "q" * 40
    with caplog.at_level(logging.INFO, logger="leukodx.access"):
        for path in (f"/report/{token}", f"/v1/reports/{token}"):
            client.get(path)          # the page (200) or the unknown report (404): logged either way
    lines = [r for r in caplog.records if r.name == "leukodx.access"]
    assert [getattr(r, "path", None) for r in lines[-2:]] == ["/report/-", "/v1/reports/-"]
    text = _attribute_text(exporter.get_finished_spans())
    assert token not in text and "/v1/reports/-" in text


def test_tracing_is_off_without_the_otel_variables():
    assert not tracing.enabled_by_environment({})
    assert not tracing.enabled_by_environment({"OTEL_SERVICE_NAME": "x"})
    assert tracing.enabled_by_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.enabled_by_environment({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.enabled_by_environment({"OTEL_TRACES_EXPORTER": "none",
                                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.enabled_by_environment({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
    app = create_app(Settings(cds_auth="off", feedback_db_url="sqlite://"))
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)


APP_IN_A_PROCESS = """
import sys
from fastapi.testclient import TestClient
from leukodx.api.app import create_app
from leukodx.api.config import Settings
with TestClient(create_app(Settings(cds_auth="off", feedback_db_url="sqlite://", log_level="ERROR"))) as c:
    assert c.post("/v1/assess", content=open(sys.argv[1], "rb").read(),
                  headers={"content-type": "application/yaml"}).status_code == 200
"""


def test_the_standard_otel_variables_switch_it_on(tmp_path):
    """A fresh process with OTEL_TRACES_EXPORTER=console: its spans are printed when it exits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LEUKODX_"))}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="leukodx-test", OTEL_TRACES_SAMPLER="always_on")
    case = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"
    out = subprocess.run([sys.executable, "-c", APP_IN_A_PROCESS, str(case)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"name": "leukodx.assess"' in out.stdout and '"name": "POST /v1/assess"' in out.stdout
    assert '"service.name": "leukodx-test"' in out.stdout


def test_spans_reach_an_otlp_collector(tmp_path):
    """OTEL_EXPORTER_OTLP_ENDPOINT alone: the spans are sent as OTLP/HTTP protobuf to a collector (here a
    loopback HTTP server that decodes them with the OTLP protobuf definitions). FastAPI's own telemetry,
    asked for by FASTAPI_OTEL_AUTO_CONFIGURE, sends nothing: no metrics, no log records, no second server
    span (its span would carry the query string, which names the patient)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LEUKODX_"))}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
    env["FASTAPI_OTEL_AUTO_CONFIGURE"] = "true"
    case = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"
    try:
        out = subprocess.run([sys.executable, "-c", APP_IN_A_PROCESS, str(case)], env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr[-2000:]
    names, services = [], set()
    for path, body in received:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            names += [s.name for ss in rs.scope_spans for s in ss.spans]
    assert "leukodx.assess" in names and names.count("POST /v1/assess") == 1 and services == {"leukodx"}


def test_with_tracing_off_a_span_costs_no_tracer_call(monkeypatch):
    """No provider configured: span() yields a span that records nothing without going through
    OpenTelemetry's no-op tracer (about 20 us a span, ten spans a CDS call)."""
    def refuse(*_a, **_k):
        raise AssertionError("the tracer was called with tracing off")
    monkeypatch.setattr(tracing._NOOP, "start_as_current_span", refuse)
    with tracing.span("leukodx.test", x=1) as s:
        assert not s.is_recording()
    with pytest.raises(ValueError):
        with tracing.span("leukodx.fails"):
            raise ValueError("passes through")
