"""Schemathesis fuzzing of the whole HTTP API against the app's own OpenAPI document.

Every operation in GET /openapi.json is exercised in-process (ASGI, no network) with positive and
negative data (schemathesis' examples, coverage and fuzzing phases; the coverage phase also sends
undocumented methods and wrong content types). Every response must pass:

* `not_a_server_error`: no 5xx;
* `client_errors_are_problem_details`: every 4xx is RFC 9457 problem details, content type
  `application/problem+json`, with `type`, `title` and a `status` equal to the HTTP status. From
  the CDS Hooks contract: a 412 from a CDS service is a FHIR OperationOutcome
  (`application/fhir+json`), and a 401 on a CDS route is a bare problem (`type`, `title`, `status`
  and nothing else);
* `response_schema_conformance`: a body for a documented status conforms to the documented schema.

Generation from the schema alone almost never reaches a 2xx for the assessment and CDS routes (see
`test_realistic_inputs`), so the same checks also run on known inputs: every case in cases/, a
FHIR Bundle, every rule and source id, the three CDS services (200, 400, 412) and feedback, and
the CDS routes with the JWT checks on (401).

CI runs a small, fixed-seed budget (25 examples per operation in the fuzzing phase; Hypothesis'
example database off), so every run sends the same requests. Release run (about 1000 examples per
operation; try another seed too):

    LEUKODX_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest -q -p no:warnings tests/test_schemathesis.py
    LEUKODX_FUZZ_EXAMPLES=1000 LEUKODX_FUZZ_SEED=7 .venv/bin/python -m pytest -q -p no:warnings tests/test_schemathesis.py

LEUKODX_FUZZ_EXAMPLES  examples per operation in the fuzzing phase (default 25)
LEUKODX_FUZZ_SEED      seed of the generated data (default 20250310)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from leukodx.api.app import create_app
from leukodx.api.config import Settings
from leukodx.engine import get_engine

MAX_EXAMPLES = int(os.environ.get("LEUKODX_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("LEUKODX_FUZZ_SEED", "20250310"))

PROBLEM_JSON = "application/problem+json"
FHIR_JSON = "application/fhir+json"

# The schema is loaded at import, so pytest gets one test per operation. (A tmp_path fixture via
# schemathesis.pytest.from_fixture is not an option: schemathesis 4.32 reads `Function._nodeid`,
# which pytest 9.2 no longer has.) The temporary directory holds the feedback store; it is removed
# when the interpreter exits.
_TMP = tempfile.TemporaryDirectory(prefix="leukodx-fuzz-")
APP = create_app(Settings(cds_auth="off", feedback_db_url=f"sqlite:///{_TMP.name}/fb.db"))
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", APP,
    config=schemathesis.Config.from_dict({"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES}}))


def _media_type(response) -> str:
    values = response.headers.get("content-type") or [""]
    value = values[0] if isinstance(values, list) else values
    return value.split(";")[0].strip().lower()


def client_errors_are_problem_details(ctx, response, case) -> None:
    """Every 4xx is problem details (CDS 412: a FHIR OperationOutcome; CDS 401: a bare problem).

    Passed to call_and_validate explicitly rather than registered with @schemathesis.check, which
    would make it a default check for every schema in the process."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    where = f"{case.method.upper()} {case.formatted_path} -> {status}"
    media = _media_type(response)
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{where}: body is not JSON: {response.content[:200]!r}") from None
    cds = case.operation.path.startswith("/cds-services")
    if cds and status == 412:
        assert media == FHIR_JSON, f"{where}: content type {media!r}, expected {FHIR_JSON}"
        assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", \
            f"{where}: not an OperationOutcome: {body!r}"
        assert isinstance(body.get("issue"), list) and body["issue"], f"{where}: OperationOutcome without issues"
        return None
    assert media == PROBLEM_JSON, f"{where}: content type {media!r}, expected {PROBLEM_JSON}; body {body!r}"
    assert isinstance(body, dict), f"{where}: problem body is not an object: {body!r}"
    assert isinstance(body.get("type"), str) and body["type"], f"{where}: problem without `type`: {body!r}"
    assert isinstance(body.get("title"), str) and body["title"], f"{where}: problem without `title`: {body!r}"
    assert body.get("status") == status, f"{where}: problem `status` {body.get('status')!r} != {status}"
    if cds and status == 401:
        assert set(body) == {"type", "title", "status"}, f"{where}: CDS 401 must be a bare problem: {body!r}"
    return None


