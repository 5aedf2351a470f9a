"""When prefetch is missing, the service fetches from the EHR's FHIR server: tested against a real
HTTP server process on loopback serving bundles, with pagination, a 500, a timeout and a 401."""
from __future__ import annotations

import asyncio
import json
import textwrap
import uuid

import pytest
from fastapi.testclient import TestClient

from leukodx.api.app import create_app
from leukodx.api.config import get_settings
from leukodx.api.fhir import UNUSABLE, fetch_queries, pages_note

from conftest import serve_script
from test_cds_hooks import CBC_SEVERE, PATIENT, searchset

SERVER = textwrap.dedent('''
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit, parse_qs
    pages = json.loads(sys.argv[2])
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            path = urlsplit(self.path).path
            q = parse_qs(urlsplit(self.path).query)
            mode = path.split("/")[1]
            if mode == "slow":
                time.sleep(3)
            if mode == "broken":
                self.send_response(500); self.end_headers(); return
            if mode == "locked" and self.headers.get("Authorization") != "Bearer right-token":
                self.send_response(401); self.end_headers(); return
            kind = path.split("/")[2].split("?")[0]
            if mode == "nomeds" and kind in ("MedicationStatement", "MedicationRequest"):
                self.send_response(404 if kind == "MedicationStatement" else 400); self.end_headers(); return
            if kind == "Patient":
                body = {"resourceType": "Patient", "id": "%s", "gender": "male", "birthDate": "1960-01-01"}
            elif kind == "Observation" and "84413-4" not in str(q):
                page = int(q.get("_page", ["0"])[0])
                body = {"resourceType": "Bundle", "type": "searchset", "entry": pages[page], "link": []}
                if page + 1 < len(pages):
                    body["link"].append({"relation": "next",
                                         "url": f"http://127.0.0.1:{sys.argv[1]}{path}?_page={page + 1}"})
            else:
                body = {"resourceType": "Bundle", "type": "searchset", "entry": []}
            data = json.dumps(body).encode()
            self.send_response(200); self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''' % PATIENT)


@pytest.fixture(scope="module")
def fhir_server():
    # two pages of Observations: the WBC on the first, the ANC on the second
    pages = [[{"resource": r} for r in CBC_SEVERE[:1]], [{"resource": r} for r in CBC_SEVERE[1:]]]
    proc, base = serve_script(SERVER, json.dumps(pages))
    yield base
    proc.kill()
    proc.wait()


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKODX_CDS_AUTH", "off")
    monkeypatch.setenv("LEUKODX_FHIR_DEADLINE_SECONDS", "1")
    monkeypatch.setenv("LEUKODX_FHIR_ALLOW_LOOPBACK", "true")   # the test FHIR server is on loopback
    monkeypatch.setenv("LEUKODX_FEEDBACK_DB_URL", f"sqlite:///{tmp_path}/fb.db")
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def call(client, server: str, token: str = "right-token"):
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": server,
            "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                  "scope": "patient/*.read", "subject": "leukodx"},
            "context": {"userId": "Practitioner/1", "patientId": PATIENT}}
    return client.post("/cds-services/leukodx-patient-view", json=body)


def test_no_prefetch_is_fetched_across_pages(client, fhir_server):
    r = call(client, f"{fhir_server}/ok")
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]
    assert card["indicator"] == "critical" and "ANC 0.3" in card["summary"]   # the ANC came from page 2


def test_the_bearer_token_is_sent(client, fhir_server):
    assert call(client, f"{fhir_server}/locked").status_code == 200
    r = call(client, f"{fhir_server}/locked", token="wrong-token")
    assert r.status_code == 412 and UNUSABLE in r.json()["issue"][0]["diagnostics"]
    assert "wrong-token" not in r.text


@pytest.mark.parametrize("mode", ["broken", "slow", "locked"])
def test_server_errors_and_timeouts_give_412_with_one_uniform_reason(client, fhir_server, mode):
    """A 500, a timeout and a 401 read the same from outside (no port or server probing)."""
    r = call(client, f"{fhir_server}/{mode}", token="wrong-token")
    assert r.status_code == 412 and r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["issue"][0]["diagnostics"] == \
        f"Prefetch missing and the FHIR server could not be used: observations: {UNUSABLE}"


def test_optional_resource_types_the_server_lacks_are_named_not_fatal(client, fhir_server):
    """No MedicationStatement endpoint (404), a search parameter refused (400): assessed all the same."""
    r = call(client, f"{fhir_server}/nomeds")
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]
    assert card["indicator"] == "critical" and "ANC 0.3" in card["summary"]
    assert "'medicationStatements' could not be had (not available on the FHIR server (404))" in card["detail"]
    assert "'medicationRequests' could not be had (not available on the FHIR server (400))" in card["detail"]


def test_paging_beyond_the_budget_assesses_what_was_fetched(fhir_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKODX_CDS_AUTH", "off")
    monkeypatch.setenv("LEUKODX_FHIR_ALLOW_LOOPBACK", "true")
    monkeypatch.setenv("LEUKODX_FHIR_MAX_PAGES", "1")
    monkeypatch.setenv("LEUKODX_FEEDBACK_DB_URL", f"sqlite:///{tmp_path}/fb.db")
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        r = call(c, f"{fhir_server}/ok")
    get_settings.cache_clear()
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]       # page 1 holds only the WBC 1.4: the ANC is bounded by it
    assert "Neutropenia mild or worse (WBC 1.4" in card["summary"]
    assert f"'observations' is partial ({pages_note(1)})" in card["detail"]


def test_paginated_prefetch_is_completed_from_the_server(client, fhir_server):
    first = searchset(CBC_SEVERE[0])
    first["link"] = [{"relation": "next", "url": f"{fhir_server}/ok/Observation?_page=1"}]
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": f"{fhir_server}/ok",
            "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                  "scope": "patient/*.read", "subject": "leukodx"},
            "context": {"userId": "Practitioner/1", "patientId": PATIENT},
            "prefetch": {"patient": None, "observations": first, "pgx": None, "medicationRequests": None,
                         "medicationStatements": None, "conditions": None}}
    r = client.post("/cds-services/leukodx-patient-view", json=body)
    assert r.status_code == 200 and "ANC 0.3" in r.json()["cards"][0]["summary"]


@pytest.mark.parametrize("url", ["http://10.1.2.3/fhir", "http://192.168.0.10/fhir", "http://169.254.169.254/latest",
                                 "http://172.16.5.5/fhir", "ftp://127.0.0.1/fhir", "http://user:pw@127.0.0.1/fhir",
                                 "http://[fd00::1]/fhir", "http://93.184.216.34/fhir"])
def test_server_side_request_forgery_is_refused(url):
    out = asyncio.run(fetch_queries(url, "t", {"patient": "Patient/x"}, deadline_seconds=1, max_pages=1,
                                    allow_private=False, allow_loopback=False))
    assert (out["patient"].resources, out["patient"].note) == (None, UNUSABLE)


def test_private_fhir_server_refused_through_the_api(client):
    r = call(client, "https://10.0.0.7/fhir")
    assert r.status_code == 412 and UNUSABLE in r.json()["issue"][0]["diagnostics"]


def test_pages_are_bounded(fhir_server):
    out = asyncio.run(fetch_queries(f"{fhir_server}/ok", None, {"observations": f"Observation?patient={PATIENT}"},
                                    deadline_seconds=3, max_pages=1, allow_private=False, allow_loopback=True))
    assert out["observations"].note == pages_note(1) and len(out["observations"].resources["entry"]) == 1
