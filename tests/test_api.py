"""REST API through FastAPI's test client: every endpoint and every error as problem details."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from leukodx.api.app import create_app
from leukodx.api.config import Settings
from leukodx.engine import assess
from leukodx.engine.render import to_json

from conftest import CASES, base_case, lab

EXAMPLE = CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(max_body_bytes=64 * 1024, fhir_max_body_bytes=4 * 1024 * 1024,
                        feedback_db_url=f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db")   # not ./leukodx-feedback.db
    with TestClient(create_app(settings)) as c:
        yield c


def is_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"]
    assert "Traceback" not in r.text
    return body


def test_assess_json_equals_the_engine(client):
    case = base_case(labs=[lab("wbc", 2.0), lab("anc", 0.4)], history={"temperature_c": 38.6})
    r = client.post("/v1/assess", json=case)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(to_json(assess(case)))


def test_assess_yaml(client):
    r = client.post("/v1/assess", content=EXAMPLE.read_bytes(), headers={"content-type": "application/yaml"})
    assert r.status_code == 200 and r.json()["risk_tier"]["tier"] == "severe"


def test_ctcae_version_parameter(client):
    r = client.post("/v1/assess?ctcae=6.0", json=base_case(labs=[lab("anc", 0.3)]))
    assert r.json()["ctcae"]["version"] == "6.0" and r.json()["ctcae"]["anc"]["grade"] == 3
    is_problem(client.post("/v1/assess?ctcae=4.0", json=base_case()), 422)


def test_invalid_case_lists_every_field(client):
    case = base_case(labs=[lab("wbc", 3.8, "/uL"), lab("anc", -1)], history={"tpmt": "*99/*99"})
    body = is_problem(client.post("/v1/assess", json=case), 422)
    pointers = {e["pointer"] for e in body["errors"]}
    assert pointers == {"/labs/0/value", "/labs/1/value", "/history/tpmt"}
    assert any("probably '10^9/L'" in e["detail"] for e in body["errors"])


@pytest.mark.parametrize("body,status,title", [
    (b"{truncated", 422, "cannot be assessed"),
    (b"", 422, "cannot be assessed"),
    (b'{"id": 1, "id": 2}', 422, "cannot be assessed"),
    (b"[]", 422, "cannot be assessed"),
])
def test_malformed_bodies(client, body, status, title):
    assert title in is_problem(client.post("/v1/assess", content=body, headers=JSON), status)["title"]


def test_wrong_content_type_is_415(client):
    is_problem(client.post("/v1/assess", content=b"{}", headers={"content-type": "text/plain"}), 415)
    is_problem(client.post("/v1/assess", content=b"{}"), 415)


def test_body_over_the_limit_is_413(client):
    big = b'{"id": "' + b"x" * (70 * 1024) + b'"}'
    is_problem(client.post("/v1/assess", content=big, headers=JSON), 413)


def test_unknown_path_and_method(client):
    is_problem(client.get("/v1/nothing"), 404)
    is_problem(client.get("/v1/assess"), 405)
    is_problem(client.get("/v1/rules/no.such_rule"), 404)
    is_problem(client.get("/v1/sources/nobody_2099"), 404)


def test_knowledge_base_endpoints(client):
    rules = client.get("/v1/rules").json()
    assert len(rules) > 100 and {"id", "statement", "condition", "sources"} <= set(rules[0])
    one = client.get("/v1/rules/alerts.febrile_neutropenia").json()
    assert one["sources"][0]["citation"] and one["condition"]
    sources = client.get("/v1/sources").json()
    assert client.get(f"/v1/sources/{sources[0]['id']}").json() == sources[0]
    assert {c["id"] for c in client.get("/v1/causes").json()} >= {"thiopurine_myelotoxicity", "pseudoleukopenia"}
    assert "bone_marrow_examination" in {s["id"] for s in client.get("/v1/steps").json()}


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and len(ready["kb_version"]) == 16


def test_openapi_and_offline_docs(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/assess" in spec["paths"] and "Case" in spec["components"]["schemas"]
    page = client.get("/docs").text
    assert "/static/docs/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/static/docs/swagger-ui-bundle.js").status_code == 200


def test_request_id_and_security_headers(client):
    r = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    odd = client.get("/healthz", headers={"x-request-id": "<script>"})
    assert odd.headers["x-request-id"] != "<script>"


def test_access_logs_carry_no_patient_data(client):
    import io
    import logging
    from leukodx.api.middleware import JsonFormatter
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("leukodx").addHandler(handler)
    try:
        case = base_case(id="secret-case-id-4242", labs=[lab("wbc", 2.345)], history={"conditions": ["Rarecondition"]})
        client.post("/v1/assess", json=case)
        client.post("/v1/assess", json=base_case(labs=[lab("wbc", 2.345, "blorps")]))
    finally:
        logging.getLogger("leukodx").removeHandler(handler)
    err = stream.getvalue()
    assert '"path": "/v1/assess"' in err
    for secret in ("secret-case-id-4242", "2.345", "Rarecondition"):
        assert secret not in err


# ---- FHIR R4 bundles through /v1/assess/fhir (real third-party examples) ----------------------------

from conftest import FIXTURES  # noqa: E402

FHIR = FIXTURES / "fhir-examples"       # in the repository: a missing file fails, it is not skipped
FHIR_JSON = {"content-type": "application/fhir+json"}


def lab_value(doc, test):
    return next(x["value"] for x in doc["labs"] if x["test"] == test and x["current"])


def test_fhir_ghp_differential(client):
    r = client.post("/v1/assess/fhir", content=(FHIR / "hl7/r4-core-examples/diagnosticreport-example-ghp.json")
                    .read_bytes(), headers=FHIR_JSON)
    doc = r.json()
    assert r.status_code == 200 and doc["risk_tier"]["tier"] == "moderate" and doc["risk_tier"]["anc"] == 0.9
    assert lab_value(doc, "wbc") == 4.6 and lab_value(doc, "hemoglobin") == pytest.approx(17.6)


def test_fhir_belgian_per_microlitre_bundle(client):
    r = client.post("/v1/assess/fhir", content=(FHIR / "units/hl7-be-lab/Macsys__815333044__81365677998_815333044_2.json")
                    .read_bytes(), headers=FHIR_JSON)
    doc = r.json()
    assert r.status_code == 200 and lab_value(doc, "wbc") == pytest.approx(3.81)
    wbc = next(x for x in doc["labs"] if x["test"] == "wbc" and x["current"])
    # what the bundle gave, kept beside the converted value (FHIR gives a LOINC code, not a test name)
    assert wbc["original"] == {"value": 3810, "unit": "/uL", "test": None, "loinc": "6690-2"}
    assert doc["risk_tier"]["tier"] == "normal"


def test_fhir_us_core_cbc(client):
    leukocytes = json.loads((FHIR / "hl7/us-core-master/observation-cbc-leukocytes.json").read_text())
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": leukocytes}]}
    r = client.post("/v1/assess/fhir", json=bundle)
    assert r.status_code == 200
    doc = r.json()
    assert [(x["test"], x["value"], x["unit"], x["time"], x["current"]) for x in doc["labs"]] == \
        [("wbc", 10.0, "10^9/L", "2005-07-05T00:00:00Z", True)]                # 10 10*3/uL, LOINC 6690-2
    assert doc["labs"][0]["original"] == {"value": 10, "unit": "10*3/uL", "test": None, "loinc": "6690-2"}
    assert doc["risk_tier"]["tier"] == "unknown"
    assert doc["warnings"] == ["FHIR: No Patient resource: sex, age, weight and ancestry are unknown."]


def test_fhir_synthea_patients(client):
    for path in sorted((FHIR / "synthea").glob("*.json"))[:10]:
        r = client.post("/v1/assess/fhir", content=path.read_bytes(), headers=FHIR_JSON)
        assert r.status_code == 200, (path.name, r.text[:300])
        doc = r.json()
        # Synthea's CBC panel: WBC, haemoglobin, platelets and MCV, no differential; the latest is current
        assert doc["cbc"]["current"] is True and doc["cbc"]["tests"] == ["hemoglobin", "mcv", "platelets", "wbc"]
        assert sorted(x["test"] for x in doc["labs"] if x["current"]) == ["hemoglobin", "mcv", "platelets", "wbc"]
        assert doc["risk_tier"]["tier"] == "unknown" and doc["risk_tier"]["anc"] is None


def test_fhir_body_temperature_is_not_reported_as_an_unused_code(client):
    """LOINC 8310-5 and 8331-1 are read (history.temperature_c), so they are not "codes leukodx does not use"."""
    obs = lambda oid, code, value, unit: {
        "resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": "2025-03-10T08:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1975-01-01"}},
        {"resource": obs("w", "6690-2", 1.5, "10*9/L")}, {"resource": obs("n", "751-8", 0.4, "10*9/L")},
        {"resource": obs("t", "8331-1", 38.6, "Cel")}]}
    doc = client.post("/v1/assess/fhir", json=bundle).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]        # the temperature was read
    assert [w for w in doc["warnings"] if "does not use" in w] == []


def _temperature_bundle(*temperatures: dict) -> dict:
    """ANC 0.4 on 2025-03-10 and the temperature Observations given."""
    def obs(oid, code, value, unit):
        return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "effectiveDateTime": "2025-03-10T08:00:00Z",
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    temps = [{**obs(f"t{i}", t["code"], t["value"], "Cel"), **({"bodySite": t["bodySite"]} if "bodySite" in t else {})}
             for i, t in enumerate(temperatures)]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
        {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1975-01-01"},
        obs("w", "6690-2", 1.5, "10*9/L"), obs("n", "751-8", 0.4, "10*9/L"), *temps]]}


def _snomed(code: str) -> dict:
    return {"coding": [{"system": "http://snomed.info/sct", "code": code}]}


@pytest.mark.parametrize("temperature, site", [
    ({"code": "8333-7", "value": 38.6}, "tympanic"),                   # MII ICU's tympanic profile: no 8310-5
    ({"code": "8328-7", "value": 38.6}, "axillary"),
    ({"code": "8332-9", "value": 38.6}, "rectal"),
    ({"code": "8329-5", "value": 38.6}, "core"),
    ({"code": "8310-5", "value": 38.6, "bodySite": _snomed("422543003")}, "axillary"),   # axillary fossa
    ({"code": "8310-5", "value": 38.6, "bodySite": _snomed("52795006")}, "temporal"),    # forehead
    ({"code": "8310-5", "value": 38.6}, None),
    ({"code": "8331-1", "value": 38.6, "bodySite": _snomed("422543003")}, "oral"),       # the code says more
    ({"code": "75539-7", "value": 38.6}, "temporal"),   # a temporal-artery scanner: "a code leukodx does not use"
    ({"code": "76011-6", "value": 38.6}, "tympanic"),   # ear
    ({"code": "76010-8", "value": 38.6}, "other"),      # nasal (VSAC's Body Temperature value set)
    ({"code": "8310-5", "value": 38.6, "bodySite": _snomed("26893007")}, "other"),       # groin
])
def test_fhir_a_temperature_from_any_site_is_read_with_its_site(client, temperature, site):
    """Only 8310-5 and 8331-1 were read: an ICU's tympanic or rectal temperature was "a code leukodx does not
    use" and a febrile neutropenia went unseen (the output asked for a temperature the record held)."""
    from leukodx.api.fhir import bundle_to_case
    history = bundle_to_case(_temperature_bundle(temperature))[0]["history"]
    assert history["temperature_c"] == 38.6 and history.get("temperature_site") == site
    doc = client.post("/v1/assess/fhir", json=_temperature_bundle(temperature)).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]
    assert [w for w in doc["warnings"] if "does not use" in w] == []