CHECKS = [not_a_server_error, client_errors_are_problem_details, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_fuzz(case):
    case.call_and_validate(checks=CHECKS)


# ---- the same checks on known inputs ----------------------------------------------------------------
# The OpenAPI document gives no examples, no enum for `service_id` and no request body for the CDS
# routes, and its Case schema accepts far more than the engine can assess (e.g. empty `labs`), so
# generated requests end in 404/422 and the 2xx bodies (and the CDS 400/412/401 answers) would go
# unchecked without these.

CASES = Path(__file__).resolve().parents[1] / "cases"
PATIENT = "p1"


def _obs(loinc: str, value: float, unit: str) -> dict:
    return {"resourceType": "Observation", "id": f"o-{loinc}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": "2025-03-10T08:00:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


_PATIENT = {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1970-01-01"}
_CBC = [_obs("6690-2", 1.4, "10*9/L"), _obs("751-8", 0.3, "10*9/L"), _obs("718-7", 12.5, "g/dL"),
        _obs("777-3", 210, "10*9/L")]
_BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [_PATIENT, *_CBC]]}
_PREFETCH = {"patient": _PATIENT,
             "observations": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in _CBC]},
             "pgx": None, "medicationRequests": None, "medicationStatements": None, "conditions": None}
_AZATHIOPRINE = {"resourceType": "MedicationRequest", "id": "draft-aza", "status": "draft", "intent": "order",
                 "medicationCodeableConcept": {"text": "azathioprine"}, "subject": {"reference": f"Patient/{PATIENT}"}}


def _hook(hook: str, prefetch, **context) -> dict:
    return {"hook": hook, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/example", "patientId": PATIENT, **context}, "prefetch": prefetch}


# Finding, fixed: lab times in an Assessment were serialised without a UTC offset, against
# `format: date-time` in #/components/schemas/NormalizedLab/properties/time; they now carry Z.


def _known_inputs():
    """pytest.param(operation path, method, Case keyword arguments, expected status)."""
    for f in sorted(CASES.rglob("*.yaml")):
        rel = f.relative_to(CASES).as_posix()
        doc = yaml.safe_load(f.read_text())
        expect = doc.get("expect") or {}
        partial = expect.get("mode") == "partial"      # EHR-shaped data: assessed with ?partial=true
        bad = rel.startswith("bad_input/") or "error" in expect
        kwargs = {"body": doc, "media_type": "application/yaml", **({"query": {"partial": "true"}} if partial else {})}
        yield pytest.param("/v1/assess", "POST", kwargs, 422 if bad else 200, id=f"assess:{rel}")
    yield pytest.param("/v1/assess/fhir", "POST", {"body": _BUNDLE, "media_type": FHIR_JSON}, 200,
                       id="assess-fhir")
    yield pytest.param("/v1/assess/fhir", "POST",
                       {"body": {"resourceType": "Bundle", "type": "collection", "entry": []}, "media_type": FHIR_JSON},
                       422, id="assess-fhir-no-labs")
    kb = get_engine().kb
    for rid in sorted(r.id for r in kb.rules):
        yield pytest.param("/v1/rules/{rule_id}", "GET", {"path_parameters": {"rule_id": rid}}, 200, id=f"rule:{rid}")
    for sid in sorted(kb.sources):
        yield pytest.param("/v1/sources/{source_id}", "GET", {"path_parameters": {"source_id": sid}}, 200,
                           id=f"source:{sid}")
    service, feedback = "/cds-services/{service_id}", "/cds-services/{service_id}/feedback"
    patient_view = {"service_id": "leukodx-patient-view"}
    orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _AZATHIOPRINE}]}
    for name, path, params, body, status in [
        ("cds-patient-view", service, patient_view, _hook("patient-view", _PREFETCH), 200),
        ("cds-order-sign", service, {"service_id": "leukodx-order-sign"},
         _hook("order-sign", _PREFETCH, draftOrders=orders), 200),
        ("cds-no-prefetch-412", service, patient_view, _hook("patient-view", None), 412),
        ("cds-wrong-hook-400", service, patient_view, _hook("order-sign", _PREFETCH), 400),
        ("cds-not-json-400", service, patient_view, "not json", 400),
        ("cds-feedback", feedback, patient_view, {"feedback": [
            {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2025-03-10T08:00:00Z"}]}, 200),
        ("cds-feedback-empty-400", feedback, patient_view, {"feedback": []}, 400),
    ]:
        yield pytest.param(path, "POST", {"path_parameters": params, "body": body, "media_type": "application/json"},
                           status, id=name)


@pytest.mark.parametrize(("path", "method", "kwargs", "expected"), list(_known_inputs()))
def test_known_inputs(path, method, kwargs, expected):
    case = schema[path][method].Case(**kwargs)
    response = case.call()
    assert response.status_code == expected, response.content[:500]
    case.validate_response(response, checks=CHECKS)


# With the JWT checks on and no trusted issuer, every CDS call is refused with a bare 401 problem.
SECURED = create_app(Settings(cds_auth="on", cds_issuers="[]", feedback_db_url=f"sqlite:///{_TMP.name}/fb2.db"))


@pytest.mark.parametrize("path", ["/cds-services/{service_id}", "/cds-services/{service_id}/feedback"])
def test_cds_401_is_a_bare_problem(path):
    case = schema[path]["POST"].Case(path_parameters={"service_id": "leukodx-patient-view"},
                                     body=_hook("patient-view", _PREFETCH), media_type="application/json")
    response = case.call(app=SECURED)
    assert response.status_code == 401, response.content[:500]
    case.validate_response(response, checks=CHECKS)
