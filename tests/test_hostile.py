"""The catalogue of hostile inputs (docs/security.md), each with the answer it must get."""
from __future__ import annotations

import json

import durable_rules_engine
import pytest
from fastapi.testclient import TestClient

from leukodx.api.app import create_app
from leukodx.api.config import Settings
from leukodx.engine import pipeline

from conftest import base_case, lab

JSON = {"content-type": "application/json"}
CDS = "/cds-services/leukodx-patient-view"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db")
    with TestClient(create_app(settings)) as c:
        yield c


def problem(r, status):
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith(("application/problem+json", "application/fhir+json"))
    assert "Traceback" not in r.text and 'File "' not in r.text
    return r.json()


def post(client, body, path="/v1/assess", headers=JSON):
    return client.post(path, content=body if isinstance(body, (bytes, str)) else json.dumps(body), headers=headers)


@pytest.mark.parametrize("name,body,status,needle", [
    ("truncated JSON", b'{"labs": [{"test": "wbc", "value": 3', 422, "not valid JSON"),
    ("deeply nested JSON", b'{"labs": ' + b"[" * 50000 + b"]" * 50000 + b"}", 422, "nested too deeply"),
    ("numbers as strings", base_case(labs=[lab("wbc", "3.2")]), 422, "must be a number"),
    ("1e309", b'{"labs": [{"test": "wbc", "value": 1e309, "unit": "10^9/L"}]}', 422, "finite"),
    ("NaN literal", b'{"labs": [{"test": "wbc", "value": NaN, "unit": "10^9/L"}]}', 422, "NaN"),
    ("year 0", base_case(as_of="0000-01-01"), 422, "as_of"),
    ("year 9999 lab", base_case(labs=[lab("wbc", 3.0, time="9999-12-31T00:00:00Z")]), 422, "future"),
    ("duplicated keys", b'{"labs": [], "labs": []}', 422, "duplicated key"),
    ("10,000 labs", base_case(labs=[lab("wbc", 3.0, time=None)] * 10000), 422, "at most 2000"),
    ("a list, not a case", b"[1, 2, 3]", 422, "JSON object"),
    ("null", b"null", 422, "empty"),
    ("binary junk", b"\x00\xff\xfe\x00", 422, "UTF-8"),
])
def test_hostile_case_bodies(client, name, body, status, needle):
    doc = problem(post(client, body), status)
    assert needle in json.dumps(doc), (name, doc)


def test_50_mb_body_is_refused_before_it_is_read(client):
    r = client.post("/v1/assess", content=b" " * (50 * 1024 * 1024), headers=JSON)
    problem(r, 413)


def test_negative_zero_is_accepted_as_zero(client):
    r = post(client, base_case(labs=[lab("wbc", 0.5), lab("anc", -0.0)]))
    assert r.status_code == 200 and r.json()["risk_tier"]["tier"] == "profound"


@pytest.mark.parametrize("name,matched", [
    ("\u202eenirpoihtazA", False),      # right-to-left override: it only looks like azathioprine; its letters are not
    ("Aza\u200dthio\u200cprine", True), ("ＡＺＡＴＨＩＯＰＲＩＮＥ", True), ("azathioprine\x00", True),
])
def test_unicode_tricks_in_drug_names(client, name, matched):
    """Invisible characters are removed and NFKC applied before matching: a match, or an unknown drug named
    in `unrecognised`; never a crash."""
    r = post(client, base_case(labs=[lab("wbc", 2.5), lab("anc", 1.0)],
                               medications=[{"name": name, "start": "2025-01-01"}]))
    assert r.status_code == 200, r.text[:300]
    doc = r.json()
    assert ("thiopurine_myelotoxicity" in [c["id"] for c in doc["causes"]]) == matched
    assert [u["field"] for u in doc["unrecognised"]] == ([] if matched else ["medications[0]"])