def test_fhir_an_axillary_temperature_below_the_threshold_asks_for_an_oral_one(client):
    def missing(*temps: dict) -> list[str]:
        doc = client.post("/v1/assess/fhir", json=_temperature_bundle(*temps)).json()
        assert "febrile_neutropenia" not in [a["id"] for a in doc["alerts"]]
        return [m for item in doc["missing_data"] for m in item["rules"]]
    assert "missing_data.reliable_temperature" in missing({"code": "8328-7", "value": 37.9})
    assert "missing_data.reliable_temperature" not in missing({"code": "8331-1", "value": 37.9})
    assert "missing_data.reliable_temperature" not in missing({"code": "8310-5", "value": 37.9})   # site not said
    assert "missing_data.reliable_temperature" in missing({"code": "75539-7", "value": 37.9})   # temporal artery


def test_fhir_the_highest_recent_temperature_is_used_not_the_latest(client):
    """39.2 C at 06:00 then 37.1 C at 10:00 (an antipyretic) with ANC 0.4 had given no febrile neutropenia:
    one reading of 38.3 C or more is fever (IDSA), so the highest of the window is used, and a warning says so."""
    def obs(oid, code, value, unit, when="2025-03-10T08:00:00Z"):
        return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
        {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1975-01-01"},
        obs("w", "6690-2", 1.5, "10*9/L"), obs("n", "751-8", 0.4, "10*9/L"),
        obs("t1", "8310-5", 39.2, "Cel", "2025-03-10T06:00:00Z"),
        obs("t2", "8310-5", 37.1, "Cel", "2025-03-10T10:00:00Z"),
        obs("t0", "8310-5", 40.1, "Cel", "2025-03-01T10:00:00Z"),          # days before the window: not used
        obs("t3", "8310-5", 39.9, "Cel", "2025-03-09T04:00:00Z")]]}        # 30 h before the latest: not used
    doc = client.post("/v1/assess/fhir", json=bundle).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]
    said = [w for w in doc["warnings"] if "highest body temperature" in w]
    assert len(said) == 1 and "39.2 C" in said[0] and "the latest was 37.1 C" in said[0]


