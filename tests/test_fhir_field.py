"""FHIR as EHRs send it in the field (the red-team's FHIR findings): whose data a Bundle holds, retracted
genotypes, prefetch values that are not objects in the order hooks, orders naming their drug by
reference, two results of one test at one time, blood counts in components, and one draw reported in
two DiagnosticReports. Each test builds the trimmed request it needs."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from leukodx.api import feedback as feedback_store
from leukodx.api.app import create_app
from leukodx.api.cds.models import card_violations
from leukodx.api.config import get_settings
from leukodx.api.fhir import FhirMappingError, map_bundle, pgx_results
from leukodx.engine import assess, get_engine

UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
T = "2026-12-01T08:00:00Z"
RECENT = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT08:00:00Z")   # CDS judges today


def obs(code, value, unit="10*3/uL", *, pid="p1", t=T, oid=None, status="final", **extra):
    o = {"resourceType": "Observation", "id": oid or f"o{uuid.uuid4().hex[:8]}", "status": status,
         "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": t,
         "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}, **extra}
    if pid:
        o["subject"] = {"reference": f"Patient/{pid}"}
    return o


def genotype(value, *, pid="p1", status="final", t="2025-01-10", oid=None, code="36922-3", **extra):
    return {"resourceType": "Observation", "id": oid or f"g{uuid.uuid4().hex[:6]}", "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": t, "valueString": value, **extra}


def patient(pid="p1"):
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1980-05-01"}


def bundle(*resources, kind="collection"):
    return {"resourceType": "Bundle", "type": kind,
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in resources]}


def mapped(*resources, **kw):
    return map_bundle(bundle(*resources), kb=get_engine().kb, **kw)


def values(m, loinc):
    return [lab["value"] for lab in m.case["labs"] if lab["loinc"] == loinc]


def has(texts, *parts):
    return any(all(p in t for p in parts) for t in texts)


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKODX_CDS_AUTH", "off")
    monkeypatch.setenv("LEUKODX_FEEDBACK_DB_URL", f"sqlite:///{tmp_path}/feedback.db")
    monkeypatch.setenv("LEUKODX_REPORT_LINK_MINUTES", "0")
    get_settings.cache_clear()
    feedback_store.reset_cache()
    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def post_fhir(client, data, **params):
    return client.post("/v1/assess/fhir", params=params, content=json.dumps(data),
                       headers={"content-type": "application/fhir+json"})


def order(**drug):
    return {"resourceType": "MedicationRequest", "id": "ord1", "status": "draft", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "reasonCode": [{"text": "Crohn's disease"}],
            "dosageInstruction": [{"text": "150 mg daily", "doseAndRate": [
                {"doseQuantity": {"value": 150, "unit": "mg", "system": UCUM, "code": "mg"}}]}], **drug}


AZA_CC = {"coding": [{"system": RXNORM, "code": "1256", "display": "azathioprine"}]}
AZA_MED = {"resourceType": "Medication", "id": "aza50", "code": {"coding": [
    {"system": RXNORM, "code": "197388", "display": "azathioprine 50 MG Oral Tablet"}]}}


def hook_call(client, hook, pre, *orders, extra_drafts=()):
    body = {"hookInstance": str(uuid.uuid4()), "hook": hook,
            "context": {"userId": "Practitioner/1", "patientId": "p1",
                        "draftOrders": bundle(*orders, *extra_drafts)},
            "prefetch": {"patient": patient(), "observations": None, "pgx": None, "medicationRequests": None,
                         "medicationStatements": None, "conditions": None, **pre}}
    if hook == "order-select":
        body["context"]["selections"] = [f"MedicationRequest/{o['id']}" for o in orders]
    r = client.post(f"/cds-services/leukodx-{hook}", json=body)
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    assert [v for c in cards for v in card_violations(c)] == []
    return cards


def patient_view(client, **prefetch):
    """The cards of a patient-view call for Patient/p1 with these prefetch values (the others null)."""
    pre = {"patient": patient(), "observations": None, "pgx": None, "medicationRequests": None,
           "medicationStatements": None, "conditions": None, **prefetch}
    body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view",
            "context": {"userId": "Practitioner/1", "patientId": "p1"}, "prefetch": pre}
    r = client.post("/cds-services/leukodx-patient-view", json=body)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def severe_cbc(t=RECENT):
    return bundle(obs("6690-2", 1.2, t=t), obs("751-8", 0.3, t=t), kind="searchset")


def normal_cbc(t=RECENT):
    return bundle(obs("6690-2", 5.0, t=t), obs("751-8", 3.0, t=t), kind="searchset")


# ---- 1. whose data: one Patient is the patient; no Patient and two subjects is refused -------------

def test_one_patient_bundle_leaves_out_another_subjects_labs_and_names_them(client):
    data = bundle(patient(), obs("6690-2", 4.5), obs("751-8", 3.0),
                  obs("751-8", 0.2, pid="p2", t="2026-12-01T10:00:00Z"),
                  obs("6690-2", 0.9, pid="p2", t="2026-12-01T10:00:00Z"))
    a = post_fhir(client, data).json()
    assert a["risk_tier"]["tier"] == "normal" and a["risk_tier"]["anc"] == 3.0 and a["alerts"] == []
    assert sorted(lab["value"] for lab in a["labs"]) == [3.0, 4.5]
    left = [n for n in a["not_assessed"] if n["field"] == "subject"]
    assert left and left[0]["value"] == "Patient/p2" and "Patient/p1" in left[0]["reason"]


def test_one_patient_bundle_keeps_resources_that_name_no_subject():
    m = mapped(patient(), obs("6690-2", 4.5, pid=None), obs("751-8", 3.0, pid=None))
    assert values(m, "751-8") == [3.0] and not m.not_assessed


def test_no_patient_and_two_subjects_is_refused_naming_both(client):
    data = bundle(obs("751-8", 3.0), obs("751-8", 0.2, pid="p2", t="2026-12-01T10:00:00Z"))
    r = post_fhir(client, data)
    assert r.status_code == 422
    assert "Patient/p1" in r.text and "Patient/p2" in r.text and "?patient=" in r.text
    chosen = post_fhir(client, data, patient="p1").json()
    assert [lab["value"] for lab in chosen["labs"]] == [3.0]


def test_two_spellings_of_one_subject_are_one_patient():
    same = obs("6690-2", 4.5)
    same["subject"] = {"reference": "https://ehr.example.org/fhir/Patient/p1"}
    m = mapped(same, obs("751-8", 3.0))
    assert values(m, "751-8") == [3.0] and values(m, "6690-2") == [4.5]


def test_another_patients_genotype_is_never_used():
    m = mapped(patient(), obs("6690-2", 3.0), obs("751-8", 1.2), genotype("*3A/*3A", pid="p2"))
    assert "tpmt" not in m.case.get("history", {})
    assert has([n.value or "" for n in m.not_assessed], "Patient/p2")
    assert pgx_results(get_engine().kb, bundle(patient(), genotype("*3A/*3A", pid="p2")), "p1") == {}
    assert pgx_results(get_engine().kb, bundle(patient(), genotype("*3A/*3A", pid="p2"))) == {}
    assert pgx_results(get_engine().kb, bundle(genotype("*1/*1"), genotype("*3A/*3A", pid="p2"))) == {}
    assert pgx_results(get_engine().kb, bundle(genotype("*3A/*3A", pid="p2"))) == {"tpmt": "*3A/*3A"}


# ---- 2. a retracted genotype is no genotype --------------------------------------------------------

@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered", None])
def test_genotype_with_a_status_that_is_not_a_result_is_skipped_with_a_warning(status):
    g = genotype("*3A/*3A", status=status, oid="g1")
    if status is None:
        del g["status"]
    m = mapped(patient(), obs("6690-2", 3.0), obs("751-8", 1.2), g)
    assert "tpmt" not in m.case.get("history", {})
    assert has(m.warnings, "Observation/g1", "TPMT", f"status {status!r}" if status else "no status", "skipped")
    assert any("TPMT result" in n.reason for n in m.not_assessed)
    assert pgx_results(get_engine().kb, bundle(patient(), g), "p1") == {}


def test_a_later_retracted_genotype_leaves_the_earlier_final_one():
    m = mapped(patient(), obs("6690-2", 3.0), obs("751-8", 1.2), genotype("*1/*1", t="2024-05-01"),
               genotype("*3A/*3A", status="entered-in-error", t="2025-01-10"))
    assert m.case["history"]["tpmt"] == "*1/*1"


def test_a_corrected_genotype_at_the_same_time_replaces_the_original():
    """A TPMT *1/*1 (final) and its correction *3A/*3A (status corrected, issued later) at the same effective time:
    the first had stayed, and a poor metabolizer was shown as normal. Nothing to choose between two different
    final results at one time: the poorer function is used (a genotype does not change), and the conflict named."""
    m = mapped(patient(), obs("6690-2", 3.0), obs("751-8", 1.2), genotype("*1/*1", t="2024-06-01", oid="g1"),
               genotype("*3A/*3A", t="2024-06-01", status="corrected", oid="g2"))
    assert m.case["history"]["tpmt"] == "*3A/*3A"
    assert has(m.warnings, "Observation/g2", "supersedes")
    later_issued = mapped(patient(), obs("6690-2", 3.0), obs("751-8", 1.2),
                          genotype("*1/*1", t="2024-06-01", issued="2024-06-03T00:00:00Z"),
                          genotype("*3A/*3A", t="2024-06-01", issued="2024-06-10T00:00:00Z"))
    assert later_issued.case["history"]["tpmt"] == "*3A/*3A"
    undecided = mapped(patient(), obs("6690-2", 3.0), obs("751-8", 1.2), genotype("*1/*1", t="2024-06-01"),
                       genotype("*3A/*3A", t="2024-06-01"))
    assert undecided.case["history"]["tpmt"] == "*3A/*3A"
    assert any("TPMT results disagree" in n.reason for n in undecided.not_assessed)


def test_order_sign_gives_no_poor_metabolizer_card_from_a_retracted_genotype(client):
    pgx = bundle(genotype("*3A/*3A", status="entered-in-error"), kind="searchset")
    cards = hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx}, order(
        medicationCodeableConcept=AZA_CC))
    assert not any(c["indicator"] == "critical" for c in cards)
    assert any("genotype" in c["summary"].lower() and "unknown" in c["summary"] for c in cards)
    assert any("entered-in-error" in c["detail"] for c in cards)


# ---- 3. order hooks with a prefetch value that is not an object -----------------------------------

@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
@pytest.mark.parametrize("key", ["observations", "medicationRequests", "pgx"])
def test_order_hooks_name_a_prefetch_value_that_is_not_an_object_and_still_check_the_order(client, hook, key):
    pre = {"observations": normal_cbc(), key: json.dumps(normal_cbc()) if key == "observations" else "none"}
    cards = hook_call(client, hook, pre, order(medicationCodeableConcept=AZA_CC))
    assert any(f"prefetch '{key}'" in c["summary"] + c["detail"] for c in cards)
    # the order is checked; with the counts unread, it asks for one first
    assert any("Azathioprine ordered" in c["summary"] for c in cards)
    assert any(c["summary"].startswith("No current blood count") for c in cards) is (key == "observations")


# ---- 4. an order names its drug by reference -------------------------------------------------------

POOR = {"pgx": bundle(genotype("TPMT *3A/*3A; NUDT15 *1/*1", code="93193-1"), kind="searchset")}


@pytest.mark.parametrize("how", ["contained", "prefetch", "draftOrders", "display"])
def test_order_with_a_medication_reference_is_checked_like_one_with_a_codeable_concept(client, how):
    extra, pre = (), {"observations": normal_cbc(), **POOR}
    if how == "contained":
        o = order(medicationReference={"reference": "#aza50"}, contained=[AZA_MED])
    elif how == "display":
        o = order(medicationReference={"reference": "Medication/aza50", "display": "azathioprine 50 MG Oral Tablet"})
    else:
        o = order(medicationReference={"reference": "Medication/aza50"})
        if how == "prefetch":
            pre["medicationRequests"] = bundle(AZA_MED, kind="searchset")
        else:
            extra = (AZA_MED,)
    cards = hook_call(client, "order-sign", pre, o, extra_drafts=extra)
    by_cc = hook_call(client, "order-sign", {"observations": normal_cbc(), **POOR},
                      order(medicationCodeableConcept=AZA_CC))
    order_cards = [c for c in cards if c["summary"].startswith("Azathioprine")]
    assert [(c["indicator"], c["summary"]) for c in order_cards] == \
        [(c["indicator"], c["summary"]) for c in by_cc if c["summary"].startswith("Azathioprine")]
    assert order_cards and order_cards[0]["indicator"] == "critical"


def test_clozapine_order_by_contained_reference_gets_its_anc_card(client):
    low = bundle(obs("6690-2", 2.5, t=RECENT), obs("751-8", 0.8, t=RECENT), kind="searchset")
    clz = {"resourceType": "Medication", "id": "c", "code": {"coding": [
        {"system": RXNORM, "code": "197535", "display": "clozapine 100 MG Oral Tablet"}]}}
    cards = hook_call(client, "order-select", {"observations": low},
                      order(medicationReference={"reference": "#c"}, contained=[clz]))
    assert any(c["indicator"] == "critical" and "clozapine" in c["summary"] for c in cards)


@pytest.mark.parametrize("drug", [{"medicationReference": {"reference": "Medication/nowhere"}},
                                  {"medicationCodeableConcept": {"coding": []}}, {}])
def test_order_whose_drug_cannot_be_read_is_named_on_a_card(client, drug):
    cards = hook_call(client, "order-sign", {"observations": normal_cbc()}, order(**drug))
    unread = [c for c in cards if "could not tell which drug" in c["summary"]]
    assert len(unread) == 1 and "MedicationRequest/ord1" in unread[0]["summary"]
    assert "not checked" in unread[0]["detail"]


# ---- 5. two results of one test at one time --------------------------------------------------------

@pytest.mark.parametrize("first,second", [("preliminary", "corrected"), ("corrected", "preliminary"),
                                          ("final", "amended"), ("preliminary", "final")])
def test_the_later_status_of_a_result_is_kept(first, second):
    values_by_status = {first: 1.6, second: 0.4} if second != "preliminary" else {first: 0.4, second: 1.6}
    m = mapped(patient(), obs("6690-2", 2.0), obs("751-8", values_by_status[first], status=first, oid="a"),
               obs("751-8", values_by_status[second], status=second, oid="b"))
    assert values(m, "751-8") == [0.4]
    assert has(m.warnings, "0.4 10*3/uL", "kept over 1.6 10*3/uL", "supersedes")
    assert assess(m.case, partial=True).risk_tier.tier == "severe"


@pytest.mark.parametrize("field", ["issued", "meta"])
def test_of_two_final_results_the_later_issued_or_updated_is_kept(field):
    def stamp(when):
        return {"issued": when} if field == "issued" else {"meta": {"lastUpdated": when}}
    m = mapped(patient(), obs("751-8", 1.6, oid="a", **stamp("2026-12-01T10:00:00Z")),
               obs("751-8", 0.4, oid="b", **stamp("2026-12-01T12:00:00+01:00")),     # 11:00Z: later
               obs("751-8", 0.9, oid="c", **stamp("2026-12-01T09:00:00Z")))
    assert values(m, "751-8") == [0.4]
    assert has(m.warnings, "Observation/b", "kept over 1.6", "later")


def test_two_final_counts_that_nothing_decides_keep_the_lower_and_say_they_conflict():
    """An automated ANC 1.6 and a manual 0.4 at one time had set the tier by the order of the Bundle."""
    for order in ((1.6, 0.4), (0.4, 1.6)):
        m = mapped(patient(), obs("751-8", order[0], oid="a"), obs("751-8", order[1], oid="b"))
        assert values(m, "751-8") == [0.4], order
        assert has(m.warnings, "Observation/b", "the lower count", "check which result is valid")
        assert any("conflicts" in n.reason and "the lower count was used" in n.reason for n in m.not_assessed)
    mixed = mapped(patient(), obs("751-8", 0.5, oid="a"), obs("751-8", 400, "/uL", oid="b"))   # 0.4 in 10^9/L
    assert values(mixed, "751-8") == [400]
    same = mapped(patient(), obs("751-8", 1.6, oid="a"), obs("751-8", 1.6, oid="b"))
    assert has(same.warnings, "same value") and not same.not_assessed


def test_a_value_below_zero_beside_a_real_one_of_the_draw_is_set_aside_not_kept_as_the_lower():
    """An interface's -1 placeholder beside an ANC of 0.3 had been "the lower count", then refused, and the critical
    card lost with it (round 33); the same for a percentage of -5 beside 20%."""
    for order in ((0.3, -1), (-1, 0.3)):
        m = mapped(patient(), obs("6690-2", 1.0), obs("751-8", order[0], oid="a"), obs("751-8", order[1], oid="b"))
        assert values(m, "751-8") == [0.3], order
        assert [n for n in m.not_assessed if "below zero" in n.reason and "-1" in n.reason], m.not_assessed
        assert assess(m.case, partial=True).risk_tier.tier == "severe"
    pct = mapped(patient(), obs("6690-2", 2.0), obs("770-8", 20, "%", oid="a"), obs("770-8", -5, "%", oid="b"))
    assert assess(pct.case, partial=True).risk_tier.anc == 0.4


def test_two_neutrophil_percentages_of_one_draw_keep_the_lower_in_either_order():
    """FHIR red-team round 26: an automated 66% (770-8) and a manual segmented 10% (769-0) at one time had set the
    tier by the order of the Bundle (normal one way, severe the other), as two counts had before."""
    for first, second in ((("770-8", 66), ("769-0", 10)), (("769-0", 10), ("770-8", 66))):
        m = mapped(patient(), obs("6690-2", 3.0), obs(first[0], first[1], "%", oid="a"),
                   obs(second[0], second[1], "%", oid="b"))
        assert [lab["value"] for lab in m.case["labs"] if lab["unit"] == "%"] == [10], first
        assert has(m.warnings, "Observation/b", "the lower value", "check which result is valid")
        assert assess(m.case, partial=True).risk_tier.anc == 0.3


# ---- 6. blood counts in components ----------------------------------------------------------------

def panel(*components, status="final", code="57021-8"):
    return {"resourceType": "Observation", "id": "cbc1", "status": status, "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": T,
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": c}]},
                           **({"valueQuantity": {"value": v, "unit": u, "system": UCUM, "code": u}} if u else
                              {"valueQuantity": {"value": v}})} for c, v, u in components]}


def test_cbc_panel_components_are_lab_values_of_its_time():
    m = mapped(patient(), panel(("6690-2", 1.8, "10*3/uL"), ("751-8", 0.3, "10*3/uL"), ("718-7", 13.1, "g/dL"),
                                ("789-8", 4.1, "10*6/uL")),
               obs("6690-2", 5.0, t="2026-11-20T08:00:00Z"), obs("751-8", 3.0, t="2026-11-20T08:00:00Z"))
    assert values(m, "751-8") == [0.3, 3.0] and values(m, "718-7") == [13.1]
    assert {lab["ref"] for lab in m.case["labs"] if lab["time"].startswith("2026-12-01")} == {"Observation/cbc1"}
    assert has(m.warnings, "1 component of codes leukodx does not use", "LOINC 789-8")
    assert not has(m.warnings, "LOINC 57021-8")
    a = assess(m.case, partial=True)
    assert a.risk_tier.tier == "severe" and a.cbc.time.date().isoformat() == "2026-12-01"


def test_components_get_the_checks_of_a_top_level_value():
    m = mapped(patient(), obs("6690-2", 2.0), panel(("751-8", 0.3, None)))
    assert values(m, "751-8") == []
    assert any(n.field.endswith("component[0]") and "unit" in n.reason for n in m.not_assessed)
    retracted = mapped(patient(), obs("6690-2", 2.0), panel(("751-8", 0.3, "10*3/uL"), status="entered-in-error"))
    assert values(retracted, "751-8") == [] and has(retracted.warnings, "component[0]", "entered-in-error")


def test_a_value_given_only_in_a_component_of_its_own_code_is_read():
    m = mapped(patient(), obs("6690-2", 1.8), panel(("751-8", 0.3, "10*3/uL"), code="751-8"))
    assert values(m, "751-8") == [0.3] and not m.not_assessed


def test_components_of_codes_leukodx_does_not_read_leave_the_observation_ignored_as_before():
    m = mapped(patient(), obs("751-8", 3.0), panel(("8480-6", 120, "mm[Hg]"), ("8462-4", 80, "mm[Hg]"),
                                                   code="85354-9"))
    assert has(m.warnings, "1 Observation of codes leukodx does not use", "LOINC 85354-9")
    assert not has(m.warnings, "component")


def test_cds_patient_view_assesses_a_cbc_sent_as_components(client):
    cards = patient_view(client, observations=bundle({**panel(("6690-2", 1.8, "10*3/uL"), ("751-8", 0.3, "10*3/uL")),
                                                      "effectiveDateTime": RECENT}, kind="searchset"))
    assert cards and cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"]


# ---- 7. one draw reported in two DiagnosticReports --------------------------------------------------

def report(code, *results, t=T):
    return {"resourceType": "DiagnosticReport", "id": f"r{code}", "status": "final", "effectiveDateTime": t,
            "subject": {"reference": "Patient/p1"}, "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "result": [{"reference": f"Observation/{r['id']}"} for r in results]}


def test_cbc_and_differential_in_two_reports_of_one_collection_time_are_one_draw():
    wbc, neut = obs("6690-2", 2.0, oid="w"), obs("770-8", 20, "%", oid="n")
    m = mapped(patient(), report("58410-2", wbc), report("57023-4", neut), wbc, neut)
    assert has(m.warnings, "taken as one blood draw")
    a = assess(m.case, partial=True)
    assert a.risk_tier.tier == "severe" and a.risk_tier.anc == pytest.approx(0.4) and a.risk_tier.anc_derived


def test_reports_of_different_times_or_values_of_different_specimens_stay_apart():
    wbc, neut = obs("6690-2", 2.0, oid="w"), obs("770-8", 20, "%", oid="n", t="2026-12-01T11:00:00Z")
    apart = mapped(patient(), report("58410-2", wbc), report("57023-4", neut, t="2026-12-01T11:00:00Z"), wbc, neut)
    assert assess(apart.case, partial=True).risk_tier.tier == "unknown"
    w2 = obs("6690-2", 2.0, oid="w", specimen={"reference": "Specimen/a"})
    n2 = obs("770-8", 20, "%", oid="n", specimen={"reference": "Specimen/b"})
    split = mapped(patient(), report("58410-2", w2), report("57023-4", n2), w2, n2)
    assert assess(split.case, partial=True).risk_tier.tier == "unknown"


def test_mapping_errors_stay_fhir_mapping_errors():
    with pytest.raises(FhirMappingError):
        mapped(obs("751-8", 3.0), obs("751-8", 0.2, pid="p2"))


def test_only_a_normal_range_for_anyone_gives_the_lower_limit():
    """A treatment range (low 2.0) had made WBC 2.5 normal, and a newborn's range (low 9) had made WBC 5.0 low."""
    def lln(*ranges):
        m = mapped(patient(), obs("6690-2", 2.5, referenceRange=list(ranges)))
        return next(lab for lab in m.case["labs"] if lab["loinc"] == "6690-2").get("lln"), m.warnings
    low = lambda v: {"value": v, "unit": "10*3/uL", "system": UCUM, "code": "10*3/uL"}
    treatment = {"low": low(2.0), "type": {"coding": [{"code": "treatment"}]}}
    newborn = {"low": low(9.0), "age": {"low": {"value": 0, "unit": "d"}, "high": {"value": 28, "unit": "d"}}}
    assert lln({"low": low(3.8)})[0] == 3.8
    assert lln({"low": low(3.8), "type": {"coding": [{"code": "normal"}]}})[0] == 3.8
    assert lln(treatment, {"low": low(4.0)})[0] == 4.0
    value, warnings = lln(treatment)
    assert value is None and has(warnings, "not a normal range")
    assert lln(newborn)[0] is None and lln(newborn, {"low": low(4.0)})[0] == 4.0


def test_an_age_specific_range_is_the_lower_limit_for_a_patient_of_that_age():
    """A child's WBC came with the lab's ranges by age (referenceRange.age): they had all been left out, and the
    engine then asked for "the lab's age-specific lower limit" the lab had sent. Ages are whole units completed on
    the value's day (T is 2026-12-01): born 2015-12-02 is 10 years old, born 2015-12-01 is 11."""
    def lln(born, *ranges):
        child = {**patient(), "birthDate": born} if born else {k: v for k, v in patient().items() if k != "birthDate"}
        m = mapped(child, obs("6690-2", 4.2, referenceRange=list(ranges)))
        return next(lab for lab in m.case["labs"] if lab["loinc"] == "6690-2").get("lln"), m.warnings
    low = lambda v: {"value": v, "unit": "10*3/uL", "system": UCUM, "code": "10*3/uL"}
    years = lambda lo, hi, u="a": {"low": {"value": lo, "unit": u}, "high": {"value": hi, "unit": u}}
    bands = [{"low": low(5.0), "age": years(1, 10)}, {"low": low(4.5), "age": years(11, 17, "years")},
             {"low": low(4.0)}]
    assert lln("2015-12-02", *bands)[0] == 5.0       # 10 years and 364 days: still in 1-10
    assert lln("2015-12-01", *bands)[0] == 4.5       # 11 today
    assert lln("1980-05-01", *bands)[0] == 4.0       # an adult: the range for any age
    assert lln("2026-11-20", {"low": low(9.0), "age": years(0, 28, "d")}, {"low": low(4.0)})[0] == 9.0
    assert lln("2026-04-01", {"low": low(6.0), "age": years(0, 0.5)}, {"low": low(4.0)})[0] == 4.0   # 8 months
    value, warnings = lln(None, {"low": low(5.0), "age": years(1, 10)})
    assert value is None and has(warnings, "cannot be checked against the patient's age")
    value, warnings = lln("2020-01-01", {"low": low(5.0), "age": years(1, 10, "decades")})
    assert value is None and has(warnings, "does not hold the patient's age")


def test_an_analysers_corrected_wbc_and_loinc_written_other_ways_are_read():
    """WBC 0.8 coded 33256-9 (corrected for nucleated red cells: what analysers report as the WBC) had been
    "a code leukodx does not use", and an ANC whose system was 'http://loinc.org/' or LOINC's OID too."""
    assert values(mapped(patient(), obs("33256-9", 0.8)), "33256-9") == [0.8]
    assert values(mapped(patient(), obs("12227-5", 0.8)), "12227-5") == [0.8]
    for system in ("http://loinc.org/", "urn:oid:2.16.840.1.113883.6.1"):
        anc = obs("751-8", 0.4)
        anc["code"]["coding"][0]["system"] = system
        assert values(mapped(patient(), anc), "751-8") == [0.4], system
    other = obs("751-8", 0.4)
    other["code"]["coding"][0]["system"] = "http://example.org/local-codes"
    assert values(mapped(patient(), obs("6690-2", 3.0), other), "751-8") == []


def test_a_count_sent_as_text_is_read_when_its_unit_can_be_told():
    """An ANC sent as valueString '<0.1' (how labs report a critical count) had left the tier unknown and the
    priority info. A number plausible in only one of the test's usual units is read in it, with a warning; an
    upper bound plausible in two ('<100': 100 x10^9/L or 100 /uL) in the one giving the lower count (a lab
    reports a bound only at the bottom of its range: the red-team's '<100' had been left out, and the card
    said "no differential"); a zero in any unit; a number plausible in two and not a bound is not guessed."""
    def anc_text(text):
        o = obs("751-8", 0)
        del o["valueQuantity"]
        o["valueString"] = text
        return mapped(patient(), obs("6690-2", 0.9), o)
    m = anc_text("<0.1")
    [anc] = [lab for lab in m.case["labs"] if lab["loinc"] == "751-8"]
    assert (anc["value"], anc["unit"], anc.get("comparator")) == (0.1, "10^9/L", "<")
    assert has(m.warnings, "valueString '<0.1' read as <0.1 10^9/L")
    assert assess(m.case).risk_tier.tier == "profound"
    assert values(anc_text("0,3"), "751-8") == [0.3]
    # a unit written against the number (red-team round 19: "300/uL" had left the ANC unread), a leading point
    for text, value in (("300/uL", 300), ("300/µL", 300), ("300/mm3", 300), ("0.3K/uL", 0.3), (".3", 0.3)):
        m = anc_text(text)
        assert values(m, "751-8") == [value] and assess(m.case).risk_tier.tier == "severe", text
    m = anc_text("<100")
    [anc] = [lab for lab in m.case["labs"] if lab["loinc"] == "751-8"]
    assert (anc["value"], anc["unit"], anc.get("comparator")) == (100, "/uL", "<")
    assert has(m.warnings, "valueString '<100' read as <100 /uL", "lowest of its plausible readings")
    assert assess(m.case).risk_tier.tier == "profound"
    for zero in ("0", "0.0"):
        m = anc_text(zero)
        assert values(m, "751-8") == [0] and assess(m.case).risk_tier.tier == "profound", zero
    for unread in ("100", "see comment", "1,200"):
        m = anc_text(unread)
        assert values(m, "751-8") == [] and any("valueString" in n.reason for n in m.not_assessed), unread


def test_a_subject_named_by_another_patients_number_is_not_this_patients():
    """An ANC whose subject is MRN 999 (by identifier, no reference) had been assessed as the data of the
    Patient with MRN 123."""
    mrn = "urn:oid:1.2.3.mrn"
    person = {**patient(), "identifier": [{"system": mrn, "value": "123"}]}
    def by_number(value):
        o = obs("751-8", 0.3, pid=None)
        o["subject"] = {"identifier": {"system": mrn, "value": value}}
        return o
    theirs = mapped(person, obs("6690-2", 4.0), by_number("999"))
    assert values(theirs, "751-8") == []
    assert has([n.reason for n in theirs.not_assessed], "belongs to another patient")
    assert values(mapped(person, obs("6690-2", 4.0), by_number("123")), "751-8") == [0.3]


def test_a_deceased_patient_and_results_a_report_lists_but_the_data_lacks_are_named():
    dead = {**patient(), "deceasedDateTime": "2024-12-01"}
    assert has(mapped(dead, obs("751-8", 0.3)).warnings, "recorded as deceased (2024-12-01)")
    assert not has(mapped(patient(), obs("751-8", 0.3)).warnings, "deceased")
    report = {"resourceType": "DiagnosticReport", "id": "r", "status": "final", "subject": {"reference": "Patient/p1"},
              "code": {"text": "CBC"}, "effectiveDateTime": T,
              "result": [{"reference": "Observation/wbc"}, {"reference": "Observation/anc-not-fetched"}]}
    m = mapped(patient(), report, obs("6690-2", 3.0, oid="wbc"))
    assert has(m.warnings, "DiagnosticReport/r", "1 result it lists is not in the data", "Observation/anc-not-fetched")


@pytest.mark.parametrize("status,kept", [("cancelled", False), ("entered-in-error", False), ("final", True)])
def test_values_a_cancelled_report_lists_are_withdrawn_with_it(status, kept):
    """A cancelled DiagnosticReport's ANC of 0.3 had driven a critical card (round 33): FHIR's cancelled report is
    unavailable (the measurement not started or not completed), so what it lists goes with it, as with one entered in
    error, and is named."""
    report = {"resourceType": "DiagnosticReport", "id": "r", "status": status, "subject": {"reference": "Patient/p1"},
              "code": {"text": "CBC"}, "effectiveDateTime": T,
              "result": [{"reference": "Observation/wbc"}, {"reference": "Observation/anc"}]}
    m = mapped(patient(), report, obs("6690-2", 1.0, oid="wbc"), obs("751-8", 0.3, oid="anc"), obs("718-7", 13.0, "g/dL"))
    assert values(m, "751-8") == ([0.3] if kept else [])
    word = "cancelled" if status == "cancelled" else "entered in error"
    assert len([n for n in m.not_assessed if f"DiagnosticReport/r), which was {word}" in n.reason]) == (0 if kept else 2)


# ---- order checks beyond thiopurines and clozapine ----------------------------------------------------

def test_an_order_that_makes_an_interacting_pair_gets_a_warning_card(client):
    """Methotrexate ordered for a patient on co-trimoxazole, with normal counts, had given no card: the
    engine found the interaction, but only the thiopurine and clozapine checks reached a card."""
    on_bactrim = bundle({"resourceType": "MedicationRequest", "id": "m0", "status": "active", "intent": "order",
                         "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-11-20",
                         "medicationCodeableConcept": {"text": "Bactrim DS"}}, kind="searchset")
    mtx = order(medicationCodeableConcept={"text": "methotrexate 2.5 mg tablet"})
    cards = hook_call(client, "order-sign", {"observations": normal_cbc(), "medicationRequests": on_bactrim}, mtx)
    [card] = [c for c in cards if c["source"]["topic"]["code"] == "drug-interaction"]
    assert card["indicator"] == "warning" and "Methotrexate with trimethoprim-sulfamethoxazole" in card["summary"]
    assert "medsafe_methotrexate_trimethoprim_2022" in card["detail"]
    action = card["suggestions"][0]["actions"][0]
    assert (action["type"], action["resourceId"]) == ("delete", "MedicationRequest/ord1")
    alone = hook_call(client, "order-sign", {"observations": normal_cbc()}, mtx)
    assert not [c for c in alone if c["source"]["topic"]["code"] == "drug-interaction"]


def test_an_order_below_its_labels_count_threshold_gets_a_critical_card(client):
    """Valganciclovir ordered with haemoglobin 7.2 (label: do not use below 8 g/dL) had given no card."""
    low_hb = bundle(obs("6690-2", 5.0, t=RECENT), obs("751-8", 3.0, t=RECENT), obs("718-7", 7.2, "g/dL", t=RECENT),
                    kind="searchset")
    valgan = order(medicationCodeableConcept={"text": "valganciclovir 450 mg tablet"})
    cards = hook_call(client, "order-sign", {"observations": low_hb}, valgan)
    [card] = [c for c in cards if c["source"]["topic"]["code"] == "drug-label"]
    assert card["indicator"] == "critical" and "haemoglobin below 8" in card["detail"]
    assert card["suggestions"][0]["isRecommended"] is True
    fine = hook_call(client, "order-sign", {"observations": normal_cbc()}, valgan)
    assert not [c for c in fine if c["source"]["topic"]["code"] == "drug-label"]


def test_of_several_rxnorm_codings_the_one_leukodx_knows_names_the_drug(client):
    """An order coded [an RxNorm code leukodx does not know, azathioprine 50 mg tablet 197388] for a TPMT poor
    metabolizer had been read by its first coding and got no thiopurine card."""
    pgx = bundle(genotype("*3A/*3A"), kind="searchset")
    cc = {"coding": [{"system": RXNORM, "code": "2587196"}, {"system": RXNORM, "code": "197388"}]}
    cards = hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx}, order(medicationCodeableConcept=cc))
    assert any(c["indicator"] == "critical" and c["source"]["topic"]["code"] == "thiopurine-pgx" for c in cards)


def test_clozapine_drafted_yesterday_is_a_new_start_and_a_patient_on_it_at_anc_1_2_continues_three_times_weekly(client):
    """A clozapine draft with authoredOn yesterday at ANC 1.2 had been 'may proceed' (its days on the drug counted
    from authoredOn), and a patient on clozapine at ANC 1.2 was told to monitor weekly (label: three times a week)."""
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
    mild = bundle(obs("6690-2", 3.0, t=RECENT), obs("751-8", 1.2, t=RECENT), kind="searchset")
    draft = order(medicationCodeableConcept={"text": "clozapine 25 mg tablet"}, authoredOn=yesterday)
    [card] = [c for c in hook_call(client, "order-sign", {"observations": mild}, draft)
              if c["source"]["topic"]["code"] == "clozapine-anc"]
    assert card["indicator"] == "critical" and "do not start" in card["summary"]
    on_it = bundle({"resourceType": "MedicationRequest", "id": "c0", "status": "active", "intent": "order",
                    "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-05",
                    "medicationCodeableConcept": {"text": "clozapine 100 mg tablet"}}, kind="searchset")
    [card] = [c for c in hook_call(client, "order-sign", {"observations": mild, "medicationRequests": on_it}, draft)
              if c["source"]["topic"]["code"] == "clozapine-anc"]
    assert card["indicator"] == "warning" and "three times a week" in card["summary"]


def test_clozapine_ordered_again_after_a_course_stopped_at_anc_0_3_is_not_may_proceed(client):
    """A clozapine draft for a patient whose earlier course (a stopped MedicationRequest) reached ANC 0.3 had got
    'may proceed' on a normal current ANC; the label advises no rechallenge after an ANC below 0.5 on clozapine."""
    counts = bundle(obs("751-8", 0.3, t="2025-02-19T08:00:00Z"), obs("6690-2", 1.5, t="2025-02-19T08:00:00Z"),
                    obs("6690-2", 5.0, t=RECENT), obs("751-8", 2.6, t=RECENT), kind="searchset")
    earlier = bundle({"resourceType": "MedicationRequest", "id": "c-old", "status": "stopped", "intent": "order",
                      "subject": {"reference": "Patient/p1"}, "authoredOn": "2025-01-06",
                      "dispenseRequest": {"validityPeriod": {"start": "2025-01-06", "end": "2025-02-20"}},
                      "medicationCodeableConcept": {"text": "clozapine 100 mg tablet"}}, kind="searchset")
    draft = order(medicationCodeableConcept={"text": "clozapine 25 mg tablet"})
    cards = hook_call(client, "order-sign", {"observations": counts, "medicationRequests": earlier}, draft)
    [card] = [c for c in cards if c["source"]["topic"]["code"] == "clozapine-anc"]
    assert card["indicator"] == "warning" and "no rechallenge unless benefit outweighs risk" in card["summary"]
    alone = hook_call(client, "order-sign", {"observations": counts}, draft)   # no earlier course: not a rechallenge
    [card] = [c for c in alone if c["source"]["topic"]["code"] == "clozapine-anc"]
    assert card["indicator"] == "info" and "may proceed" in card["summary"]


def test_an_azathioprine_order_already_cut_for_allopurinol_is_not_cut_again(client):
    """An azathioprine draft of 25 mg a day (0.36 mg/kg/day at 70 kg: a quarter of CPIC's normal 2-3 mg/kg/day)
    beside allopurinol had been offered a change to 6.25 mg a day; a draft of 150 mg a day is still cut to 37.5."""
    counts = bundle(obs("6690-2", 5.0, t=RECENT), obs("751-8", 3.0, t=RECENT),
                    obs("29463-7", 70, unit="kg", t=RECENT), kind="searchset")
    allopurinol = bundle({"resourceType": "MedicationRequest", "id": "allo", "status": "active", "intent": "order",
                          "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-05",
                          "medicationCodeableConcept": {"text": "allopurinol 100 mg tablet"}}, kind="searchset")
    daily = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}

    def card_for(mg):
        draft = order(medicationCodeableConcept=AZA_CC, dosageInstruction=[{"timing": daily, "doseAndRate": [
            {"doseQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}]}])
        cards = hook_call(client, "order-sign", {"observations": counts, "medicationRequests": allopurinol}, draft)
        return next(c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx")
    kept = card_for(25)
    assert "0.36 mg/kg/day, already reduced" in kept["summary"] and "is not cut again" in kept["detail"]
    assert not [a for s in kept.get("suggestions", []) for a in s.get("actions", []) if a["type"] == "update"]
    cut = card_for(150)
    updated = [a["resource"] for s in cut.get("suggestions", []) for a in s.get("actions", []) if a["type"] == "update"]
    assert [r["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] for r in updated] == [37.5]


def test_a_thiopurine_ordered_at_a_severe_neutropenia_is_never_only_a_normal_starting_dose(client):
    """Azathioprine for a TPMT and NUDT15 normal patient with ANC 0.3 had got an info card 'normal starting dose',
    then a warning beside it; a thiopurine is withdrawn below an ANC of 1.0 (Singh 2022): do not start it now
    (critical)."""
    severe = bundle(obs("6690-2", 1.0, t=RECENT), obs("751-8", 0.3, t=RECENT), kind="searchset")
    pgx = bundle(genotype("*1/*1"), kind="searchset")
    [card] = [c for c in hook_call(client, "order-sign", {"observations": severe, "pgx": pgx},
                                   order(medicationCodeableConcept=AZA_CC))
              if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("ANC 0.3 now (severe neutropenia): do not start until the count recovers")
    [calm] = [c for c in hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx},
                                   order(medicationCodeableConcept=AZA_CC))
              if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    assert "ANC" not in calm["summary"]


def test_a_dose_change_is_offered_as_an_update_only_for_one_daily_dose_in_mass_units(client):
    """A TPMT poor metabolizer's 75 mg twice daily (two instructions) had become 7.5 mg three times a week plus the
    untouched 75 mg daily; 3 tablets had become 2.4 tablets. Those orders keep the advice, without an update."""
    pgx = bundle(genotype("TPMT *1/*3A; NUDT15 *1/*1", code="93193-1"), kind="searchset")
    def updates(**dosage):
        draft = order(medicationCodeableConcept=AZA_CC, **dosage)
        return [a for c in hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx}, draft)
                for s in c.get("suggestions") or [] for a in s["actions"] if a["type"] == "update"]
    once = updates()                                  # 150 mg daily, one instruction
    assert [a["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] for a in once] == [120.0]
    dose = lambda v, unit="mg", code="mg": {"doseAndRate": [{"doseQuantity": {"value": v, "unit": unit, "code": code}}]}
    assert updates(dosageInstruction=[dose(75), dose(75)]) == []
    assert updates(dosageInstruction=[{**dose(75), "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}]) == []
    assert updates(dosageInstruction=[dose(3, "tablet", "TAB")]) == []


def test_two_drafts_with_one_id_get_cards_with_distinct_uuids(client):
    """Azathioprine and mercaptopurine drafts both with id d1 had given two cards with one uuid (CDS Hooks: each
    card's uuid is unique), the first card's update carrying the second order."""
    pgx = bundle(genotype("TPMT *1/*3A; NUDT15 *1/*1", code="93193-1"), kind="searchset")
    aza = order(id="d1", medicationCodeableConcept=AZA_CC)
    mp = order(id="d1", medicationCodeableConcept={"text": "mercaptopurine 50 mg tablet"})
    cards = hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx}, aza, extra_drafts=(mp,))
    pgx_cards = [c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    assert len(pgx_cards) == 2 and len({c["uuid"] for c in cards}) == len(cards)
    for card in pgx_cards:
        drug = "zathioprine" if "Azathioprine" in card["summary"] else "ercaptopurine"
        for s in card.get("suggestions") or []:
            for a in s["actions"]:
                if a["type"] == "update":
                    assert drug in json.dumps(a["resource"]["medicationCodeableConcept"]).lower()


@pytest.mark.parametrize("selection", ["https://ehr.example.org/fhir/MedicationRequest/ord1", "ord1", "MedicationRequest/zzz"])
def test_an_order_select_selection_named_another_way_or_not_found_never_silences_the_check(client, selection):
    """A selection as an absolute URL, a bare id, or naming no draft had given zero cards for a TPMT poor
    metabolizer's azathioprine order."""
    body = {"hookInstance": str(uuid.uuid4()), "hook": "order-select",
            "context": {"userId": "Practitioner/1", "patientId": "p1", "selections": [selection],
                        "draftOrders": bundle(order(medicationCodeableConcept=AZA_CC))},
            "prefetch": {"patient": patient(), "observations": normal_cbc(), "medicationRequests": None,
                         "medicationStatements": None, "conditions": None, **POOR}}
    cards = client.post("/cds-services/leukodx-order-select", json=body).json()["cards"]
    assert any(c["indicator"] == "critical" and c["source"]["topic"]["code"] == "thiopurine-pgx" for c in cards)
    named = [c for c in cards if "was not found among the draft orders" in c["summary"]]
    assert bool(named) is (selection == "MedicationRequest/zzz")


# ---- 8. the red-team's second round: the EHR's own today, and a recount without a differential -------

def test_a_count_dated_by_the_day_alone_on_the_ehrs_today_ahead_of_utc_is_todays(client):
    """Sydney's morning bloods dated by the day alone read as tomorrow in UTC: the mapping kept them (a day
    ahead is allowed) and the engine then refused them as "in the future", so the card spoke of a normal
    count 20 days old. The case is now judged on the EHR's date: agranulocytosis, critical."""
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    old = (datetime.now(timezone.utc) - timedelta(days=20)).strftime("%Y-%m-%dT08:00:00Z")
    labs = bundle(obs("6690-2", 1.2, t=tomorrow), obs("751-8", 0.3, t=tomorrow),
                  obs("6690-2", 6.0, t=old), obs("751-8", 3.1, t=old), kind="searchset")
    cards = patient_view(client, observations=labs)
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"], cards[0]["summary"]
    assert not any("in the future" in c["detail"] for c in cards)
    m = mapped(patient(), obs("751-8", 0.3, t=tomorrow), as_of=datetime.now(timezone.utc).date())
    assert m.case["as_of"] == tomorrow and m.not_assessed == []
    two_days = (datetime.now(timezone.utc) + timedelta(days=2)).date().isoformat()   # beyond the day allowed
    m = mapped(patient(), obs("751-8", 3.0, t=old), obs("751-8", 0.3, t=two_days), as_of=datetime.now(timezone.utc).date())
    assert values(m, "751-8") == [3.0] and has([n.reason for n in m.not_assessed], "after today")


def test_a_wbc_only_recount_hours_after_an_anc_of_0_3_keeps_the_agranulocytosis_card(client):
    """A CBC with ANC 0.3 at 06:00 and a WBC-only recount at 09:00: the recount had become the current count,
    bounding the ANC at its WBC only ("mild or worse", info), while the earlier ANC, lower than that bound,
    still holds (rules/thresholds.yaml anc_from_earlier_draw_hours)."""
    day = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
    labs = bundle(obs("6690-2", 1.0, t=f"{day}T06:00:00Z"), obs("751-8", 0.3, t=f"{day}T06:00:00Z"),
                  obs("6690-2", 1.1, t=f"{day}T09:00:00Z"), kind="searchset")
    cards = patient_view(client, observations=labs)
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"], cards[0]["summary"]
    assert "3 h before the latest count" in cards[0]["detail"]


@pytest.mark.parametrize("unit,value", [("degrees C", 38.9), ("deg C", 38.9), ("Celsius", 38.9), ("ºC", 38.9),
                                        ("℃", 38.9), ("C°", 38.9), ("deg F", 102.0), ("degrees F", 102.0),
                                        ("Fahrenheit", 102.0), ("℉", 102.0), ("Cel", 38.9), ("[degF]", 102.0)])
def test_a_temperature_with_its_unit_in_free_text_is_read(unit, value):
    """A body temperature whose unit was free text ("degrees C", "℃") had been dropped with a warning only, and
    with ANC 0.8 the febrile neutropenia emergency with it."""
    temp = {"resourceType": "Observation", "id": "t1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}, "effectiveDateTime": RECENT,
            "valueQuantity": {"value": value, "unit": unit}}
    m = mapped(patient(), obs("6690-2", 2.0, t=RECENT), obs("751-8", 0.8, t=RECENT), temp,
               as_of=datetime.now(timezone.utc).date())
    assert m.case["history"]["temperature_c"] == 38.9, m.warnings
    assert "febrile_neutropenia" in [a.id for a in assess(m.case).alerts]


@pytest.mark.parametrize("ahead,kept", [(1, True), (3, False)])
def test_a_temperature_dated_a_day_ahead_is_read_as_a_count_dated_so_is(ahead, kept):
    """FHIR red-team round 26: a fever of 38.9 dated by the day alone, tomorrow in UTC (a zone ahead of UTC), had been
    left out with the ANC of 0.8 beside it read, the card listing the temperature as missing; counts dated so are kept
    (up to a day ahead). One dated days ahead is still left out."""
    today = datetime.now(timezone.utc).date()
    temp = {"resourceType": "Observation", "id": "t1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "effectiveDateTime": (today + timedelta(days=ahead)).isoformat(),
            "valueQuantity": {"value": 38.9, "unit": "Cel", "system": UCUM, "code": "Cel"}}
    m = mapped(patient(), obs("6690-2", 2.0, t=RECENT), obs("751-8", 0.8, t=RECENT), temp, as_of=today)
    assert (m.case.get("history", {}).get("temperature_c") == 38.9) is kept, m.warnings
    assert ("febrile_neutropenia" in [a.id for a in assess(m.case).alerts]) is kept


def _temperature(**value):
    return {"resourceType": "Observation", "id": "t1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}, "effectiveDateTime": RECENT,
            **value}


@pytest.mark.parametrize("value,celsius", [({"valueQuantity": {"value": 38.9}}, 38.9),
                                           ({"valueString": "38.9"}, 38.9),
                                           ({"valueQuantity": {"value": 102.0}}, 38.9)])
def test_a_temperature_sent_without_a_unit_is_read_on_the_only_scale_it_fits(value, celsius):
    """A temperature with no unit (38.9, or "38.9" as text) had been dropped with a warning the card never showed,
    and with ANC 0.4 the febrile neutropenia emergency with it: 25-45 can only be Celsius, 77-113 only Fahrenheit."""
    m = mapped(patient(), obs("6690-2", 1.5, t=RECENT), obs("751-8", 0.4, t=RECENT), _temperature(**value),
               as_of=datetime.now(timezone.utc).date())
    assert m.case["history"]["temperature_c"] == celsius, m.warnings
    assert has(m.warnings, "sent without a unit was read in")
    assert "febrile_neutropenia" in [a.id for a in assess(m.case).alerts]


def test_a_temperature_whose_unit_and_code_are_two_scales_is_named_not_read_in_either():
    """38.6 with unit 'Cel' and UCUM code [degF] had been read as 3.7 C, and the case refused with 'history.temperature_c
    (3.7): Input should be greater than or equal to 25' (red-team round 10): named by its Observation now."""
    temp = _temperature(valueQuantity={"value": 38.6, "unit": "Cel", "system": UCUM, "code": "[degF]"})
    m = mapped(patient(), obs("6690-2", 2.0, t=RECENT), obs("751-8", 0.8, t=RECENT), temp,
               as_of=datetime.now(timezone.utc).date())
    assert "temperature_c" not in m.case.get("history", {})
    assert [n.reason for n in m.not_assessed if "body temperature" in n.reason] == [
        "a body temperature of 38.6 with the unit 'Cel' and its UCUM code '[degF]', two different scales: which one "
        "it is in cannot be told; not assessed"]
    same = _temperature(valueQuantity={"value": 38.6, "unit": "°C", "system": UCUM, "code": "Cel"})
    m = mapped(patient(), obs("6690-2", 2.0, t=RECENT), same, as_of=datetime.now(timezone.utc).date())
    assert m.case["history"]["temperature_c"] == 38.6


def test_a_temperature_that_cannot_be_read_is_named_as_not_assessed():
    """60 with no unit fits no body temperature scale; one in "mmHg" has no temperature unit: each is named as not
    assessed (the card lists it) instead of a warning only."""
    for value in ({"valueQuantity": {"value": 60}}, {"valueQuantity": {"value": 38.9, "unit": "mmHg"}}):
        m = mapped(patient(), obs("6690-2", 1.5, t=RECENT), obs("751-8", 0.4, t=RECENT), _temperature(**value),
                   as_of=datetime.now(timezone.utc).date())
        assert "temperature_c" not in m.case.get("history", {})
        assert any("body temperature" in n.reason for n in m.not_assessed), m.not_assessed


@pytest.mark.parametrize("wrong,why", [(101.5, "if it was in Fahrenheit it would be 38.6 C"), (386, "(386 C) is not a body")])
def test_a_temperature_that_is_not_a_body_temperature_is_set_aside_alone(wrong, why):
    """A Fahrenheit 101.5 (or a typo, 386) charted as Celsius two hours after a real 38.6 C had been taken as the highest,
    refused by the engine with every temperature, and the febrile neutropenia lost (round 33): set aside alone, named."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    real = dict(_temperature(valueQuantity={"value": 38.6, "unit": "Cel", "system": UCUM, "code": "Cel"}),
                effectiveDateTime=(now - timedelta(hours=3)).isoformat())
    typo = dict(_temperature(valueQuantity={"value": wrong, "unit": "Cel", "system": UCUM, "code": "Cel"}), id="t2",
                effectiveDateTime=(now - timedelta(hours=1)).isoformat())
    m = mapped(patient(), obs("6690-2", 2.0, t=RECENT), obs("751-8", 0.8, t=RECENT), real, typo, as_of=now.date())
    assert m.case["history"]["temperature_c"] == 38.6
    assert [n.reason for n in m.not_assessed if why in n.reason], m.not_assessed
    assert "febrile_neutropenia" in [a.id for a in assess(m.case).alerts]


def test_without_a_case_date_a_fever_after_the_last_count_sets_it():
    """REST without as_of had judged the case at the latest lab's UTC day and left out a fever measured the same
    evening after UTC midnight ("measured after the date the case is judged at"), and febrile neutropenia with it."""
    day = (datetime.now(timezone.utc) - timedelta(days=3)).date()
    labs = [obs("6690-2", 1.5, t=f"{day}T17:30:00-05:00"), obs("751-8", 0.3, t=f"{day}T17:30:00-05:00")]
    fever = _temperature(valueQuantity={"value": 39.0, "unit": "Cel", "system": UCUM, "code": "Cel"},
                         effectiveDateTime=f"{day}T20:30:00-05:00")
    m = mapped(patient(), *labs, fever)
    assert m.case["as_of"] == (day + timedelta(days=1)).isoformat() and m.case["history"]["temperature_c"] == 39.0
    assert "febrile_neutropenia" in [a.id for a in assess(m.case).alerts]


def test_an_rxnorm_code_under_its_oid_is_read():
    """RxNorm written as its HL7 OID (urn:oid:2.16.840.1.113883.6.88, as CDA-derived feeds do) was "no RxNorm code",
    and the drug unknown."""
    request = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-10-01",
               "medicationCodeableConcept": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.88", "code": "1256"}]}}
    m = mapped(patient(), obs("6690-2", 2.0), obs("751-8", 0.8), request)
    assert [med["rxnorm"] for med in m.case["medications"]] == ["1256"], m.warnings
    assert "thiopurine_myelotoxicity" in [c.id for c in assess(m.case).causes]


def test_a_fever_condition_recorded_long_ago_without_an_onset_is_not_a_fever_now(client):
    """An active "Neutropenic fever" with no onset, recorded in 2024, had raised febrile neutropenia beside an ANC
    of 0.3 today: the day it was recorded bounds its onset."""
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": "Neutropenic fever"},
                 "recordedDate": "2024-10-01"}
    m = mapped(patient(), obs("6690-2", 1.0, t=RECENT), obs("751-8", 0.3, t=RECENT), condition,
               as_of=datetime.now(timezone.utc).date())
    assert "febrile_neutropenia" not in [a.id for a in assess(m.case).alerts]
    assert has(m.warnings, "a fever recorded with its onset on or before 2024-10-01", "read as past")


def _request(oid, name, *, status="active", authored="2026-10-01", text=None):
    res = {"resourceType": "MedicationRequest", "id": oid, "status": status, "intent": "order",
           "subject": {"reference": "Patient/p1"}, "authoredOn": authored, "medicationCodeableConcept": {"text": name}}
    if text:
        res["dosageInstruction"] = [{"text": text}]
    return res


def test_more_medications_than_the_contract_holds_keep_the_active_ones_and_the_card():
    """501 orders had made the whole call "could not assess this patient" beside an ANC of 0.4: the active ones and
    the most recently started are kept, the rest named as not assessed."""
    old = [_request(f"old{i}", "paracetamol", status="completed", authored="2015-01-01") for i in range(520)]
    m = mapped(patient(), obs("6690-2", 1.2, t=RECENT), obs("751-8", 0.4, t=RECENT),
               _request("aza", "azathioprine 50 mg tablet"), *old, as_of=datetime.now(timezone.utc).date())
    names = [x["name"] for x in m.case["medications"]]
    assert len(names) == 500 and "azathioprine 50 mg tablet" in names
    assert any("21 medications" == (n.value or "") for n in m.not_assessed), m.not_assessed
    a = assess(m.case)
    assert a.risk_tier.tier == "severe" and "thiopurine_myelotoxicity" in [c.id for c in a.causes]


def test_a_long_sig_or_condition_text_costs_only_its_tail():
    """A 728-character dosage text had dropped the azathioprine it belonged to (and its cause); a 600-character
    Condition had been lost whole: the sig is left out (cut, it could read as another dose), the texts cut."""
    sig = "Take 50 mg by mouth daily. " + "Monitor full blood count weekly for 8 weeks, then monthly. " * 12
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "clinicalStatus": {"coding": [{"code": "active"}]},
                 "code": {"text": "Crohn disease of the ileum " + "with stricturing behaviour, " * 22}}
    m = mapped(patient(), obs("6690-2", 2.0, t=RECENT), obs("751-8", 0.8, t=RECENT),
               _request("aza", "azathioprine", text=sig), condition, as_of=datetime.now(timezone.utc).date())
    med = m.case["medications"][0]
    assert med["name"] == "azathioprine" and "dose" not in med and has(m.warnings, "was not read")
    assert len(m.case["history"]["conditions"][0]) == 500
    assert "thiopurine_myelotoxicity" in [c.id for c in assess(m.case).causes]


def _anc(**value):
    res = obs("751-8", 0, t=RECENT)
    del res["valueQuantity"]
    return {**res, **value}


@pytest.mark.parametrize("value", [{"valueString": "0.3 L"}, {"valueString": "0.3 K/uL"}, {"valueString": "0.30 (LL)"},
                                   {"valueString": "0.3*"}, {"valueString": "300 /uL H"},
                                   {"valueString": "0.3 x 10^9/L"}, {"valueString": "0.3 × 10*9/L L"},   # printed forms
                                   {"valueString": "0.3x10^9/L"}, {"valueString": "0.3 × 10⁹ /L"},
                                   {"valueQuantity": {"value": "0.3", "unit": "10*3/uL", "code": "10*3/uL"}}])
def test_an_anc_written_with_its_unit_or_flag_as_text_is_read(client, value):
    """An ANC sent as "0.3 L" (a laboratory's low flag), "0.3 K/uL" (its unit) or "0.3" in valueQuantity.value had
    been left unread, and WBC 1.8 made an information card."""
    cards = patient_view(client, observations=bundle(obs("6690-2", 1.8, t=RECENT), _anc(**value), kind="searchset"))
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"], cards[0]["summary"]


def test_an_anc_sent_but_unread_beside_a_low_wbc_is_at_least_a_warning(client):
    """An ANC that cannot be read ("LOW", no number) beside WBC 1.8 had left the leukopenia card at information: an
    unread ANC is not a normal one."""
    cards = patient_view(client, observations=bundle(obs("6690-2", 1.8, t=RECENT), _anc(valueString="LOW"),
                                                     kind="searchset"))
    assert cards[0]["indicator"] == "warning" and "Not assessed" in cards[0]["detail"], cards[0]


def test_results_dated_only_by_month_are_history_not_the_current_count(client):
    """A CBC dated "2023-05" (a partial date, valid FHIR) and nothing else had been undated, so current: a critical
    card with an urgent marrow in 2026. Dated by the month's first day, it is an old count."""
    labs = bundle(obs("6690-2", 1.2, t="2023-05"), obs("751-8", 0.3, t="2023-05"), kind="searchset")
    cards = patient_view(client, observations=labs)
    assert cards and cards[0]["indicator"] == "info" and "No current CBC" in cards[0]["summary"], cards


@pytest.mark.parametrize("value,phenotype", [("Homozygous variant", "poor"), ("TPMT heterozygous variant",
                                                                             "intermediate"),
                                             ("Homozygous wild type", "normal")])
def test_a_genotype_reported_by_zygosity_is_read(value, phenotype):
    """"Homozygous variant" (two no-function alleles: CPIC's poor metabolizer) had read as status unknown, and an
    azathioprine order for a poor metabolizer got only "genotype before dosing"."""
    assert pgx_results(get_engine().kb, bundle(patient(), genotype(value))) == {"tpmt": phenotype}


def test_a_tpmt_activity_number_is_named_as_not_assessed():
    """A TPMT activity (21563-2, 2.0 U/mL) is not turned into a phenotype; it had been a warning only, so the
    order card said "status unknown" with no word of the result: it is now listed as not assessed."""
    activity = {**genotype("x", code="21563-2"), "valueQuantity": {"value": 2.0, "unit": "U/mL"}}
    del activity["valueString"]
    m = mapped(patient(), obs("6690-2", 5.0), obs("751-8", 3.0), activity)
    assert [n.reason.split(":")[0] for n in m.not_assessed] == ["TPMT result '2.0 U/mL'"], m.not_assessed


@pytest.mark.parametrize("broken", ["empty conditions", "contained without resourceType"])
def test_one_broken_resource_outside_the_labs_costs_only_itself(client, broken):
    """`"conditions": {}`, or a MedicationStatement whose contained Medication has no resourceType, had made the
    whole call "could not assess this patient" (info) with an ANC of 0.3: the broken part is now named on the
    card and the rest assessed."""
    pre: dict = {"conditions": {}}
    if broken != "empty conditions":
        statement = {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
                     "subject": {"reference": "Patient/p1"}, "contained": [{"id": "m1", "code": {"text": "x"}}],
                     "medicationReference": {"reference": "#m1"}}
        pre = {"conditions": None, "medicationStatements": bundle(statement, kind="searchset")}
    cards = patient_view(client, observations=severe_cbc(), **pre)
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"], cards[0]["summary"]
    assert "`resourceType` is missing" in cards[0]["detail"]


def test_a_medication_whose_drug_cannot_be_told_is_named_on_the_card(client):
    """A MedicationRequest whose medicationReference points to a Medication the prefetch does not hold, with no
    display, had been dropped with a warning only: a clozapine could be missing from the causes with nothing on the
    card saying so. It is now named among what could not be used."""
    rx = {"resourceType": "MedicationRequest", "id": "rx1", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/elsewhere"}}
    cards = patient_view(client, medicationRequests=bundle(rx, kind="searchset"), observations=severe_cbc())
    assert cards[0]["indicator"] == "critical"
    assert "a medication whose drug cannot be told" in cards[0]["detail"] and "medicationRequests" in cards[0]["detail"]


def test_a_child_under_two_is_aged_in_months_so_that_her_anaemia_is_seen():
    """FHIR ages were whole years: a 10-month-old was 0, matched no WHO haemoglobin row (6-23 months: 10.5 g/dL),
    and her Hb of 8.0 went unseen ('isolated neutropenia'). Under two the age is now in months."""
    today = datetime.now(timezone.utc).date()
    born = (today.replace(day=1) - timedelta(days=300)).replace(day=1)       # 10 or 11 whole months ago
    child = {**patient(), "birthDate": born.isoformat()}
    m = mapped(child, obs("6690-2", 3.0, t=RECENT), obs("751-8", 0.8, t=RECENT), obs("718-7", 8.0, "g/dL", t=RECENT),
               as_of=today)
    assert 0.8 <= m.case["patient"]["age_years"] <= 0.95
    assert "anemia" in [f.id for f in assess(m.case).findings]
    assert mapped(patient(), obs("751-8", 0.8, t=RECENT), as_of=today).case["patient"]["age_years"] == \
        today.year - 1980 - ((today.month, today.day) < (5, 1))          # from two on, whole years as before


@pytest.mark.parametrize("coding,alert", [
    ({"system": "http://snomed.info/sct", "code": "91302008"}, True),
    ({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "A41.9"}, True),
    ({"system": "http://hl7.org/fhir/sid/icd-10", "code": "A40.3"}, True),
    ({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R65.21"}, True),
    ({"system": "http://snomed.info/sct", "code": "76571007"}, True),                   # septic shock
    ({"system": "http://snomed.info/sct", "code": "10001005"}, True),                   # bacterial sepsis
    ({"system": "urn:oid:2.16.840.1.113883.6.90", "code": "A41.9"}, True),              # ICD-10-CM by its OID
    ({"system": "urn:oid:2.16.840.1.113883.6.96", "code": "91302008"}, True),           # SNOMED CT by its OID
    ({"system": "http://snomed.info/SCT/", "code": "91302008"}, True),                  # case and a trailing slash
    ({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J18.9"}, False),     # pneumonia: not read by code
])
def test_a_condition_sent_as_codes_only_is_read_by_them_or_named(client, coding, alert):
    """A sepsis Condition coded only (SNOMED CT 91302008, ICD-10 A41.9), with no text or display, had been skipped
    with a warning: with ANC 1.2 the card was info "mild neutropenia". Codes rules/conditions.yaml knows name the
    condition; any other coded-only Condition is named among what could not be used."""
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"coding": [coding]}}
    cards = patient_view(client, conditions=bundle(condition, kind="searchset"),
                         observations=bundle(obs("6690-2", 2.9, t=RECENT), obs("751-8", 1.2, t=RECENT), kind="searchset"))
    if alert:
        assert cards[0]["indicator"] == "critical" and "sepsis" in cards[0]["detail"].lower(), cards[0]["summary"]
    else:
        assert cards[0]["indicator"] != "critical"
        assert "a diagnosis sent as codes only (http://hl7.org/fhir/sid/icd-10-cm J18.9" in cards[0]["detail"]


@pytest.mark.parametrize("code", [
    {"coding": [{"system": "http://snomed.info/sct", "code": "386661006"}]},              # Fever (finding)
    {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R50.9"}]},
    {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "D70.1"},        # neutropenic fever as US
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R50.81"}]},      # coders code it
    {"coding": [{"system": "http://snomed.info/sct", "code": "409089005"}]},             # Febrile neutropenia
    {"text": "Fever"}])
def test_a_fever_recorded_as_a_condition_with_anc_0_3_is_febrile_neutropenia(client, code):
    """An active 'Fever' Condition (text, SNOMED CT or ICD-10 R50) with ANC 0.3 and no temperature had been a
    severe-neutropenia card with no febrile-neutropenia alert, the fever listed as 'not a condition leukodx knows'."""
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "clinicalStatus": {"coding": [{"code": "active"}]}, "code": code}
    cards = patient_view(client, conditions=bundle(condition, kind="searchset"), observations=severe_cbc())
    assert cards[0]["indicator"] == "critical" and cards[0]["summary"].startswith("FEBRILE NEUTROPENIA")
    resolved = {**condition, "clinicalStatus": {"coding": [{"code": "resolved"}]}}
    cards = patient_view(client, conditions=bundle(resolved, kind="searchset"), observations=severe_cbc())
    assert not cards[0]["summary"].startswith("FEBRILE NEUTROPENIA")
    old = {**condition, "onsetDateTime": "2019-03-01"}          # an episode of 2019 left active on the list
    cards = patient_view(client, conditions=bundle(old, kind="searchset"), observations=severe_cbc())
    assert not cards[0]["summary"].startswith("FEBRILE NEUTROPENIA")


@pytest.mark.parametrize("value,code_text,expected", [
    ("TPMT*3A/TPMT*3A", None, "*3A/*3A"),               # the gene written before each allele
    ("*3A|*3A", None, "*3A/*3A"),                       # a phased call
    ("Low or absent TPMT activity", None, "poor"),      # CPIC's phenotypes by activity
    ("Absent activity", None, "poor"),
    ("Intermediate activity", None, "intermediate"),
    ("PM", None, "poor"), ("IM", None, "intermediate"),  # the abbreviation as the whole value
    ("*3A/*3A", "Thiopurine methyltransferase genotype", "*3A/*3A"),   # the gene by its name in the code's text
])
def test_tpmt_results_as_laboratories_word_them_are_read(value, code_text, expected):
    """Each had left TPMT "unknown": an azathioprine order then got "genotype before dosing" for a poor
    metabolizer already tested, instead of the critical card (CPIC: 10% of the dose, or an alternative)."""
    g = genotype(value)
    if code_text:
        g["code"] = {"text": code_text}
    assert pgx_results(get_engine().kb, bundle(patient(), g)) == {"tpmt": expected}


@pytest.mark.parametrize("system,read", [("http://www.pharmvar.org", True), ("http://loinc.org", False)])
def test_a_genotype_coded_with_pharmvar_and_no_display_is_read(system, read):
    """The Genomics Reporting IG's value, a PharmVar coding "TPMT*3A/TPMT*3A" with no text or display, had been
    dropped: a documented poor metabolizer's azathioprine order got "TPMT status unknown: genotype before
    dosing". A code of another system is no allele call."""
    g = genotype("x")
    del g["valueString"]
    g["valueCodeableConcept"] = {"coding": [{"system": system, "code": "TPMT*3A/TPMT*3A"}]}
    assert pgx_results(get_engine().kb, bundle(patient(), g)) == ({"tpmt": "*3A/*3A"} if read else {})


def test_a_word_of_two_letters_inside_a_text_is_not_a_phenotype():
    """PM and IM are read only as the whole value: "seen 3 PM" or "IM injection" say nothing of TPMT."""
    assert pgx_results(get_engine().kb, bundle(patient(), genotype("sample taken 3 PM, result to follow"))) == {}


def test_an_old_count_card_shows_what_that_count_was(client):
    """The last count (ANC 0.05, 35 days ago, nothing since) is too old to assess: the card had said only its age,
    then showed the values in an information card; a profound count never repeated is now a warning (the
    agranulocytosis is not shown to have recovered) that says what the count was. At 200 days it is history."""
    old = (datetime.now(timezone.utc) - timedelta(days=35)).strftime("%Y-%m-%dT08:00:00Z")
    [card] = patient_view(client, observations=bundle(obs("6690-2", 0.6, t=old), obs("751-8", 0.05, t=old),
                                                       kind="searchset"))
    assert (card["summary"], card["indicator"]) == ("Agranulocytosis not shown to have recovered", "warning")
    assert "The latest ANC, 0.05 x10^9/L, was drawn 35 days before" in card["detail"]
    older = (datetime.now(timezone.utc) - timedelta(days=200)).strftime("%Y-%m-%dT08:00:00Z")
    [card] = patient_view(client, observations=bundle(obs("6690-2", 0.6, t=older), obs("751-8", 0.05, t=older),
                                                       kind="searchset"))
    assert card["summary"].startswith("No current CBC") and card["indicator"] == "info"
    assert "Absolute neutrophil count 0.05 10^9/L" in card["detail"] and "White blood cell count 0.6" in card["detail"]


def test_the_headline_names_a_cause_with_the_engines_likelihood():
    """The headline had said "likely cause" of whatever came first, a cause the engine ranks less likely too."""
    import yaml
    from leukodx.api.cds.cards import assessment_cards
    from conftest import CASES
    for name, likelihood, said in (("children/child-3y-hb-10-6-anaemic-bicytopenia.yaml", "less_likely",
                                    "cause to consider: "),
                                   ("baseline/methotrexate-ra-anc-1-3-before-start.yaml", "possible", "possible cause: ")):
        a = get_engine().assess(yaml.safe_load((CASES / name).read_text()))
        assert a.causes[0].likelihood == likelihood, name
        summary = assessment_cards(a, "h", "p1")[0].summary
        assert said in summary and "likely cause" not in summary, summary


def test_a_deceased_patients_cards_say_so_first(client):
    """A patient recorded as deceased was named only in the mapping's warnings, which a CDS card never shows: the
    clinician could act on another patient's record. The first card now says it before anything else."""
    dead = {**patient(), "deceasedDateTime": "2025-06-01"}
    [first, *_] = patient_view(client, patient=dead, observations=severe_cbc())
    assert first["detail"].startswith("**Check first:** The patient is recorded as deceased (2025-06-01)")
    assert first["indicator"] == "critical"
    assert "Check first" not in patient_view(client, observations=severe_cbc())[0]["detail"]


def test_a_string_among_a_prefetch_bundles_entries_costs_only_itself(client):
    """One entry that is not an object among a Bundle's entries had made the whole call a 400: no cards, though the
    other entries held an ANC of 0.3. The entry is named on the card and the rest assessed (an `entry` that is not
    a list at all is still a 400: tests/test_hostile_limits.py)."""
    labs = severe_cbc()
    labs["entry"].append("a string")
    cards = patient_view(client, observations=labs)
    assert cards[0]["indicator"] == "critical" and "ANC 0.3" in cards[0]["summary"]
    assert "a Bundle entry must be a JSON object, not a string" in cards[0]["detail"]


MTX_CC = {"coding": [{"system": RXNORM, "code": "6851", "display": "methotrexate"}]}


@pytest.mark.parametrize("timing,daily", [
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}, True),
    ({"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}, True),
    ({"repeat": {"frequency": 7, "period": 1, "periodUnit": "wk"}}, True),
    ({"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "QD"}]}}, True),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}, False),
    ({"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"}}, False),
    ({"repeat": {"frequency": 1, "period": 7, "periodUnit": "d"}}, False),          # once a week, in days
    ({"repeat": {"frequency": 1, "period": 168, "periodUnit": "h"}}, False),        # and in hours
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "dayOfWeek": ["mon"]}}, False)])   # on Mondays
def test_methotrexate_given_daily_for_arthritis_gets_a_critical_card_whatever_the_count(client, timing, daily):
    """Methotrexate 10 mg once a day for rheumatoid arthritis, as an EHR's timing says it (no text), is the
    daily-instead-of-weekly error (ISMP 2018; FDA 2019): a critical card at normal counts, and at the order's
    signing. Once or twice a week it is the intended regimen, however the timing writes it (1 per 7 d had been
    flagged), and the weekly dose is kept as a weekly dose."""
    dosage = [{"timing": timing,
               "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}}]}]
    rx = {"resourceType": "MedicationRequest", "id": "mtx", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-05", "medicationCodeableConcept": MTX_CC,
          "reasonCode": [{"text": "rheumatoid arthritis"}], "dosageInstruction": dosage}
    cards = patient_view(client, medicationRequests=bundle(rx, kind="searchset"), observations=normal_cbc())
    flagged = [c for c in cards if "Methotrexate given daily" in c["summary"] + c.get("detail", "")]
    assert bool(flagged) is daily
    if daily:
        assert flagged[0]["indicator"] == "critical"
    signed = hook_call(client, "order-sign", {"observations": normal_cbc()},
                       order(medicationCodeableConcept=MTX_CC, reasonCode=[{"text": "rheumatoid arthritis"}],
                             dosageInstruction=dosage))
    assert any("Methotrexate given daily" in c["summary"] + c.get("detail", "") for c in signed) is daily
    m = mapped(patient(), obs("751-8", 3.0, t=RECENT), rx, as_of=datetime.now(timezone.utc).date())
    assert m.case["medications"][0]["dose"]["unit"] == ("mg/d" if daily else "mg/wk")


@pytest.mark.parametrize("timing,flagged", [
    ({"repeat": {"frequency": 1, "period": 2, "periodUnit": "d"}}, True),          # every other day: 3.5 a week
    ({"repeat": {"frequency": 5, "period": 1, "periodUnit": "wk"}}, True),
    ({"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "QOD"}]}},
     True),
    ({"code": {"coding": [{"code": "Q2D"}]}}, True),
    ({"repeat": {"frequency": 3, "period": 1, "periodUnit": "wk"}}, False),         # a weekly dose in three takes
    ({"repeat": {"frequency": 1, "period": 12, "periodUnit": "h", "count": 3}}, False),   # 12 hours apart, 3 in all
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "count": 3}}, True)])    # 3 daily takes are daily
def test_methotrexate_every_other_day_or_most_days_is_caught_like_daily(client, timing, flagged):
    """Methotrexate 10 mg every other day, or five times a week, for rheumatoid arthritis had given no card: only once
    a day or more often was caught (red-team round 12). More than three takes a week is not a weekly regimen; three
    (a weekly dose divided 12 hours apart) is not flagged. The dosage's text ("10 mg") does not hide its timing."""
    dosage = [{"text": "10 mg", "timing": timing,
               "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}}]}]
    rx = {"resourceType": "MedicationRequest", "id": "mtx", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-05", "medicationCodeableConcept": MTX_CC,
          "reasonCode": [{"text": "rheumatoid arthritis"}], "dosageInstruction": dosage}
    cards = patient_view(client, medicationRequests=bundle(rx, kind="searchset"), observations=normal_cbc())
    assert any(c["summary"].startswith("Methotrexate given daily or most days") for c in cards) is flagged
    signed = hook_call(client, "order-sign", {"observations": normal_cbc()},
                       order(medicationCodeableConcept=MTX_CC, reasonCode=[{"text": "rheumatoid arthritis"}],
                             dosageInstruction=dosage))
    assert [c["indicator"] for c in signed if c["summary"].startswith("Methotrexate given daily")] == \
        (["critical"] if flagged else [])


@pytest.mark.parametrize("timing,dose,daily", [
    ({"repeat": {"when": ["MORN"]}}, {"doseQuantity": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}}, True),
    ({"code": {"text": "Daily"}}, {"doseQuantity": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}}, True),
    ({"code": {"text": "once weekly"}}, {"doseQuantity": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}},
     False),
    ({"repeat": {"when": ["MORN"], "periodUnit": "wk"}},                  # a morning each week: not daily
     {"doseQuantity": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}}, False),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
     {"doseRange": {"low": {"value": 7.5, "unit": "mg", "system": UCUM, "code": "mg"},
                    "high": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"}}}, True),
])
def test_methotrexate_daily_by_event_words_or_a_dose_range_is_caught(client, timing, dose, daily):
    """Every morning (repeat.when MORN), a timing only in words ("Daily"), or a daily dose given as a range: the
    daily methotrexate had gone unseen (no card, at the patient's view and at signing)."""
    dosage = [{"timing": timing, "doseAndRate": [dose]}]
    signed = hook_call(client, "order-sign", {"observations": normal_cbc()},
                       order(medicationCodeableConcept=MTX_CC, reasonCode=[{"text": "rheumatoid arthritis"}],
                             dosageInstruction=dosage))
    flagged = [c for c in signed if c["summary"].startswith("Methotrexate given daily")]
    assert [c["indicator"] for c in flagged] == (["critical"] if daily else [])


def test_a_daily_recount_26_hours_after_an_anc_of_0_2_keeps_it_and_dates_it(client):
    """A daily CBC without a differential drawn 26 h after ANC 0.2 had lost it (a 24 h window): WBC 5.0 gave no
    card at all. Within IDSA's 48 h the ANC stands, and the headline dates it by its own draw, not as today's."""
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    at = lambda h: (now - timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")      # noqa: E731
    labs = bundle(obs("6690-2", 0.9, t=at(26)), obs("751-8", 0.2, t=at(26)), obs("6690-2", 5.0, t=at(0)),
                  kind="searchset")
    cards = patient_view(client, observations=labs)
    assert cards[0]["indicator"] == "critical" and "ANC 0.2" in cards[0]["summary"], cards[0]["summary"]
    assert f"ANC 0.2 x10^9/L, {at(26)[:10]}" in cards[0]["summary"]


def test_an_anc_that_cannot_be_read_is_never_called_no_neutropenia(client):
    """WBC 4.1 with the ANC in a unit leukodx cannot read: the card had said "no neutropenia or leukopenia found"
    (info) beside an unread ANC that could be 0.3."""
    labs = bundle(obs("6690-2", 4.1, t=RECENT), obs("751-8", 300, "K/hpf", t=RECENT), kind="searchset")
    [card] = patient_view(client, observations=labs)
    assert card["indicator"] == "warning" and "neutrophil count unknown" in card["summary"]
    assert "no neutropenia" not in card["summary"] and "K/hpf" in card["detail"]
    absent = obs("751-8", 0.3, t=RECENT)            # an ANC the lab could not give (the mapping leaves it out)
    del absent["valueQuantity"]
    absent["dataAbsentReason"] = {"text": "Clumped specimen"}
    [card] = patient_view(client, observations=bundle(obs("6690-2", 4.1, t=RECENT), absent, kind="searchset"))
    assert card["indicator"] == "warning" and "neutrophil count unknown" in card["summary"]


def test_a_labels_haemoglobin_and_platelet_limits_with_no_white_count_get_a_card_naming_the_drug(client):
    """Valganciclovir with Hb 6.5 and platelets 8 drawn today and no WBC or ANC: the engine raised the label's
    urgent hold, and the service gave no card (nor one beside an ANC 35 days old, whose card showed only that
    count). The card is a warning headed by the step, its reasons naming the drug and the label's limits."""
    rx = {"resourceType": "MedicationRequest", "id": "vg", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-05",
          "medicationCodeableConcept": {"text": "valganciclovir"}}
    today = [obs("718-7", 6.5, "g/dL", t=RECENT), obs("777-3", 8, t=RECENT)]
    old = (datetime.now(timezone.utc) - timedelta(days=35)).strftime("%Y-%m-%dT08:00:00Z")
    for labs in (today, today + [obs("751-8", 1.8, t=old)]):
        cards = patient_view(client, observations=bundle(*labs, kind="searchset"),
                             medicationRequests=bundle(rx, kind="searchset"))
        assert cards[0]["indicator"] == "warning" and cards[0]["summary"].startswith("Hold or reduce the suspect drug")
        assert "The valganciclovir label: haemoglobin below 8 g/dL" in cards[0]["detail"]
    [stale] = patient_view(client, observations=bundle(*today, obs("751-8", 1.8, t=old), kind="searchset"))
    assert "**Since then:**" in stale["detail"] and "Platelet count 8" in stale["detail"]
    [alone] = patient_view(client, observations=bundle(*today, kind="searchset"))    # no drug, no white count
    assert alone["summary"] == "Anaemia, Thrombocytopenia with no WBC or ANC: CBC with differential needed"


@pytest.mark.parametrize("severity,named", [("warning", True), ("error", True), ("information", False)])
def test_a_searchs_operation_outcome_saying_results_were_left_out_is_on_the_card(client, severity, named):
    """An OperationOutcome in the observations searchset ("some results were suppressed") had been ignored: the
    card gave no hint that the counts it rested on might not be all of them. A search's information is not."""
    outcome = {"resourceType": "OperationOutcome", "id": "oo", "issue": [
        {"severity": severity, "code": "suppressed", "diagnostics": "Some results were suppressed (sensitive)"}]}
    labs = severe_cbc()
    labs["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    cards = patient_view(client, observations=labs)
    assert cards[0]["indicator"] == "critical"
    assert ("Some results were suppressed" in cards[0]["detail"]) is named


def test_methotrexate_ordered_daily_with_no_blood_count_is_stopped_at_signing(client):
    """Methotrexate 10 mg daily for rheumatoid arthritis signed for a patient with no Observations: no card at all
    (the alert needs an assessment, and there was no count to assess). ISMP's hard stop belongs at the order: the
    order check says it; for an oncologic indication, or once a week, it does not."""
    def cards_for(text, reason="rheumatoid arthritis"):
        draft = order(medicationCodeableConcept=MTX_CC, reasonCode=[{"text": reason}],
                      dosageInstruction=[{"text": text}])
        return [c for c in hook_call(client, "order-sign", {}, draft)
                if c["source"]["topic"]["code"] == "dosing-frequency"]
    [card] = cards_for("10 mg daily")
    assert card["indicator"] == "critical" and card["summary"].startswith("Methotrexate given daily")
    assert cards_for("10 mg daily", "acute lymphoblastic leukaemia") == []
    assert cards_for("10 mg once weekly") == []


def test_a_wbc_with_no_differential_and_another_value_unread_is_not_a_warning(client):
    """WBC 6.0 with no differential beside a lymphocyte count in a unit leukodx cannot read had been the warning
    "neutrophil count unknown" (the second red team): nothing that could give the ANC was unread. An unread ANC
    beside it still is the warning."""
    other = bundle(obs("6690-2", 6.0, t=RECENT), obs("731-0", 2.0, "K/hpf", t=RECENT), kind="searchset")
    [card] = patient_view(client, observations=other)
    assert card["indicator"] == "info" and card["summary"].endswith("no ANC (no differential); some other values "
                                                                      "could not be read")
    anc = bundle(obs("6690-2", 6.0, t=RECENT), obs("751-8", 300, "K/hpf", t=RECENT), kind="searchset")
    [card] = patient_view(client, observations=anc)
    assert card["indicator"] == "warning" and "neutrophil count unknown" in card["summary"]


def test_a_draft_order_is_not_a_drug_taken_on_the_patients_card(client):
    """ANC 0.3 yesterday and an azathioprine draft being signed: the draft had been taken as the cause ("a low white
    count on a thiopurine points to it", an urgent hold) and the marrow and serology work-up of an unexplained
    agranulocytosis had gone. The patient's card is the same with or without the draft; the order card speaks
    about the draft."""
    severe = bundle(obs("6690-2", 1.2, t=RECENT), obs("751-8", 0.3, t=RECENT), kind="searchset")
    pgx = bundle(genotype("*1/*1"), kind="searchset")

    def patient_card(*drafts):
        cards = hook_call(client, "order-sign", {"observations": severe, "pgx": pgx}, *drafts)
        return next(c for c in cards if c["source"]["topic"]["code"] != "thiopurine-pgx"), cards
    alone, _ = patient_card(order(id="lis", medicationCodeableConcept={"text": "lisinopril 10 mg"}))
    with_draft, cards = patient_card(order(medicationCodeableConcept=AZA_CC))
    assert with_draft["summary"] == alone["summary"] and "thiopurine" not in with_draft["summary"].lower()
    assert "Bone marrow" in with_draft["detail"] and "Hold or reduce" not in with_draft["detail"]
    order_card = next(c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx")
    assert order_card["indicator"] == "critical" and "do not start" in order_card["summary"]


@pytest.mark.parametrize("first,second,used", [("*3A/*3A", "*1/*1", "*3A/*3A"), ("*1/*1", "*3A/*3A", "*3A/*3A"),
                                              ("*1/*1", "normal", "normal"), ("*1/*3A", "*1/*1", "*1/*3A")])
def test_tpmt_results_that_disagree_use_the_poorer_function_and_say_so(first, second, used):
    """TPMT *3A/*3A of 2023 and *1/*1 of 2024: the later had won in silence, and an azathioprine order got 'normal
    starting dose'. A genotype does not change: the poorer is used and the disagreement named."""
    m = mapped(patient(), obs("751-8", 3.0, t=RECENT), genotype(first, t="2023-03-01", oid="g1"),
               genotype(second, t="2024-03-01", oid="g2"), as_of=datetime.now(timezone.utc).date())
    assert m.case["history"]["tpmt"] == used
    named = [n for n in m.not_assessed if "results disagree" in n.reason]
    assert len(named) == (0 if {first, second} == {"*1/*1", "normal"} else 1)


@pytest.mark.parametrize("labs,indicator,said", [
    ((("6690-2", 1.3),), "critical", "WBC 1.3 with no differential now: do not start"),   # the ANC can only be < 1.3
    ((("6690-2", 2.0), ("751-8", 1.1)), "critical", "ANC 1.1 now (mild neutropenia): do not start"),   # WBC < 2.5
    ((("6690-2", 3.6), ("751-8", 1.2)), "warning", "ANC 1.2 now (mild neutropenia): agree the start"),
])
def test_a_thiopurine_order_says_what_the_counts_advise_first(client, labs, indicator, said):
    """A WBC of 1.3 with no differential, or WBC 2.0 with ANC 1.1, had given an information card 'normal starting
    dose (CPIC)' (Singh 2022 stops a thiopurine below a WBC of 2.5 or an ANC of 1.0)."""
    counts = bundle(*(obs(code, value, t=RECENT) for code, value in labs), kind="searchset")
    pgx = bundle(genotype("*1/*1"), kind="searchset")
    [card] = [c for c in hook_call(client, "order-sign", {"observations": counts, "pgx": pgx},
                                   order(medicationCodeableConcept=AZA_CC))
              if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    assert card["indicator"] == indicator and card["summary"].startswith(said)


def test_a_thiopurine_order_with_no_current_count_asks_for_one_and_a_do_not_start_recommends_no_dose():
    from leukodx.engine.orders import OrderInput
    eng = get_engine()
    old = eng.assess({"id": "t", "as_of": "2026-12-01", "patient": {"age_years": 40},
                      "labs": [{"test": "anc", "value": 3.0, "unit": "10^9/L", "time": "2024-01-01T08:00:00Z"}]})
    [check] = eng.check_orders([OrderInput(key="o", name="azathioprine", indication="Crohn's disease")], old)
    assert check.priority == "warning" and check.summary.startswith("No current blood count: take a CBC")
    severe = eng.assess({"id": "t", "as_of": "2026-12-01", "patient": {"age_years": 40, "weight_kg": 70},
                         "labs": [{"test": "anc", "value": 0.3, "unit": "10^9/L", "time": "2026-12-01T08:00:00Z"}],
                         "history": {"tpmt": "intermediate", "nudt15": "normal"}})
    [check] = eng.check_orders([OrderInput(key="o", name="azathioprine", dose={"value": 250, "unit": "mg/d"},
                                           weight_kg=70, indication="Crohn's disease")], severe)
    assert check.priority == "critical" and check.dose_change is not None and check.adjust != "recommended"


def test_a_draft_referencing_a_medication_by_its_bundle_fullurl_is_checked(client):
    """draftOrders with the azathioprine Medication as a Bundle entry referenced by its urn:uuid fullUrl: 'leukodx
    could not tell which drug is ordered; not checked' for a TPMT poor metabolizer."""
    url = f"urn:uuid:{uuid.uuid4()}"
    draft = order(medicationReference={"reference": url})
    pgx = bundle(genotype("*3A/*3A"), kind="searchset")
    body = {"hookInstance": str(uuid.uuid4()), "hook": "order-sign",
            "context": {"userId": "Practitioner/1", "patientId": "p1", "draftOrders": {
                "resourceType": "Bundle", "type": "collection",
                "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": draft},
                          {"fullUrl": url, "resource": {**AZA_MED, "id": "m1"}}]}},
            "prefetch": {"patient": patient(), "observations": normal_cbc(), "pgx": pgx, "medicationRequests": None,
                         "medicationStatements": None, "conditions": None}}
    cards = client.post("/cds-services/leukodx-order-sign", json=body).json()["cards"]
    assert [c["indicator"] for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx"] == ["critical"]
    assert not [c for c in cards if "could not tell which drug" in c["summary"]]


@pytest.mark.parametrize("mg,updated", [(150, True), (-200, False), (1e308, False)])
def test_a_dose_update_states_the_new_dose_and_never_scales_an_impossible_one(client, mg, updated):
    """A TPMT intermediate's azathioprine 150 mg a day: the update's text had been only 'one ... of the daily dose
    (leukodx order check)', the prescriber's text lost; -200 mg had become a recommended -160 mg."""
    draft = order(medicationCodeableConcept=AZA_CC, dosageInstruction=[{"text": "150 mg daily with food", "doseAndRate":
                                                                        [{"doseQuantity": {"value": mg, "unit": "mg",
                                                                                           "system": UCUM, "code": "mg"}}]}])
    pgx = bundle(genotype("TPMT *1/*3A; NUDT15 *1/*1", code="93193-1"), kind="searchset")
    [card] = [c for c in hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx}, draft)
              if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    updates = [a["resource"] for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "update"]
    assert bool(updates) is updated
    if updated:
        [new] = updates
        value = new["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"]
        assert 0 < value < 150 and new["dosageInstruction"][0]["text"].startswith(f"{value:g} mg")
        assert new["dosageInstruction"][0]["text"].endswith("Before: 150 mg daily with food")


def test_a_dose_update_removes_what_restates_the_old_dose(client):
    """Order red-team round 31: the recommended update set a new dose but kept "Take 3 tablets (150 mg) by mouth once
    daily" as the patient's instructions (the label) and the quantity to dispense for the old dose."""
    draft = order(medicationCodeableConcept=AZA_CC, dispenseRequest={"quantity": {"value": 90}, "numberOfRepeatsAllowed": 1},
                  dosageInstruction=[{"text": "150 mg daily", "patientInstruction": "Take 3 tablets (150 mg) by mouth once daily",
                                      "doseAndRate": [{"doseQuantity": {"value": 150, "unit": "mg", "system": UCUM,
                                                                        "code": "mg"}}]}])
    pgx = bundle(genotype("TPMT *1/*3A; NUDT15 *1/*1", code="93193-1"), kind="searchset")
    [card] = [c for c in hook_call(client, "order-sign", {"observations": normal_cbc(), "pgx": pgx}, draft)
              if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    [new] = [a["resource"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "update"]
    instruction = new["dosageInstruction"][0]
    assert "patientInstruction" not in instruction and "quantity" not in new["dispenseRequest"]
    assert new["dispenseRequest"]["numberOfRepeatsAllowed"] == 1
    assert "patientInstruction and dispenseRequest.quantity removed: written for the old dose" in instruction["text"]


def test_a_neutrophil_percentage_with_no_white_count_says_the_anc_cannot_be_derived(client):
    """Neutrophils 4 % drawn today and no WBC or ANC had given no card at all, as if nothing had been drawn: the
    ANC cannot be derived, and the card says so (neither found nor ruled out) and offers the CBC with differential."""
    [card] = patient_view(client, observations=bundle(obs("770-8", 4, "%", t=RECENT), kind="searchset"))
    assert card["summary"] == "Neutrophil percentage with no WBC: the ANC cannot be derived; CBC with differential needed"
    assert "a neutrophil percentage of 4 %" in card["detail"] and "neither found nor ruled out" in card["detail"]
    assert card["suggestions"][0]["label"].startswith("Order a CBC with differential")
    # the order the step asks for: a manual differential (the automated panel had been ordered under "manual")
    order = card["suggestions"][0]["actions"][0]["resource"]
    assert order["code"]["coding"][0]["code"] == "57782-5" and "manual differential" in order["code"]["text"]
    [card] = patient_view(client, observations=bundle(obs("770-8", 4, "%", t=RECENT), obs("6690-2", 0.9, t=RECENT),
                                                      kind="searchset"))      # with its WBC: the ANC of 0.04
    assert card["indicator"] == "critical" and "ANC 0.04" in card["summary"]


def test_a_patient_prefetch_of_another_patient_is_named_first_on_the_card(client):
    """The EHR's `patient` prefetch held Patient/p2 for a call about p1: it was set aside with a warning no one
    saw (the card said nothing), although it means the EHR's other prefetches may not be this patient's either."""
    cards = patient_view(client, patient=patient("p2"), observations=severe_cbc())
    assert cards[0]["indicator"] == "critical"
    assert cards[0]["detail"].startswith("**Check first:** The Patient resource sent (Patient/p2) is not Patient/p1")
    [own] = [c for c in patient_view(client, observations=severe_cbc()) if c["indicator"] == "critical"]
    assert "Check first" not in own["detail"]


@pytest.mark.parametrize("subject,other", [("Patient/p2", True), ("https://ehr.example/fhir/Patient/p2/_history/3", True),
                                           ("Group/g1", True), ("Patient/p1", False), ("Patient/p1 ", False),
                                           ("https://ehr.example/fhir/Patient/p1", False), (None, False)])
def test_a_draft_order_for_another_patient_is_never_checked_against_this_one(client, subject, other):
    """A draft azathioprine whose subject is Patient/p2, in a call about p1 (TPMT poor): it had been checked against
    p1's genotype, a critical "do not start" with a delete action. It is named, as a warning, and not checked. A
    draft naming no subject is the hook's patient's, checked and counted (it had been checked but left out of the
    assessment)."""
    draft = order(medicationCodeableConcept={"text": "azathioprine 50 mg"},
                  subject={"reference": subject} if subject else None)
    cards = hook_call(client, "order-sign", {"observations": normal_cbc(),
                                            "pgx": bundle(genotype("*3A/*3A"), kind="searchset")}, draft)
    pgx = [c for c in cards if c["source"]["topic"]["code"] == "thiopurine-pgx"]
    named = [c for c in cards if "not for this patient: not checked" in c["summary"]]
    assert (len(pgx), len(named)) == ((0, 1) if other else (1, 0))
    if other:
        shown = subject.replace("https://", "https[:]//")        # a URL in a card's text is never a link
        assert named[0]["indicator"] == "warning" and shown in named[0]["summary"]


def _coded_result(code, value, **extra):
    res = genotype(None, code=code, **extra)
    del res["valueString"]
    return {**res, **value}


@pytest.mark.parametrize("result,expected", [
    # a phenotype as a LOINC answer with no display (the Genomics Reporting IG's value set): had been "status unknown"
    (_coded_result("79713-4", {"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA9657-3"}]}}),
     {"tpmt": "poor"}),
    (_coded_result("79713-4", {"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA10317-8"}]}}),
     {"tpmt": "intermediate"}),
    # the IG's genotype with the gene as its HGNC id alone and the allele call as a PharmVar code
    (_coded_result("84413-4", {"valueCodeableConcept": {"coding": [{"system": "http://www.pharmvar.org", "code": "*3A/*3A"}]},
                               "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "48018-6"}]},
                                              "valueCodeableConcept": {"coding": [
                                                  {"system": "http://www.genenames.org/geneId", "code": "HGNC:12014"}]}}]}),
     {"tpmt": "*3A/*3A"}),
    # a diplotype and the phenotype it gives, in two components: they agree (they had been called a disagreement)
    (_coded_result("80738-8", {"component": [{"code": {"text": "Diplotype"}, "valueString": "*1/*3A"},
                                             {"code": {"text": "Phenotype"}, "valueString": "Intermediate metabolizer"}]}),
     {"tpmt": "*1/*3A"}),
    (_coded_result("80738-8", {"component": [{"code": {"text": "Diplotype"}, "valueString": "*1/*3A"},
                                             {"code": {"text": "Phenotype"}, "valueString": "Poor metabolizer"}]}),
     {}),                                                                   # they disagree: named, not used
])
def test_tpmt_results_coded_without_text_are_read(result, expected):
    assert pgx_results(get_engine().kb, bundle(patient(), result), "p1") == expected


@pytest.mark.parametrize("value,duffy", [("Fy(a-b-) Duffy null", True), ("Fy(a-,b-)", True), ("Duffy negative", True),
                                         ("Fy(a\u2212b\u2212)", True), ("Fy(a\u2013b\u2013)", True),
                                         ("Fya negative, Fyb negative", True), ("FY:-1,-2", True),
                                         ("Fy(a+b-)", False), ("Fy(a-b+)", False), ("FY:1,-2", False),
                                         ("Fya positive, Fyb negative", False), ("see report", None)])
def test_a_duffy_blood_group_result_gives_the_duffy_status(value, duffy):
    """A Fy(a-b-) result had been ignored: a Duffy-null patient's ANC of 1.2 on clozapine got the general population's
    "do not start", and a Duffy test was suggested again. A result saying neither is named, the status left unknown."""
    result = {"resourceType": "Observation", "id": "fy", "status": "final", "subject": {"reference": "Patient/p1"},
              "effectiveDateTime": "2025-10-29", "code": {"text": "Duffy blood group phenotype"},
              "valueCodeableConcept": {"text": value}}
    m = mapped(patient(), obs("751-8", 1.2, t=RECENT), result, as_of=datetime.now(timezone.utc).date())
    assert m.case["patient"].get("duffy_null") is duffy
    assert any("Duffy result 'see report' was not understood" in w for w in m.warnings) is (duffy is None)


@pytest.mark.parametrize("days_ago,alert", [(1, True), (0, True), (10, False)])
def test_a_dose_given_yesterday_means_the_patient_is_on_the_drug(client, days_ago, alert):
    """Clozapine 100 mg given yesterday (MedicationAdministration, completed), ANC 0.8: the course had been read as
    ended with that dose, and the label's ANC alert for a patient on clozapine was not raised. Ten days ago: a
    course that stopped (recent, not taken)."""
    given = (datetime.now(timezone.utc) - timedelta(days=days_ago)).strftime("%Y-%m-%dT07:00:00Z")
    admin = {"resourceType": "MedicationAdministration", "id": "ma", "status": "completed",
             "subject": {"reference": "Patient/p1"}, "effectiveDateTime": given,
             "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2626", "display": "clozapine"}]}}
    cards = patient_view(client, medicationRequests=bundle(admin, kind="searchset"),
                         observations=bundle(obs("6690-2", 2.9, t=RECENT), obs("751-8", 0.8, t=RECENT), kind="searchset"))
    assert ("Clozapine with ANC below the label threshold" in cards[0]["summary"]) is alert


def test_a_dispense_still_in_supply_does_not_restart_a_course_its_prescriber_stopped(client):
    """Sulfasalazine dispensed 20 days ago for 30 days, and its prescription stopped 10 days ago; ANC 0.6: the supply
    had made it "taken now" and raised an urgent hold again. The prescriber's stop ends the course."""
    day = lambda n: (datetime.now(timezone.utc) - timedelta(days=n)).date().isoformat()   # noqa: E731
    ssz = {"coding": [{"system": RXNORM, "code": "9524", "display": "sulfasalazine"}]}
    dispense = {"resourceType": "MedicationDispense", "id": "md", "status": "completed",
                "subject": {"reference": "Patient/p1"}, "whenHandedOver": day(20), "daysSupply": {"value": 30},
                "medicationCodeableConcept": ssz}
    rx = {"resourceType": "MedicationRequest", "id": "mr", "status": "stopped", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "authoredOn": day(60), "medicationCodeableConcept": ssz,
          "dispenseRequest": {"validityPeriod": {"start": day(60), "end": day(10)}}}
    m = mapped(patient(), obs("751-8", 0.6, t=RECENT), dispense, rx, as_of=datetime.now(timezone.utc).date())
    given = next(med for med in m.case["medications"] if med.get("status") == "completed" and med["start"] == day(20))
    assert given["end"] >= day(10) and all(med["status"] != "active" for med in m.case["medications"])


def test_a_value_dated_by_the_day_beside_a_timed_one_of_the_same_test_is_named(client):
    """A WBC of 1.8 dated by the day alone and a WBC of 7.0 at 07:00 the same day: no card had named either; which
    is the later cannot be told. The timed one is used, the other named as not assessed."""
    day = RECENT[:10]
    wbc_day = obs("6690-2", 1.8, t=day)
    cards = patient_view(client, observations=bundle(wbc_day, obs("6690-2", 7.0, t=RECENT), obs("751-8", 4.0, t=RECENT),
                                                     kind="searchset"))
    assert f"wbc 1.8 10*3/uL is dated {day} with no time of day" in cards[0]["detail"]


def test_every_version_of_an_observation_entered_in_error_is_withdrawn():
    """Red-team round 19: an EHR sending an Observation's history (version 1 final, ANC 0.3; version 2 entered-in-error)
    had the retracted 0.3 drive a critical card. FHIR's entered-in-error is the resource, every version of it."""
    v1 = obs("751-8", 0.3, oid="same", meta={"versionId": "1", "lastUpdated": "2025-01-10T09:00:00Z"})
    v2 = obs("751-8", 0.3, oid="same", status="entered-in-error",
             meta={"versionId": "2", "lastUpdated": "2025-01-10T11:00:00Z"})
    m = mapped(patient(), obs("6690-2", 3.0), v1, v2)
    assert values(m, "751-8") == [] and any("another version of it" in n.reason for n in m.not_assessed)
    other = obs("751-8", 2.1, oid="other")             # another Observation, not a version of it: kept
    assert values(mapped(patient(), obs("6690-2", 3.0), other, v2), "751-8") == [2.1]
    # a version after the error is the resource's current state (round 21: it had been withdrawn too)
    v3 = obs("751-8", 0.4, oid="same", meta={"versionId": "3", "lastUpdated": "2025-01-10T12:00:00Z"})
    assert values(mapped(patient(), obs("6690-2", 3.0), v1, v2, v3), "751-8") == [0.4]


def test_the_later_version_of_one_result_wins_over_an_earlier_status():
    """Red-team round 21: version 10 (final, 0.3) lost to version 9 (amended, 2.5) of the same Observation, the status
    deciding: the later version is the resource's current state."""
    v9 = obs("751-8", 2.5, oid="anc1", status="amended", meta={"versionId": "9"})
    v10 = obs("751-8", 0.3, oid="anc1", meta={"versionId": "10"})
    for order in ((v9, v10), (v10, v9)):
        assert values(mapped(patient(), obs("6690-2", 3.0), *order), "751-8") == [0.3]
    other = obs("751-8", 2.5, oid="anc2", status="amended", meta={"versionId": "9"})   # another result: status rules
    assert values(mapped(patient(), obs("6690-2", 3.0), other, v10), "751-8") == [2.5]
