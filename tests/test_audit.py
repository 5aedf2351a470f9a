"""The audit log (api/audit.py, docs/audit.md): one record per CDS Hooks call, card feedback and REST
assessment, refusals included; the client's iss/sub/tenant from the verified JWT; the patient only
as an HMAC-SHA256 under LEUKODX_AUDIT_KEY (stable for one key, different under another); the patient
id in no log line at all; its own logger and its own append-only file."""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import io
import json
import logging
import os
import stat
import time
import uuid
from datetime import datetime

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from leukodx.api import audit
from leukodx.api.app import create_app
from leukodx.api.config import DeploymentError, Settings, check_deployment
from leukodx.engine import get_engine

from conftest import CASES
from test_cds_hooks import CBC_SEVERE, obs, prefetch, searchset

ISS = "https://ehr.example.org"
TENANT = "hospital-a"
KEY_1 = "k1-" + "a" * 40
KEY_2 = "k2-" + "b" * 40
PATIENT_ID = "pt-audit-8c41f2"       # a distinctive id: it must appear in no log line
SEVERE = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"


def expected_hash(key: str, reference: str) -> str:
    return hmac.new(key.encode(), reference.encode(), hashlib.sha256).hexdigest()


class Logs:
    """Every leukodx log line (the access log, the app log, and the audit logger when it writes to
    standard error) written while a test runs."""

    def __init__(self) -> None:
        from leukodx.api.middleware import JsonFormatter
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(JsonFormatter())

    def text(self) -> str:
        return self.buffer.getvalue()

    def records(self, logger: str) -> list[dict]:
        return [r for r in map(json.loads, self.text().splitlines()) if r["logger"] == logger]


@pytest.fixture
def logs():
    captured = Logs()
    logging.getLogger("leukodx").addHandler(captured.handler)
    yield captured
    logging.getLogger("leukodx").removeHandler(captured.handler)


@pytest.fixture
def signing_key():
    return ec.generate_private_key(ec.SECP384R1())


def make_app(tmp_path, signing_key, key: str = KEY_1, audit_file: str = "", cds_auth: str = "on"):
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key.public_key()))
    public.update(kid="k1", alg="ES384", use="sig")
    return create_app(Settings(cds_auth=cds_auth, feedback_db_url=f"sqlite:///{tmp_path}/fb.db",
                               cds_issuers=json.dumps([{"iss": ISS, "jwks": {"keys": [public]}, "tenant": TENANT}]),
                               cds_audience_from_request=True, audit_key=key, audit_log_file=audit_file))


def token(signing_key, service: str = "leukodx-patient-view", path: str = "", **over) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "sub": "ehr-client-7", "tenant": TENANT, "aud": f"http://testserver/cds-services/{service}{path}",
              "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **over}
    return jwt.encode(claims, signing_key, algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


def hook_request(pre, patient: str = PATIENT_ID, hook: str = "patient-view") -> dict:
    return {"hook": hook, "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/example", "patientId": patient}, "prefetch": pre}


def patient_prefetch(labs) -> dict:
    """The shared test prefetch, moved to the distinctive patient."""
    pre = prefetch([{**o, "subject": {"reference": f"Patient/{PATIENT_ID}"}} for o in labs])
    pre["patient"] = {**pre["patient"], "id": PATIENT_ID}
    return pre