def test_fhir_body_temperature_after_the_case_date_is_named_when_left_out(client):
    path = next((FHIR / "synthea").glob("Andy_Schaden_*.json"))   # CBC 2017-02-02, oral temperature 2019-05-16
    doc = client.post("/v1/assess/fhir", content=path.read_bytes(), headers=FHIR_JSON).json()
    assert [w for w in doc["warnings"] if "temperature" in w.lower()] != []


def test_fhir_without_labs_is_a_clear_problem(client):
    body = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}]}
    problem = is_problem(client.post("/v1/assess/fhir", json=body), 422)
    assert "no lab value" in json.dumps(problem)


def test_the_compact_view_keeps_what_a_caller_acts_on(client):
    full = client.post("/v1/assess", json=base_case(labs=[lab("wbc", 1.4), lab("anc", 0.3)])).json()
    compact = client.post("/v1/assess?view=compact", json=base_case(labs=[lab("wbc", 1.4), lab("anc", 0.3)])).json()
    assert (compact["tier"], compact["anc"], compact["priority"]) == ("severe", 0.3, "critical")
    assert [a["id"] for a in compact["alerts"]] == [a["id"] for a in full["alerts"]]
    assert [c["id"] for c in compact["causes"]] == [c["id"] for c in full["causes"]]
    assert [(s["id"], s["urgency"]) for s in compact["steps"]] == [(s["id"], s["urgency"]) for s in full["steps"]]
    assert "trace" not in compact and "sources" not in compact and len(json.dumps(compact)) < len(json.dumps(full)) / 3