def test_cds_prefetch_of_10_mb_is_handled(client):
    junk = [{"resourceType": "Basic", "id": f"b{i}", "code": {"text": "x" * 1000}} for i in range(9000)]
    body = {"hook": "patient-view", "hookInstance": "h-10mb", "context": {"userId": "Practitioner/1", "patientId": "p"},
            "prefetch": {"patient": None, "observations": {"resourceType": "Bundle", "type": "searchset",
                                                           "entry": [{"resource": r} for r in junk]},
                         "pgx": None, "medicationRequests": None, "medicationStatements": None, "conditions": None}}
    raw = json.dumps(body)
    assert 9 * 1024 * 1024 < len(raw) < 12 * 1024 * 1024
    r = client.post(CDS, content=raw, headers=JSON)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_cds_prefetch_entries_of_the_wrong_resource_type(client):
    body = {"hook": "patient-view", "hookInstance": "h-wrong", "context": {"userId": "Practitioner/1", "patientId": "p"},
            "prefetch": {"patient": {"resourceType": "Observation", "id": "x"}, "observations": "not a bundle",
                         "pgx": 42, "medicationRequests": [1, 2], "medicationStatements": None, "conditions": None}}
    r = client.post(CDS, json=body)
    assert r.status_code == 200 and "Traceback" not in r.text
    cards = r.json()["cards"]     # nothing assessable: one card that says so and lists each unusable entry
    assert len(cards) == 1 and cards[0]["summary"].startswith("leukodx could not assess this patient")
    assert cards[0]["detail"].count("must be a FHIR resource or Bundle (a JSON object)") == 4   # "...", 42, 1, 2
    # the Observation in the "patient" key names no patient: never this one's, and a warning says so
    assert cards[0]["indicator"] == "warning" and "belong to no patient" in cards[0]["detail"]


def test_cds_unusable_prefetch_entries_are_named_by_their_key(client):
    body = {"hook": "patient-view", "hookInstance": "h-keys", "context": {"userId": "Practitioner/1", "patientId": "p"},
            "prefetch": {"patient": None, "observations": "not a bundle", "pgx": 42, "medicationRequests": [1, 2],
                         "medicationStatements": None, "conditions": None}}
    detail = client.post(CDS, json=body).json()["cards"][0]["detail"]
    assert all(key in detail for key in ("observations", "pgx", "medicationRequests")), detail


def test_fhir_bundle_with_reference_cycles(client):
    med_a = {"resourceType": "Medication", "id": "a", "code": {"text": "azathioprine"},
             "ingredient": [{"itemReference": {"reference": "Medication/b"}}]}
    med_b = {"resourceType": "Medication", "id": "b", "ingredient": [{"itemReference": {"reference": "Medication/a"}}]}
    rx = {"resourceType": "MedicationRequest", "id": "r", "status": "active", "intent": "order",
          "medicationReference": {"reference": "Medication/a"}, "subject": {"reference": "Patient/p"}}
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "subject": {"reference": "Patient/p"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2"}]}, "effectiveDateTime": "2025-01-01",
           "hasMember": [{"reference": "Observation/o"}],
           "valueQuantity": {"value": 2.5, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"}}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": x} for x in (med_a, med_b, rx, obs)]}
    r = client.post("/v1/assess/fhir", json=bundle)
    assert r.status_code == 200 and "leukopenia" in [f["id"] for f in r.json()["findings"]]


def test_an_engine_failure_fails_that_request_and_the_next_is_correct(client, monkeypatch):
    """A durable-rules error: 500 problem for that request, the engine is recycled, the next answer is right."""
    case = base_case(labs=[lab("wbc", 2.0), lab("anc", 0.4)])
    good = post(client, case).json()
    engine = pipeline.get_engine()
    original = durable_rules_engine.assert_fact      # the C core the DurableReasoner calls for each case
    calls = {"n": 0}

    def explode(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("Could not assert fact, error code: 303")

    monkeypatch.setattr(durable_rules_engine, "assert_fact", explode)
    r = post(client, case)
    body = problem(r, 500)
    shown = {k: v for k, v in body.items() if k != "request_id"}      # a random hex id may hold "303"
    assert calls["n"] == 1 and "303" not in json.dumps(shown) and body["title"] == "Internal error"
    assert not engine.healthy
    monkeypatch.setattr(durable_rules_engine, "assert_fact", original)
    again = post(client, case)
    assert again.status_code == 200 and again.json() == good
    assert pipeline.get_engine() is not engine