def records_in(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_cds_call_record_has_every_field(tmp_path, signing_key, logs):
    audit_file = tmp_path / "audit.jsonl"
    with TestClient(make_app(tmp_path, signing_key, audit_file=str(audit_file))) as c:
        body = hook_request(patient_prefetch(CBC_SEVERE))
        r = c.post("/cds-services/leukodx-patient-view", json=body,
                   headers={"authorization": f"Bearer {token(signing_key)}"})
        assert r.status_code == 200, r.text
    [rec] = records_in(audit_file)
    cards = r.json()["cards"]
    assert cards and rec["cards"] == [{"uuid": c["uuid"], "indicator": c["indicator"]} for c in cards]
    assert rec["event"] == "cds.call" and rec["outcome"] == "answered" and rec["status"] == 200
    assert rec["service"] == "leukodx-patient-view" and rec["hook"] == "patient-view"
    assert rec["hook_instance"] == body["hookInstance"]
    assert rec["auth"] == "jwt" and rec["client"] == {"iss": ISS, "sub": "ehr-client-7", "tenant": TENANT}
    assert rec["patient_hmac"] == expected_hash(KEY_1, f"Patient/{PATIENT_ID}")
    assert rec["hmac_key_id"] == audit.key_id(KEY_1.encode()) and len(rec["hmac_key_id"]) == 8
    assert rec["kb_version"] == get_engine().kb.version and rec["tier"] == "severe"
    assert rec["reason"] is None and rec["request_id"] == r.headers["x-request-id"]
    assert datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).tzinfo is not None
    # the audit file is the audit's only destination: not the access log, not standard error
    assert logs.records("leukodx.audit") == []
    assert [a["path"] for a in logs.records("leukodx.access")] == ["/cds-services/leukodx-patient-view"]
    assert "leukodx.access" not in audit_file.read_text()


def test_refused_calls_are_audited_with_their_reason(tmp_path, signing_key):
    audit_file = tmp_path / "audit.jsonl"
    with TestClient(make_app(tmp_path, signing_key, audit_file=str(audit_file))) as c:
        url = "/cds-services/leukodx-patient-view"
        t = token(signing_key)
        assert c.post(url, json=hook_request(patient_prefetch(CBC_SEVERE)),
                      headers={"authorization": f"Bearer {t}"}).status_code == 200
        assert c.post(url, json=hook_request(patient_prefetch(CBC_SEVERE)),       # the same token again
                      headers={"authorization": f"Bearer {t}"}).status_code == 401
        assert c.post(url, json=hook_request(patient_prefetch(CBC_SEVERE)),
                      headers={"authorization": f"Bearer {token(signing_key, tenant='hospital-b')}"}).status_code == 401
        assert c.post(url, json=hook_request(None), headers={"authorization": f"Bearer {token(signing_key)}"}
                      ).status_code == 412
        assert c.post(url, json={"hook": "patient-view"},
                      headers={"authorization": f"Bearer {token(signing_key)}"}).status_code == 400
        assert c.post("/cds-services/nope", json=hook_request(None),
                      headers={"authorization": f"Bearer {token(signing_key, service='nope')}"}).status_code == 404
        assert c.post(url, content=b"x" * (Settings().cds_max_body_bytes + 1),
                      headers={"content-type": "application/json"}).status_code == 413
    recs = records_in(audit_file)
    assert [(r["status"], r["outcome"]) for r in recs] == [(200, "answered"), (401, "rejected"), (401, "rejected"),
                                                           (412, "rejected"), (400, "rejected"), (404, "rejected"),
                                                           (413, "rejected")]
    replayed, tenant, no_data, invalid, unknown, too_large = recs[1:]
    assert replayed["reason"] == "unauthorized: replayed jti" and replayed["client"] is None
    assert tenant["reason"] == "unauthorized: wrong tenant"
    assert no_data["reason"].startswith("no data: observations: ") and no_data["client"]["tenant"] == TENANT
    assert no_data["patient_hmac"] == expected_hash(KEY_1, f"Patient/{PATIENT_ID}")
    assert invalid["reason"].startswith("Invalid CDS Hooks request") and invalid["patient_hmac"] is None
    assert unknown["service"] == "nope" and unknown["reason"].startswith("Not found")
    assert too_large["reason"].startswith("Request body too large")
    assert all(r["kb_version"] == get_engine().kb.version for r in recs)