def test_openapi_names_operations_and_documents_problems_and_the_cds_jwt(client):
    doc = client.get("/openapi.json").json()
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert {"assess", "assess_fhir", "call_service", "feedback", "discovery"} <= set(ids) and len(ids) == len(set(ids))
    assert doc["paths"]["/v1/assess"]["post"]["responses"]["422"]["content"]["application/problem+json"] == \
        {"schema": {"$ref": "#/components/schemas/Problem"}}
    assert doc["components"]["securitySchemes"]["cdsHooksJwt"]["bearerFormat"] == "JWT"
    assert doc["paths"]["/cds-services/{service_id}"]["post"]["security"] == [{"cdsHooksJwt": []}]
    assert "security" not in doc["paths"]["/cds-services"]["get"]          # discovery is public


def test_openapi_examples_are_library_cases_and_their_real_answers(client):
    """The OpenAPI request examples are case-library cases without their `expect` (no drift: the
    same text), each answered 200 through the API with the tier its case file expects; the response
    example is the engine's answer to the first, and is a valid Assessment."""
    import yaml
    from leukodx.api.rest import EXAMPLES
    from leukodx.engine import Assessment
    library = {p.stem: p for p in CASES.rglob("*.yaml")}
    op = client.get("/openapi.json").json()["paths"]["/v1/assess"]["post"]
    examples = op["requestBody"]["content"]["application/yaml"]["examples"]
    assert set(examples) == {p.stem for p in EXAMPLES.glob("*.yaml")} and len(examples) >= 2
    for name, ex in examples.items():
        source = library[name].read_text(encoding="utf-8")
        assert ex["value"] == source[:source.index("\nexpect:") + 1], name
        as_json = op["requestBody"]["content"]["application/json"]["examples"][name]["value"]
        r = client.post("/v1/assess", json=as_json)
        assert r.status_code == 200, r.text
        assert r.json()["risk_tier"]["tier"] == yaml.safe_load(source)["expect"]["risk_tier"], name
    (name, answer), = op["responses"]["200"]["content"]["application/json"]["examples"].items()
    assert Assessment.model_validate(answer["value"]).case_id == name


