"""FHIR-native answers (issue 16, item 4): an Assessment as a FHIR R4 Bundle, errors as OperationOutcome.

`POST /v1/assess/fhir` (and `/v1/assess`) with `Accept: application/fhir+json` answer a `collection`
Bundle (api/fhir/answer.py). Every resource built here is validated with fhir.resources' R4B models
(`fhir.resources.R4B`, installed from tests/requirements-nodeps.txt): each entry by its own class, and
the Bundle as a whole. Without the FHIR Accept header the routes answer the Assessment JSON and
problem details exactly as before.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from leukodx.api.app import create_app
from leukodx.api.config import Settings
from leukodx.api.fhir import answer
from leukodx.cli.replay import find_case_files
from leukodx.engine import ENGINE_VERSION, CaseError, Problem, assess, get_engine
from leukodx.engine.parse import load_document
from leukodx.engine.render import to_json

from conftest import CASES, FIXTURES, base_case, lab

try:
    from fhir.resources.R4B import get_fhir_model_class
except ImportError as e:   # pragma: no cover - the README's install command brings it
    raise ImportError("fhir.resources is not installed: pip install --no-deps -r tests/requirements-nodeps.txt") from e

FHIR = "application/fhir+json"
ASK_FHIR = {"accept": FHIR}
SEND_FHIR = {"content-type": FHIR, "accept": FHIR}
EXAMPLES = FIXTURES / "fhir-examples"
GHP = EXAMPLES / "hl7/r4-core-examples/diagnosticreport-example-ghp.json"
SEVERE = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"
# R4 required bindings of the coded elements leukodx fills (fhir.resources checks types and cardinality)
ISSUE_TYPES = {"invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
               "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches",
               "not-found", "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule",
               "conflict", "transient", "lock-error", "no-store", "exception", "timeout", "incomplete",
               "throttled", "informational"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(fhir_max_body_bytes=4 * 1024 * 1024,
                        feedback_db_url=f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db")
    with TestClient(create_app(settings)) as c:
        yield c


# ---- validation ---------------------------------------------------------------------------------------


def valid_resource(resource: dict) -> None:
    """One resource through its fhir.resources R4B model, plus the R4 required bindings leukodx fills."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    kind = resource["resourceType"]
    if kind == "OperationOutcome":
        assert resource["issue"]
        for issue in resource["issue"]:
            assert issue["severity"] in ("fatal", "error", "warning", "information") and issue["code"] in ISSUE_TYPES
    if kind in ("RiskAssessment", "DetectedIssue"):
        assert resource["status"] == "preliminary"
    if kind == "DetectedIssue":
        assert resource["severity"] in ("high", "moderate", "low")
    if kind == "ServiceRequest":
        assert (resource["status"], resource["intent"]) == ("draft", "proposal")
        assert resource.get("priority", "routine") in ("routine", "urgent", "asap", "stat")
    for ext in resource.get("extension", []):
        assert ext["url"] == answer.RELATED_ARTIFACT and ext["valueRelatedArtifact"]["type"] == "citation"


def valid_bundle(bundle: dict) -> dict[str, list[dict]]:
    """The Bundle through the R4B Bundle model and each entry through its own; the resources by type."""
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "collection" and bundle["timestamp"].endswith("Z")
    by_type: dict[str, list[dict]] = {}
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls) and all(u.startswith("urn:uuid:") for u in urls)
    for entry in bundle["entry"]:
        valid_resource(entry["resource"])
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    assert set(by_type) <= {"RiskAssessment", "DetectedIssue", "ServiceRequest", "OperationOutcome", "Provenance"}
    # the Provenance is last and targets every other entry, exactly once each
    assert len(by_type["Provenance"]) == 1 and bundle["entry"][-1]["resource"]["resourceType"] == "Provenance"
    targets = [t["reference"] for t in by_type["Provenance"][0]["target"]]
    assert targets == urls[:-1]
    return by_type


def citations(resource: dict) -> list[tuple[str, str, str | None]]:
    return [(x["valueRelatedArtifact"]["label"], x["valueRelatedArtifact"]["citation"],
             x["valueRelatedArtifact"].get("url")) for x in resource.get("extension", [])
            if x["url"] == answer.RELATED_ARTIFACT]