def test_feedback_is_audited_with_the_cards_it_is_about(tmp_path, signing_key):
    audit_file = tmp_path / "audit.jsonl"
    with TestClient(make_app(tmp_path, signing_key, audit_file=str(audit_file))) as c:
        entry = {"card": "1b2d6f0e-0000-4000-8000-000000000001", "outcome": "overridden",
                 "outcomeTimestamp": "2024-01-01T00:00:00Z"}
        r = c.post("/cds-services/leukodx-patient-view/feedback", json={"feedback": [entry]},
                   headers={"authorization": f"Bearer {token(signing_key, path='/feedback')}"})
        assert r.status_code == 200, r.text
    [rec] = records_in(audit_file)
    assert rec["event"] == "cds.feedback" and rec["feedback"] == [{"card": entry["card"], "outcome": "overridden"}]
    assert rec["client"]["sub"] == "ehr-client-7" and rec["patient_hmac"] is None


def test_rest_assessments_are_audited(tmp_path, signing_key):
    audit_file = tmp_path / "audit.jsonl"
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": PATIENT_ID, "gender": "male", "birthDate": "1960-01-01"}},
        *({"resource": {**o, "subject": {"reference": f"Patient/{PATIENT_ID}"}}} for o in CBC_SEVERE)]}
    with TestClient(make_app(tmp_path, signing_key, audit_file=str(audit_file))) as c:
        r = c.post("/v1/assess", content=SEVERE.read_bytes(), headers={"content-type": "application/yaml"})
        assert r.status_code == 200
        case_id = r.json()["case_id"]
        assert c.post(f"/v1/assess/fhir?patient={PATIENT_ID}", json=bundle,
                      headers={"content-type": "application/fhir+json"}).status_code == 200
        assert c.post("/v1/assess", content=b"labs: 3", headers={"content-type": "text/plain"}).status_code == 415
    case, fhir, refused = records_in(audit_file)
    assert case["event"] == "rest.assess" and case["auth"] == "none" and case["client"] is None
    assert case["patient_hmac"] == expected_hash(KEY_1, f"Case/{case_id}")
    assert case["tier"] == r.json()["risk_tier"]["tier"] and case["alerts"] == [a["id"] for a in r.json()["alerts"]]
    assert fhir["event"] == "rest.assess_fhir" and fhir["patient_hmac"] == expected_hash(KEY_1, f"Patient/{PATIENT_ID}")
    assert refused["status"] == 415 and refused["reason"].startswith("Unsupported media type")


def test_the_hash_is_stable_for_one_key_and_changes_with_the_key(tmp_path, signing_key, capsys, monkeypatch):
    def hashes(key: str, audit_file) -> list[str]:
        with TestClient(make_app(tmp_path, signing_key, key=key, audit_file=str(audit_file), cds_auth="off")) as c:
            for patient in (PATIENT_ID, f"Patient/{PATIENT_ID}", PATIENT_ID):
                assert c.post("/cds-services/leukodx-patient-view",
                              json=hook_request(patient_prefetch(CBC_SEVERE), patient=patient)).status_code == 200
        recs = records_in(audit_file)
        assert all(r["auth"] == "off" and r["client"] is None for r in recs)
        return [r["patient_hmac"] for r in recs]

    one = hashes(KEY_1, tmp_path / "a.jsonl")
    two = hashes(KEY_2, tmp_path / "b.jsonl")
    assert len(set(one)) == 1 and len(set(two)) == 1 and one[0] != two[0]
    assert audit.patient_hash(KEY_1.encode(), "Patient/other") != one[0]
    monkeypatch.setenv("LEUKODX_AUDIT_KEY", KEY_1)      # what a privacy officer runs to find a patient's records
    assert audit.main(["hash", PATIENT_ID]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"reference_hmac": one[0], "hmac_key_id": audit.key_id(KEY_1.encode())}