def test_what_lives_as_long_as_the_worker_is_frozen_again_once_the_report_store_is_open(tmp_path, monkeypatch):
    """The worker's long-lived objects are moved out of the collector's reach at start-up, and again
    once the report store (SQLAlchemy, alembic: 42,000 objects) has opened in the background."""
    import gc
    import time
    from leukodx.api import app as app_module
    settled = []
    monkeypatch.setattr(app_module, "_settle_heap", lambda: settled.append(gc.get_freeze_count()))
    settings = Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path}/fb.db", report_link_minutes=5)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 30
        while len(settled) < 2 and time.monotonic() < deadline:
            assert c.get("/healthz").status_code == 200
            time.sleep(0.02)
    assert len(settled) == 2
    off = Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path}/fb2.db", report_link_minutes=0)
    settled.clear()
    with TestClient(create_app(off)):
        pass
    assert len(settled) == 1            # no report store to wait for


def _lab_bundle(*labs: tuple[str, float, str, object]) -> dict:
    """(LOINC, value, unit, effectiveDateTime or None) -> a Bundle with a Patient."""
    def obs(i, code, value, unit, when):
        o = {"resourceType": "Observation", "id": f"o{i}", "status": "final", "subject": {"reference": "Patient/p"},
             "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
             "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
        return {**o, "effectiveDateTime": when} if when else o
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1975-01-01"}},
        *({"resource": obs(i, *lab)} for i, lab in enumerate(labs))]}


def test_fhir_a_value_without_a_usable_date_is_not_taken_as_the_current_count(client):
    """A partial date ("2019-06", valid FHIR) left the 2019 ANC 4.0 untimed, and the engine takes an untimed
    value as current: beside today's WBC 0.9 it hid a severe neutropenia. It is now left out and named."""
    for when in (None, "yesterday"):
        doc = client.post("/v1/assess/fhir", json=_lab_bundle(("6690-2", 0.9, "10*9/L", "2025-03-10T08:00:00Z"),
                                                              ("751-8", 4.0, "10*9/L", when))).json()
        assert [x["test"] for x in doc["labs"]] == ["wbc"], when
        assert any(("no usable date" in n["reason"] and "anc 4" in n["reason"]) if when is None else
                   "its time cannot be read (effectiveDateTime 'yesterday'" in n["reason"] for n in doc["not_assessed"]), when
        assert doc["risk_tier"]["anc"] != 4.0
    # a partial date is dated by its first day: the 2019 ANC is history, beside today's WBC
    doc = client.post("/v1/assess/fhir", json=_lab_bundle(("6690-2", 0.9, "10*9/L", "2025-03-10T08:00:00Z"),
                                                          ("751-8", 4.0, "10*9/L", "2019-06"))).json()
    assert [(x["test"], x["time"][:10], x["current"]) for x in doc["labs"] if x["test"] == "anc"] == \
        [("anc", "2019-06-01", False)]
    assert doc["risk_tier"]["anc"] != 4.0 and any("partial date" in w for w in doc["warnings"])
    undated_only = client.post("/v1/assess/fhir", json=_lab_bundle(("751-8", 0.4, "10*9/L", None))).json()
    assert undated_only["risk_tier"]["tier"] == "severe"       # nothing dated to place it among: kept, as before