def cited(a, ids) -> list[tuple[str, str, str | None]]:
    return [(s, a.sources[s].citation, a.sources[s].link()) for s in dict.fromkeys(ids)]


def tier_of(by_type: dict) -> dict:
    tiers = [r for r in by_type["RiskAssessment"] if r["method"]["coding"][0]["code"] == "anc-tier"]
    assert len(tiers) == 1
    return tiers[0]


def is_outcome(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and "Traceback" not in r.text
    valid_resource(body)
    assert all(i["severity"] in ("error", "fatal") for i in body["issue"])
    return body


# ---- the Assessment -> Bundle mapping, on the engine's own output ------------------------------------


def test_severe_case_every_part_mapped():
    a = assess(load_document(SEVERE.read_bytes(), name="severe"))
    assert a.risk_tier.tier == "severe" and a.alerts and a.steps       # what this test relies on
    subject = {"reference": "Patient/p1"}
    now = datetime(2025, 3, 10, 9, 30, tzinfo=timezone.utc)
    bundle = answer.assessment_bundle(a, subject, now=now)
    by_type = valid_bundle(bundle)
    assert bundle["timestamp"] == "2025-03-10T09:30:00Z"

    ra = tier_of(by_type)
    assert ra["subject"] == subject and ra["occurrenceDateTime"] == str(a.as_of)
    tier = ra["prediction"][0]
    assert tier["outcome"]["coding"] == [{"system": answer.TIER_SYSTEM, "code": "severe",
                                          "display": "Severe neutropenia"}]
    assert "ANC 0.3" in tier["outcome"]["text"] and a.risk_tier.basis in tier["rationale"]
    assert "Neutrophil count drawn 2025-03-10T08:00:00Z" in tier["rationale"] and a.risk_tier.cutoffs in tier["rationale"]
    grades = {p["outcome"]["text"]: p["qualitativeRisk"]["coding"][0]["code"] for p in ra["prediction"][1:]}
    assert grades == {g.term: str(g.grade) for g in (a.ctcae.wbc, a.ctcae.anc, a.ctcae.lymphocytes) if g}
    assert grades["Neutrophil count decreased"] == "4"
    assert all(f"CTCAE v{a.ctcae.version}" in p["qualitativeRisk"]["text"] for p in ra["prediction"][1:])
    # the count it rests on, with its date; the method names leukodx and its version
    anc = next(b for b in ra["basis"] if b["display"].startswith("Absolute neutrophil count"))
    assert anc["display"] == "Absolute neutrophil count 0.3 10^9/L, drawn 2025-03-10T08:00:00Z"
    assert f"leukodx {ENGINE_VERSION}" in ra["method"]["text"] and a.kb_version in ra["method"]["text"]
    assert ra["performer"]["display"] == f"leukodx {ENGINE_VERSION}"
    assert a.disclaimer in [n["text"] for n in ra["note"]]
    assert citations(ra) == cited(a, [*a.risk_tier.sources, *a.ctcae.sources])

    issues = by_type["DetectedIssue"]
    assert [i["code"]["coding"][0]["code"] for i in issues] == [x.id for x in a.alerts]
    for issue, alert in zip(issues, a.alerts):
        assert issue["severity"] == {"critical": "high", "warning": "moderate", "info": "low"}[alert.severity]
        assert issue["detail"] == alert.description and issue["patient"] == subject
        assert issue["identifiedDateTime"] == str(a.as_of)
        assert citations(issue) == cited(a, alert.sources)
        assert issue["reference"] == a.sources[alert.sources[0]].link()

    requests = [r for r in by_type["ServiceRequest"] if not r.get("doNotPerform")]
    assert [r["code"]["coding"][0]["code"] for r in requests] == [s.id for s in a.steps]
    for req, step in zip(requests, a.steps):
        assert req["priority"] == {"immediate": "stat", "urgent": "urgent", "routine": "routine"}[step.urgency]
        assert req["subject"] == subject and req["note"][0]["text"] == step.rationale
        assert req["requester"]["display"] == f"leukodx {ENGINE_VERSION}"
        assert citations(req) == cited(a, step.sources)

    prov = by_type["Provenance"][0]
    assert prov["recorded"] == "2025-03-10T09:30:00Z"
    assert prov["agent"][0]["who"]["type"] == "Device" and prov["agent"][0]["who"]["display"] == f"leukodx {ENGINE_VERSION}"
    assert prov["policy"] == [f"urn:leukodx:kb:{a.kb_version}"]
    assert prov["entity"][0]["what"]["identifier"] == {"system": "urn:leukodx:kb", "value": a.kb_version}


def test_interactions_are_detected_issues():
    a = assess(load_document((CASES / "infection" / "cmv-valganciclovir-kidney-transplant.yaml").read_bytes(), name="x"))
    assert a.interactions
    by_type = valid_bundle(answer.assessment_bundle(a))
    drg = [i for i in by_type["DetectedIssue"] if i["code"]["coding"][0]["code"] == "DRG"]
    assert [i["code"]["coding"][1]["code"] for i in drg] == [x.id for x in a.interactions]
    for issue, ix in zip(drg, a.interactions):
        assert issue["severity"] == "moderate" and ix.action in issue["detail"] and ix.effect in issue["detail"]
        assert citations(issue) == cited(a, ix.sources)
    # no patient in a bare Assessment: a display-only subject, and DetectedIssue.patient left out
    assert tier_of(by_type)["subject"] == answer.NO_PATIENT and all("patient" not in i for i in drg)


def test_steps_advised_against_are_do_not_perform():
    a = assess(load_document((CASES / "benign" / "pseudoleukopenia-with-platelet-clumping.yaml").read_bytes(),
                             name="x"))
    assert a.steps_not_advised
    by_type = valid_bundle(answer.assessment_bundle(a))
    blocked = [r for r in by_type["ServiceRequest"] if r.get("doNotPerform")]
    assert [r["code"]["coding"][0]["code"] for r in blocked] == [b.id for b in a.steps_not_advised]
    assert all("priority" not in r for r in blocked)
    assert [r["note"][0]["text"] for r in blocked] == [b.reason for b in a.steps_not_advised]


def test_unrecognised_and_not_assessed_are_named_in_an_operation_outcome():
    a = assess(load_document((CASES / "baseline" / "clozapine-duffy-null-anc-1-3-before-start.yaml").read_bytes(),
                             name="x"))
    assert a.unrecognised
    outcome = valid_bundle(answer.assessment_bundle(a))["OperationOutcome"][0]
    named = [i for i in outcome["issue"] if i["code"] == "not-supported"]
    assert [(i["severity"], i["expression"]) for i in named] == [("warning", [u.field]) for u in a.unrecognised]
    assert all(repr(u.text) in i["diagnostics"] for i, u in zip(named, a.unrecognised))


def test_every_case_in_the_library_gives_a_valid_bundle():
    """All of cases/: every resource validates, and each kind of item is met at least once."""
    eng = get_engine()
    met: set[str] = set()
    for path in find_case_files([str(CASES)]):
        raw = load_document(path.read_bytes(), name=str(path))
        try:
            a = eng.assess(raw, partial=(raw.get("expect") or {}).get("mode") == "partial")
        except CaseError:
            continue
        by_type = valid_bundle(answer.assessment_bundle(a))
        n = {k: len(v) for k, v in by_type.items()}
        assert n.get("DetectedIssue", 0) == len(a.alerts) + len(a.interactions), path.name
        assert n.get("ServiceRequest", 0) == len(a.steps) + len(a.steps_not_advised), path.name
        assert n["RiskAssessment"] == 1 + bool(a.causes), path.name
        assert tier_of(by_type)["prediction"][0]["outcome"]["coding"][0]["code"] == a.risk_tier.tier
        met |= {f"alert:{x.severity}" for x in a.alerts} | {f"step:{s.urgency}" for s in a.steps}
        met |= {k for k, v in [("interaction", a.interactions), ("blocked", a.steps_not_advised),
                               ("unrecognised", a.unrecognised), ("not_assessed", a.not_assessed)] if v}
    assert {"alert:critical", "alert:warning", "step:immediate", "step:urgent", "step:routine", "interaction",
            "blocked", "unrecognised", "not_assessed"} <= met


def test_causes_are_ranked_predictions():
    a = assess(load_document(SEVERE.read_bytes(), name="severe"))
    assert a.causes
    bundle = answer.assessment_bundle(a)
    by_type = valid_bundle(bundle)
    causes = next(r for r in by_type["RiskAssessment"] if r["method"]["coding"][0]["code"] == "cause-ranking")
    assert [p["outcome"]["coding"][0]["code"] for p in causes["prediction"]] == [c.id for c in a.causes]
    assert [p["qualitativeRisk"]["coding"][0]["code"] for p in causes["prediction"]] == [c.likelihood for c in a.causes]
    assert causes["parent"]["reference"] == bundle["entry"][0]["fullUrl"]          # the tier's RiskAssessment
    assert citations(causes) == cited(a, [s for c in a.causes for s in c.sources])


# ---- over HTTP --------------------------------------------------------------------------------------


def test_fhir_route_answers_a_bundle_for_the_patient(client):
    r = client.post("/v1/assess/fhir", content=GHP.read_bytes(), headers=SEND_FHIR)
    assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    assert "Accept" in r.headers["vary"]
    by_type = valid_bundle(r.json())
    ra = tier_of(by_type)
    assert ra["prediction"][0]["outcome"]["coding"][0]["code"] == "moderate"
    assert ra["occurrenceDateTime"] == "2015-08-16"
    # the basis points at the Bundle's own Observations, each with its value and the date drawn
    anc = next(b for b in ra["basis"] if b.get("reference") == "Observation/r9")
    assert anc["display"] == "Absolute neutrophil count 0.9 10^9/L, drawn 2015-08-16T06:40:17Z"
    assert {b["reference"] for b in ra["basis"]} >= {"Observation/r7", "Observation/r9"}   # WBC and ANC


def test_synthea_patients_are_the_subject(client):
    for path in sorted((EXAMPLES / "synthea").glob("*.json"))[:5]:
        doc = json.loads(path.read_bytes())
        pid = next(e["resource"]["id"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")
        r = client.post("/v1/assess/fhir", content=path.read_bytes(), headers=SEND_FHIR)
        by_type = valid_bundle(r.json())
        assert tier_of(by_type)["subject"] == {"reference": f"Patient/{pid}"}, path.name
        assert all(s["subject"] == {"reference": f"Patient/{pid}"} for s in by_type.get("ServiceRequest", []))
        # the years-old CBC and the mapping's notes are said, never dropped
        texts = [i["diagnostics"] for i in by_type["OperationOutcome"][0]["issue"]]
        assert any(t.startswith("Missing: ") for t in texts)


def _obs(oid, code, value, unit, patient="p"):
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": "2025-03-10T08:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


PATIENT = {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1975-01-01"}


def test_patient_parameter_and_alerts_over_http(client):
    bundle = _bundle(PATIENT, {**PATIENT, "id": "q"}, _obs("w", "6690-2", 1.5, "10*9/L"),
                     _obs("n", "751-8", 0.4, "10*9/L"), _obs("t", "8331-1", 38.6, "Cel"),
                     _obs("n2", "751-8", 3.0, "10*9/L", patient="q"))
    r = client.post("/v1/assess/fhir?patient=p", json=bundle, headers=ASK_FHIR)
    by_type = valid_bundle(r.json())
    assert tier_of(by_type)["subject"] == {"reference": "Patient/p"}
    febrile = next(i for i in by_type["DetectedIssue"] if i["code"]["coding"][0]["code"] == "febrile_neutropenia")
    assert febrile["severity"] == "high" and febrile["patient"] == {"reference": "Patient/p"}
    assert "stat" in [s.get("priority") for s in by_type["ServiceRequest"]]
    # Patient q's data was left out, and the Bundle says so with the location
    outcome = by_type["OperationOutcome"][0]
    assert any(i["code"] == "incomplete" and i.get("expression") == ["subject"] for i in outcome["issue"])


def test_without_the_fhir_accept_header_the_answer_is_unchanged(client):
    for headers in ({"content-type": FHIR}, {"content-type": FHIR, "accept": "application/json"},
                    {"content-type": FHIR, "accept": "application/json, application/fhir+json;q=0.5"},
                    {"content-type": FHIR, "accept": "*/*"}):
        r = client.post("/v1/assess/fhir", content=GHP.read_bytes(), headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", headers
        assert r.json()["risk_tier"]["tier"] == "moderate" and "resourceType" not in r.json()
    r = client.post("/v1/assess/fhir", json=_bundle(PATIENT))
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    case = base_case(labs=[lab("wbc", 2.0), lab("anc", 0.4)])
    r = client.post("/v1/assess", json=case)
    assert r.headers["content-type"] == "application/json" and r.json() == json.loads(to_json(assess(case)))


def test_accept_preferences(client):
    body = GHP.read_bytes()
    for accept in ("application/fhir+json", "application/fhir+json; fhirVersion=4.0",
                   "application/fhir+json, application/json", "application/json;q=0.8, application/fhir+json",
                   'application/fhir+json;fhirVersion="4.0";q=0.9, */*;q=0.1'):
        r = client.post("/v1/assess/fhir", content=body, headers={"content-type": FHIR, "accept": accept})
        assert r.status_code == 200 and r.json()["resourceType"] == "Bundle", accept
    # FHIR asked for in another version only: 406, an OperationOutcome; with JSON also acceptable: JSON
    r = client.post("/v1/assess/fhir", content=body, headers={"content-type": FHIR,
                                                               "accept": "application/fhir+json; fhirVersion=5.0"})
    assert is_outcome(r, 406)["issue"][0]["code"] == "not-supported"
    r = client.post("/v1/assess/fhir", content=body, headers={
        "content-type": FHIR, "accept": "application/fhir+json; fhirVersion=5.0, application/json;q=0.5"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"


def test_negotiate_is_a_function_of_the_header():
    assert answer.negotiate("") == "json" and answer.negotiate("text/html, */*;q=0.8") == "json"
    assert answer.negotiate("application/fhir+json") == "fhir"
    assert answer.negotiate("application/FHIR+json; fhirVersion=4.0.1") == "fhir"
    assert answer.negotiate("application/fhir+json;q=0, application/json") == "json"
    assert answer.negotiate("application/fhir+json;q=bad") == "json"
    assert answer.negotiate("application/fhir+json; fhirVersion=3.0") is None
    assert answer.negotiate("application/fhir+json; fhirVersion=3.0, */*;q=0.1") == "json"


def test_case_route_negotiates_too(client):
    case = base_case(labs=[lab("wbc", 2.0), lab("anc", 0.4)], history={"temperature_c": 38.6})
    r = client.post("/v1/assess", json=case, headers=ASK_FHIR)
    by_type = valid_bundle(r.json())
    subject = tier_of(by_type)["subject"]
    assert subject["identifier"] == {"system": "urn:leukodx:case-id", "value": case["id"]}
    r = client.post("/v1/assess", content=SEVERE.read_bytes(),
                    headers={"content-type": "application/yaml", "accept": FHIR})
    assert tier_of(valid_bundle(r.json()))["prediction"][0]["outcome"]["coding"][0]["code"] == "severe"


# ---- errors as OperationOutcome ---------------------------------------------------------------------


def test_no_usable_lab_is_an_operation_outcome_locating_each_problem(client):
    anc = _obs("n", "751-8", 0.4, "10*9/L")
    del anc["valueQuantity"]
    body = is_outcome(client.post("/v1/assess/fhir", json=_bundle(PATIENT, anc), headers=ASK_FHIR), 422)
    assert "no lab value" in body["issue"][0]["diagnostics"] and "expression" not in body["issue"][0]
    assert body["issue"][1]["expression"] == ["Bundle.entry[1].resource"]
    assert "no valueQuantity.value" in body["issue"][1]["diagnostics"]
    assert {i["code"] for i in body["issue"]} == {"invalid"}


def test_strict_mapping_names_what_it_would_leave_out(client):
    anc = _obs("n", "751-8", 0.4, "10*9/L")
    del anc["valueQuantity"]
    bundle = _bundle(PATIENT, anc, _obs("w", "6690-2", 1.5, "10*9/L"))
    body = is_outcome(client.post("/v1/assess/fhir?partial=false", json=bundle, headers=ASK_FHIR), 422)
    assert [i["expression"] for i in body["issue"]] == [["Bundle.entry[1].resource"]]
    # assessed partially (the default), the same problem is a warning inside the Bundle
    by_type = valid_bundle(client.post("/v1/assess/fhir", json=bundle, headers=ASK_FHIR).json())
    warned = [i for i in by_type["OperationOutcome"][0]["issue"] if i["severity"] == "warning"]
    assert [i["expression"] for i in warned] == [["Bundle.entry[1].resource"]]


def test_invalid_input_and_requests_are_operation_outcomes(client):
    body = is_outcome(client.post("/v1/assess/fhir", content=b"{not json", headers=SEND_FHIR), 422)
    assert "not valid JSON" in body["issue"][0]["diagnostics"]
    body = is_outcome(client.post("/v1/assess/fhir", content=b"[1]", headers=SEND_FHIR), 422)
    assert [i.get("expression") for i in body["issue"]][1:] == [["[0]"]]     # after "no lab value"
    body = is_outcome(client.post("/v1/assess/fhir?ctcae=4.0", content=GHP.read_bytes(), headers=SEND_FHIR), 422)
    assert body["issue"][0]["expression"] == ["query.ctcae"]
    body = is_outcome(client.post("/v1/assess/fhir", content=b"x",
                                  headers={"content-type": "text/plain", "accept": FHIR}), 415)
    assert body["issue"][0]["code"] == "not-supported"
    yaml_limit = client.app.state.settings.max_yaml_bytes
    body = is_outcome(client.post("/v1/assess", content=b"#" * (yaml_limit + 1),
                                  headers={"content-type": "application/yaml", "accept": FHIR}), 413)
    assert body["issue"][0]["code"] == "too-long"
    # a case that cannot be assessed: one issue per field, located in the case
    case = base_case(labs=[lab("wbc", 3.8, "/uL"), lab("anc", -1)])
    body = is_outcome(client.post("/v1/assess", json=case, headers=ASK_FHIR), 422)
    assert sorted(e for i in body["issue"] for e in i["expression"]) == ["labs[0].value", "labs[1].value"]
    # the same requests without the FHIR Accept header stay problem details
    r = client.post("/v1/assess/fhir?ctcae=4.0", content=GHP.read_bytes(), headers={"content-type": FHIR})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_an_unexpected_error_is_an_operation_outcome_without_a_trace(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")
    monkeypatch.setattr(answer, "assessment_bundle", broken)
    r = client.post("/v1/assess/fhir", content=GHP.read_bytes(), headers=SEND_FHIR)
    body = is_outcome(r, 500)
    assert body["issue"][0]["severity"] == "fatal" and body["issue"][0]["code"] == "exception"
    assert "secret" not in r.text


def test_operation_outcome_expressions():
    bundle = _bundle(PATIENT)
    out = answer.operation_outcome(422, "t", "", [Problem("entry[0].resource.id", "m")], bundle)
    valid_resource(out)
    assert out["issue"][0]["expression"] == ["Bundle.entry[0].resource.id"]
    # not a path into the Bundle (a case field, or a name): left as it is
    assert answer._expression("labs[0].value", bundle) == "labs[0].value"
    assert answer._expression("subject", bundle) == "subject"
    assert answer._expression("entry[2]", [bundle]) == "entry[2]"


def test_openapi_declares_the_fhir_answers(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/assess", "/v1/assess/fhir"):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses["200"]["content"]) == {"application/json", FHIR}
        assert set(responses["422"]["content"]) == {"application/problem+json", FHIR}


def test_a_too_large_body_and_a_wrong_method_answer_fhir_clients_in_fhir(client):
    big = client.post("/v1/assess/fhir", content=b"{" + b" " * (13 * 1024 * 1024) + b"}",
                      headers={"content-type": "application/fhir+json", "accept": "application/fhir+json"})
    assert big.status_code == 413 and big.headers["content-type"].startswith("application/fhir+json")
    assert big.json()["resourceType"] == "OperationOutcome"
    get = client.get("/v1/assess/fhir", headers={"accept": "application/fhir+json"})
    assert get.status_code == 405 and get.json()["resourceType"] == "OperationOutcome"
    plain = client.get("/v1/assess/fhir")
    assert plain.status_code == 405 and plain.headers["content-type"].startswith("application/problem+json")