def test_the_patient_id_appears_in_no_log(tmp_path, signing_key, logs):
    """Every path that handles the patient: answered, partial data, no data (412, with a prefetch
    naming another patient), a patient mismatch, an order, feedback and REST; the audit goes to
    standard error here (no file), so every line of every leukodx logger is searched."""
    with TestClient(make_app(tmp_path, signing_key, cds_auth="off")) as c:
        url = "/cds-services/leukodx-patient-view"
        assert c.post(url, json=hook_request(patient_prefetch(CBC_SEVERE))).status_code == 200
        partial = patient_prefetch(CBC_SEVERE + [obs("26499-4", 1.0, "furlongs")])
        assert c.post(url, json=hook_request(partial)).status_code == 200
        other = {"patient": {"resourceType": "Patient", "id": "someone-else"}, "observations": None}
        assert c.post(url, json=hook_request({"patient": other["patient"]})).status_code == 412
        mismatch = patient_prefetch([])
        mismatch["observations"] = searchset(*CBC_SEVERE)      # another patient's labs
        assert c.post(url, json=hook_request(mismatch)).status_code == 200
        assert c.post(f"/v1/assess/fhir?patient={PATIENT_ID}", json={"resourceType": "Bundle", "type": "collection",
                      "entry": []}, headers={"content-type": "application/fhir+json"}).status_code in (200, 422)
    audit_lines = logs.records("leukodx.audit")
    assert len(audit_lines) == 5 and all(r["patient_hmac"] is not None for r in audit_lines[:4])
    assert PATIENT_ID not in logs.text()


def test_the_file_is_opened_append_only_and_kept(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": "record"}\n')
    handler = audit.AppendOnlyFileHandler(str(path))
    try:
        assert fcntl.fcntl(handler.fd, fcntl.F_GETFL) & os.O_APPEND
        os.lseek(handler.fd, 0, os.SEEK_SET)           # even a seek to the start cannot make it overwrite
        handler.emit(logging.makeLogRecord({"msg": "audit"}))
    finally:
        handler.close()
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": "record"}' and len(lines) == 2
    fresh = tmp_path / "new.jsonl"
    os.close(audit.open_append_only(str(fresh)))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_a_failed_audit_write_does_not_fail_the_answer_but_is_counted(tmp_path, signing_key, logs):
    from leukodx.api import metrics
    before = metrics.AUDIT_FAILURES._value.get()
    with TestClient(make_app(tmp_path, signing_key, audit_file="/dev/full", cds_auth="off")) as c:   # ENOSPC
        assert c.post("/v1/assess", content=SEVERE.read_bytes(),
                      headers={"content-type": "application/yaml"}).status_code == 200
    assert metrics.AUDIT_FAILURES._value.get() == before + 1
    assert any(r["msg"] == "audit record not written" for r in logs.records("leukodx.api"))


def test_without_a_key_records_carry_no_patient_hash(tmp_path, signing_key, logs):
    with TestClient(make_app(tmp_path, signing_key, key="", cds_auth="off")) as c:
        assert c.post("/cds-services/leukodx-patient-view",
                      json=hook_request(patient_prefetch(CBC_SEVERE))).status_code == 200
    [rec] = logs.records("leukodx.audit")
    assert rec["patient_hmac"] is None and rec["hmac_key_id"] is None and rec["cards"]
    assert any("LEUKODX_AUDIT_KEY is not set" in r["msg"] for r in logs.records("leukodx.api"))


def test_deployment_checks(tmp_path):
    ok = dict(cds_auth="off", feedback_db_url="sqlite://")
    check_deployment(Settings(**ok))                                       # no file, no key: allowed (warned)
    check_deployment(Settings(**ok, audit_key=KEY_1, audit_log_file=str(tmp_path / "a.jsonl")))
    with pytest.raises(DeploymentError, match="LEUKODX_AUDIT_KEY is not"):
        check_deployment(Settings(**ok, audit_log_file=str(tmp_path / "b.jsonl")))
    with pytest.raises(DeploymentError, match="at least 32"):
        check_deployment(Settings(**ok, audit_key="short"))
    with pytest.raises(DeploymentError, match="cannot be opened"):
        check_deployment(Settings(**ok, audit_key=KEY_1, audit_log_file=str(tmp_path / "no" / "such" / "dir.jsonl")))
    assert "k1-aaaa" not in repr(Settings(**ok, audit_key=KEY_1))          # the key is a secret: never printed