def test_fhir_a_value_dated_in_the_future_is_left_out(client):
    """A haemoglobin dated 2052 had become the date the case was judged at (tier unknown, priority info)."""
    doc = client.post("/v1/assess/fhir", json=_lab_bundle(("751-8", 0.3, "10*9/L", "2025-03-10T08:00:00Z"),
                                                          ("718-7", 12.0, "g/dL", "2052-03-10T08:00:00Z"))).json()
    assert doc["as_of"].startswith("2025-03-10") and doc["risk_tier"]["tier"] == "severe"
    assert any("after today" in n["reason"] for n in doc["not_assessed"])


def test_fhir_a_fever_of_38_sustained_over_an_hour_is_read_from_the_readings(client):
    """38.1, 38.2, 38.1 C over 70 minutes with ANC 0.3 gave no fever: the mapping never set
    fever_sustained_1h. A reading below 38.0 between them breaks the run."""
    def bundle(*readings: tuple[str, float]) -> dict:
        b = _lab_bundle(("751-8", 0.3, "10*9/L", "2025-03-10T08:00:00Z"))
        for i, (when, value) in enumerate(readings):
            b["entry"].append({"resource": {
                "resourceType": "Observation", "id": f"t{i}", "status": "final", "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8331-1"}]}, "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}})
        return b
    from leukodx.api.fhir import bundle_to_case
    run = [("2025-03-10T06:00:00Z", 38.1), ("2025-03-10T06:40:00Z", 38.2), ("2025-03-10T07:10:00Z", 38.1)]
    assert bundle_to_case(bundle(*run))[0]["history"]["fever_sustained_1h"] is True
    doc = client.post("/v1/assess/fhir", json=bundle(*run)).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]
    assert any("sustained" in w for w in doc["warnings"])
    broken = [run[0], ("2025-03-10T06:40:00Z", 37.6), run[2]]
    assert "fever_sustained_1h" not in bundle_to_case(bundle(*broken))[0]["history"]
    short = run[:2]                                     # 40 minutes
    assert "fever_sustained_1h" not in bundle_to_case(bundle(*short))[0]["history"]
    doc = client.post("/v1/assess/fhir", json=bundle(*short)).json()
    assert "febrile_neutropenia" not in [a["id"] for a in doc["alerts"]]


def test_fhir_an_unconfirmed_diagnosis_and_an_order_not_given_are_not_taken_as_facts(client):
    """A Condition 'acute myeloid leukemia' with verificationStatus differential had ranked a haematological
    malignancy likely; a MedicationRequest with doNotPerform, or intent plan, had made azathioprine a cause."""
    def bundle(verification=None, **order):
        b = _lab_bundle(("6690-2", 2.0, "10*9/L", "2025-03-10T08:00:00Z"), ("751-8", 0.8, "10*9/L", "2025-03-10T08:00:00Z"))
        condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                     "code": {"text": "acute myeloid leukemia"}, "clinicalStatus": {"coding": [{"code": "active"}]}}
        if verification:
            condition["verificationStatus"] = {"coding": [{"code": verification}]}
        request = {"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "order",
                   "subject": {"reference": "Patient/p"}, "authoredOn": "2025-01-10",
                   "medicationCodeableConcept": {"text": "azathioprine"}, **order}
        b["entry"] += [{"resource": condition}, {"resource": request}]
        return client.post("/v1/assess/fhir", json=b).json()
    confirmed, differential = bundle("confirmed"), bundle("differential")
    assert "acute_leukemia" in confirmed["conditions"] and "acute_leukemia" not in differential["conditions"]
    assert any("verification status differential" in w for w in differential["warnings"])
    assert "thiopurine_myelotoxicity" in {c["id"] for c in confirmed["causes"]}
    for order in ({"doNotPerform": True}, {"intent": "plan"}, {"intent": "proposal"}):
        doc = bundle(**order)
        assert "thiopurine_myelotoxicity" not in {c["id"] for c in doc["causes"]}, order
        assert any("MedicationRequest/m" in w and "skipped" in w for w in doc["warnings"]), order


def test_a_temperature_between_38_0_and_38_3_of_unknown_duration_is_asked_about(client):
    """ANC 0.05 with a single 38.2 C and no word on its duration: no fever by IDSA's definition yet, and the
    output had said nothing; it now asks whether the temperature lasted an hour."""
    def rules(**history):
        doc = client.post("/v1/assess", json=base_case(labs=[lab("wbc", 0.9), lab("anc", 0.05)],
                                                       history=history)).json()
        return {r for item in doc["missing_data"] for r in item["rules"]}, {a["id"] for a in doc["alerts"]}
    asked, alerts = rules(temperature_c=38.2)
    assert "missing_data.fever_duration" in asked and "febrile_neutropenia" not in alerts
    assert "missing_data.fever_duration" not in rules(temperature_c=38.2, fever_sustained_1h=False)[0]
    asked, alerts = rules(temperature_c=38.2, fever_sustained_1h=True)
    assert "missing_data.fever_duration" not in asked and "febrile_neutropenia" in alerts
    assert "missing_data.fever_duration" not in rules(temperature_c=37.9)[0]
    assert "missing_data.fever_duration" not in rules(temperature_c=38.4)[0]


def test_fhir_results_of_a_report_entered_in_error_are_not_used(client):
    """A DiagnosticReport entered in error, holding a final ANC 0.3 (contained, or listed by reference), had
    been assessed as severe neutropenia."""
    anc = {"resourceType": "Observation", "id": "anc", "status": "final", "subject": {"reference": "Patient/p"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
           "effectiveDateTime": "2025-03-10T08:00:00Z",
           "valueQuantity": {"value": 0.3, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"}}
    report = {"resourceType": "DiagnosticReport", "id": "r", "status": "entered-in-error",
              "subject": {"reference": "Patient/p"}, "code": {"text": "CBC"}}
    wbc = _lab_bundle(("6690-2", 5.0, "10*9/L", "2025-03-10T08:00:00Z"))
    contained = {**wbc, "entry": wbc["entry"] + [{"resource": {**report, "contained": [anc], "result": [{"reference": "#anc"}]}}]}
    listed = {**wbc, "entry": wbc["entry"] + [{"resource": {**report, "result": [{"reference": "Observation/anc"}]}},
                                               {"resource": anc}]}
    for bundle in (contained, listed):
        doc = client.post("/v1/assess/fhir", json=bundle).json()
        assert [x["test"] for x in doc["labs"]] == ["wbc"]
        assert any("entered in error" in n["reason"] for n in doc["not_assessed"])
    final = {**wbc, "entry": wbc["entry"] + [{"resource": {**report, "status": "final",
                                                           "result": [{"reference": "Observation/anc"}]}},
                                              {"resource": anc}]}
    assert client.post("/v1/assess/fhir", json=final).json()["risk_tier"]["tier"] == "severe"


def test_fhir_a_dose_given_or_a_supply_dispensed_is_a_drug_taken(client):
    """A MedicationAdministration of clozapine the evening before ANC 0.3 had been dropped without a word."""
    def doc(resource):
        b = _lab_bundle(("6690-2", 1.0, "10*9/L", "2025-03-10T08:00:00Z"), ("751-8", 0.3, "10*9/L", "2025-03-10T08:00:00Z"))
        b["entry"].append({"resource": {"id": "x", "subject": {"reference": "Patient/p"}, **resource}})
        return client.post("/v1/assess/fhir", json=b).json()
    given = doc({"resourceType": "MedicationAdministration", "status": "completed",
                 "medicationCodeableConcept": {"text": "clozapine 100 mg tablet"},
                 "effectiveDateTime": "2025-03-09T20:00:00Z"})
    assert "idiosyncratic_drug_agranulocytosis" in {c["id"] for c in given["causes"]}
    dispensed = doc({"resourceType": "MedicationDispense", "status": "completed",
                     "medicationCodeableConcept": {"text": "azathioprine 50 mg"},
                     "whenHandedOver": "2025-01-20T10:00:00Z", "daysSupply": {"value": 90, "unit": "d"}})
    assert "thiopurine_myelotoxicity" in {c["id"] for c in dispensed["causes"]}
    not_given = doc({"resourceType": "MedicationAdministration", "status": "not-done",
                     "medicationCodeableConcept": {"text": "clozapine"}, "effectiveDateTime": "2025-03-09T20:00:00Z"})
    assert not not_given["causes"] and any("nothing was given" in w for w in not_given["warnings"])


def test_fhir_a_temperature_sent_as_a_component_of_a_vital_signs_panel_is_read(client):
    """A vital-signs panel whose temperature was a component had been 'a code leukodx does not use'."""
    b = _lab_bundle(("751-8", 0.3, "10*9/L", "2025-03-10T08:00:00Z"))
    b["entry"].append({"resource": {
        "resourceType": "Observation", "id": "vs", "status": "final", "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "85353-1"}]}, "effectiveDateTime": "2025-03-10T07:00:00Z",
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                       "valueQuantity": {"value": 118, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
                      {"code": {"coding": [{"system": "http://loinc.org", "code": "8333-7"}]},
                       "valueQuantity": {"value": 38.9, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}]}})
    from leukodx.api.fhir import bundle_to_case
    history = bundle_to_case(b)[0]["history"]
    assert (history["temperature_c"], history["temperature_site"]) == (38.9, "tympanic")
    doc = client.post("/v1/assess/fhir", json=b).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]
    assert [w for w in doc["warnings"] if "does not use" in w] == []


def test_fhir_a_temperature_coded_only_in_snomed_ct_is_read(client):
    """The MII ICU forehead temperature carries only a SNOMED CT code (415922000) and bodySite forehead."""
    b = _lab_bundle(("751-8", 0.3, "10*9/L", "2025-03-10T08:00:00Z"))
    b["entry"].append({"resource": {
        "resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "415922000"}]},
        "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "52795006"}]},
        "effectiveDateTime": "2025-03-10T07:00:00Z",
        "valueQuantity": {"value": 38.7, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}})
    from leukodx.api.fhir import bundle_to_case
    history = bundle_to_case(b)[0]["history"]
    assert (history["temperature_c"], history["temperature_site"]) == (38.7, "temporal")
    doc = client.post("/v1/assess/fhir", json=b).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]
    assert [w for w in doc["warnings"] if "does not use" in w] == []
    vitals = {s["id"]: s for s in client.get("/cds-services").json()["services"]}["leukodx-patient-view"]["prefetch"]["vitals"]
    assert "http://snomed.info/sct|415922000" in vitals and "http://loinc.org|8333-7" in vitals


def test_fhir_a_temperature_coded_only_as_snomed_ct_body_temperature_is_read(client):
    """SNOMED CT 386725007 (Body temperature, no site) alone: 39.1 C had been left out, and with it the
    febrile-neutropenia alert beside ANC 0.3."""
    b = _lab_bundle(("751-8", 0.3, "10*9/L", "2025-03-10T08:00:00Z"))
    b["entry"].append({"resource": {
        "resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "386725007"}]},
        "effectiveDateTime": "2025-03-10T07:00:00Z",
        "valueQuantity": {"value": 39.1, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}})
    doc = client.post("/v1/assess/fhir", json=b).json()
    assert "febrile_neutropenia" in [a["id"] for a in doc["alerts"]]
    vitals = {s["id"]: s for s in client.get("/cds-services").json()["services"]}["leukodx-patient-view"]["prefetch"]["vitals"]
    assert "http://snomed.info/sct|386725007" in vitals


def test_the_page_allows_no_inline_script_and_probes_may_use_head(client):
    """Security red-team round 27: the CSP allowed inline scripts though the page runs none (Swagger UI's /docs, which
    starts with one, sets its own), and HEAD /healthz was a 405 to load balancers' probes."""
    csp = client.get("/").headers["content-security-policy"]
    script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert script.strip() == "script-src 'self'" and "frame-ancestors 'none'" in csp
    assert "script-src 'self' 'unsafe-inline'" in client.get("/docs").headers["content-security-policy"]
    for path in ("/healthz", "/readyz", "/", "/cds-services", "/docs", "/v1/sources", "/favicon.ico"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
        assert r.headers["content-length"] == client.get(path).headers["content-length"], path
    assert client.head("/v1/assess").status_code == 405          # a POST route stays one


@pytest.mark.parametrize("path", ["/report/T0K", "/v1/reports/T0K", "//report/T0K", "/v1//reports/T0K", "/report//T0K",
                                  "/./report/T0K", "/x/../report/T0K", "/Report/T0K", "/static/app/../../report/T0K"])
def test_a_report_token_is_masked_however_the_path_is_spelt(path):
    """Security red-team round 29: spellings that 404 ("//report/T", "/Report/T") had kept the token whole in the log."""
    from leukodx.api.middleware import masked_path
    assert "T0K" not in masked_path(path) and masked_path(path).endswith("/-")
