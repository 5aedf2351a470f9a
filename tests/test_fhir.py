"""FHIR R4 -> case mapping (leukodx.api.fhir): real examples from tests/fixtures/fhir-examples, then synthetic
resources for each rule of the mapping (references, patients, statuses, units, limits)."""
from __future__ import annotations

import copy
import json
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leukodx.api.fhir import MAX_DEPTH, MAX_RESOURCES, FhirMappingError, bundle_to_case, resources_from
from leukodx.engine import CaseError, assess, get_engine
from leukodx.engine.errors import Problem

from conftest import FIXTURES

FHIR = FIXTURES / "fhir-examples"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def load(rel: str):
    path = FHIR / rel
    if not path.is_file():
        pytest.skip(f"{path} is absent (tests/fixtures/fhir-examples is part of the repository)")
    return json.loads(path.read_text(encoding="utf-8"))


def resolved_test(lab: dict) -> str:
    """The test the engine resolves a mapped lab's LOINC code to (the case carries the code only)."""
    return get_engine().kb.loinc[lab["loinc"]]


def lab_of(case: dict, test: str) -> list[dict]:
    return [lab for lab in case["labs"] if resolved_test(lab) == test]


def assessed(assessment, test: str):
    return [lab for lab in assessment.labs if lab.test == test and not lab.derived]


def has(warnings: list[str], *parts: str) -> bool:
    return any(all(p in w for p in parts) for w in warnings)


# ---------------------------------------------------------------------------------------------
# Real examples


def test_hl7_ghp_differential_is_moderate_neutropenia():
    case, warnings = bundle_to_case(load("hl7/r4-core-examples/diagnosticreport-example-ghp.json"))
    wbc, anc = lab_of(case, "wbc"), lab_of(case, "anc")
    assert wbc == [{"loinc": "6690-2", "value": 4.6, "unit": "10*9/L",
                    "time": "2015-08-16T06:40:17+00:00", "lln": 4.0,
                    "specimen": "Specimen/ltt", "ref": "Observation/r7"}]
    assert anc[0]["value"] == 0.9 and anc[0]["unit"] == "10*9/L"
    assert [lab_of(case, t)[0]["value"] for t in ("neutrophils_pct", "lymphocytes_pct", "monocytes_pct",
                                                  "eosinophils_pct", "basophils_pct")] == [20, 20, 20, 20, 20]
    assert lab_of(case, "hemoglobin")[0] == {"loinc": "718-7", "value": 176, "unit": "g/L",
                                             "time": "2015-08-16T06:40:17+00:00", "lln": 135,
                                             "specimen": "Specimen/ltt", "ref": "Observation/r1"}
    assert not has(warnings, "different units")             # 'x10*9/L' and '10*9/L' are the same unit
    assert has(warnings, "took the time of the report or panel", "Observation/p2")
    assert has(warnings, "No Patient resource")
    assert has(warnings, "Observations of codes leukodx does not use", "LOINC 789-8")   # RBC, chemistry, urine
    assert set(case) == {"id", "patient", "labs"}
    a = assess(case)
    assert a.risk_tier.tier == "moderate"
    assert a.risk_tier.anc == pytest.approx(0.9)
    assert assessed(a, "wbc")[0].value == pytest.approx(4.6)
    assert assessed(a, "hemoglobin")[0].value == pytest.approx(17.6)


def test_us_core_311_unit_with_system_but_no_code():
    files = ["patient-example.json", "cbc.json", "neutrophils.json", "hemoglobin.json", "erythrocytes.json",
             "mchc.json"]
    case, warnings = bundle_to_case([load(f"hl7/us-core-3.1.1/{f}") for f in files])
    assert lab_of(case, "neutrophils_pct") == [{"loinc": "770-8", "value": 40.0,
                                                "unit": "%", "time": "2005-07-05", "lln": 37.0,
                                                "specimen": "DiagnosticReport/cbc", "ref": "Observation/neutrophils"}]
    assert lab_of(case, "hemoglobin")[0]["unit"] == "g/dL"
    assert case["patient"] == {"sex": "female", "age_years": 18, "ancestry": "Mixed; Hispanic or Latino"}
    assert case["id"] == "example"
    a = assess(case)
    assert a.risk_tier.tier == "unknown"                  # a percentage without a WBC gives no ANC
    assert assessed(a, "neutrophils_pct")[0].value == 40.0


def test_us_core_master_cbc_and_medication_references():
    files = ["patient-example.json", "diagnosticreport-cbc.json", "observation-cbc-leukocytes.json",
             "observation-cbc-hemoglobin.json", "observation-cbc-platelets.json", "observation-cbc-mcv.json",
             "medicationrequest-referenced-oral-axid.json", "uscore-med2.json",
             "medicationrequest-contained-oral-axid.json", "condition-duodenal-ulcer.json"]
    case, warnings = bundle_to_case([load(f"hl7/us-core-master/{f}") for f in files], as_of=date(2016, 9, 1))
    assert case["as_of"] == "2016-09-01"
    assert lab_of(case, "wbc")[0]["value"] == 10 and lab_of(case, "wbc")[0]["unit"] == "10*3/uL"
    axid = {"name": "Nizatidine 15 MG/ML Oral Solution [Axid]", "rxnorm": "582620", "status": "active",
            "start": "2008-04-05", "dose": "10 mL bid"}
    referenced, contained = case["medications"]
    assert referenced == {**axid, "indication": "Active Duodenal Ulcer"}   # reasonReference -> the Condition
    assert contained == {**axid, "indication": "Active Duodenal Ulcer"}    # reasonCode text
    assert case["history"] == {"conditions": ["Active Duodenal Ulcer"]}
    a = assess(case)
    assert assessed(a, "wbc")[0].value == pytest.approx(10.0)


def test_belgian_macsys_per_microlitre_counts_are_normalised():
    case, warnings = bundle_to_case(load("units/hl7-be-lab/Macsys__815333044__81365677998_815333044_2.json"))
    assert lab_of(case, "wbc") == [{"loinc": "6690-2", "value": 3810, "unit": "/uL",
                                    "time": "2021-11-04T00:00:00+01:00", "lln": 3720,
                                    "specimen": "Specimen/002815333044", "ref": "Observation/Observation.1.0.0.8"}]
    assert case["patient"]["sex"] == "male" and case["patient"]["age_years"] == 81
    a = assess(case)
    wbc = assessed(a, "wbc")[0]
    assert (wbc.value, wbc.unit, wbc.lln) == (pytest.approx(3.81), "10^9/L", pytest.approx(3.72))
    assert wbc.original.value == 3810 and wbc.original.unit == "/uL"
    assert (wbc.original.loinc, wbc.original.test) == ("6690-2", None)   # the engine resolved the code, once
    assert a.risk_tier.tier == "normal" and a.risk_tier.anc == pytest.approx(1.791)


def test_belgian_molis_thousands_per_cubic_millimetre():
    case, warnings = bundle_to_case(load("units/hl7-be-lab/examples_molis_1A.json"))
    assert lab_of(case, "wbc")[0]["unit"] == "10*3/mm3" and lab_of(case, "wbc")[0]["value"] == 40.5
    assert lab_of(case, "wbc")[0]["time"] == "2023-07-12T14:54:00+02:00"   # from the DiagnosticReport
    assert has(warnings, "took the time of the report or panel", "DiagnosticReport/")
    a = assess(case)
    assert assessed(a, "wbc")[0].value == pytest.approx(40.5)
    assert a.risk_tier.anc == pytest.approx(0.6) and a.risk_tier.tier == "moderate"


def test_belgian_mips_scenario2_code_without_unit_text():
    case, warnings = bundle_to_case(load("units/hl7-be-lab/MIPS__UZG_scenario2__2_2_bundle_2203161329.json"))
    assert lab_of(case, "wbc") == [{"loinc": "6690-2", "value": 35, "unit": "10*3/uL",
                                    "time": "2022-01-21T09:53:51+01:00", "lln": 6,
                                    "specimen": "Specimen/220121100303", "ref": "Observation/389059664"}]
    assert has(warnings, "LOINC 718-7 (hemoglobin)", "status 'registered'")
    a = assess(case)
    assert assessed(a, "wbc")[0].value == pytest.approx(35.0)


def test_belgian_mips_scenario4_no_values_is_a_clear_error():
    with pytest.raises(FhirMappingError) as err:
        bundle_to_case(load("units/hl7-be-lab/MIPS__UZG_scenario4__4_1_bundle_2203251701.json"))
    problems = err.value.problems
    assert problems[0].loc == "" and "no lab value" in problems[0].msg
    wbc = [p for p in problems if p.loc == "entry[45].resource"]
    assert wbc and "wbc" in wbc[0].msg and "no valueQuantity.value" in wbc[0].msg
    assert any("anc (LOINC 26499-4)" in p.msg for p in problems)


def test_scenario4_observations_without_value_beside_a_good_one_give_a_case():
    bundle = load("units/hl7-be-lab/MIPS__UZG_scenario4__4_1_bundle_2203251701.json")
    for entry in bundle["entry"]:                     # make the WBC and ANC final, still without a value
        if entry["resource"].get("id") in ("389060459", "389060462"):
            entry["resource"]["status"] = "final"
    bundle["entry"].append({"resource": obs("751-8", 1.2, code="10*9/L", time="2022-03-25T16:00:00+01:00",
                                            subject="Patient/405636")})
    case, warnings = bundle_to_case(bundle)
    assert [resolved_test(lab) for lab in case["labs"]] == ["anc"]
    assert has(warnings, "Observation/389060459", "LOINC 6690-2 (wbc)", "no valueQuantity.value", "skipped")
    assert assess(case).risk_tier.tier == "mild"


def test_australian_bundle_code_only_units_urn_uuid_subjects_contained_medications():
    case, warnings = bundle_to_case(load("units/au-fhir-test-data/Bundle-aups-referral-endoconsult-autogen.json"),
                                    as_of=date(2024, 12, 1))
    assert lab_of(case, "wbc") == [{"loinc": "6690-2", "value": 8.0, "unit": "10*9/L",
                                    "time": "2024-06-12", "ref": "entry[53].resource"}]
    assert case["patient"] == {"sex": "female", "age_years": 39}
    names = [m["name"] for m in case["medications"]]
    assert names[:2] == ["Nitrofurantoin", "Metformin"]         # contained Medication via '#id'
    assert case["medications"][0]["indication"] == "Urinary tract infection (UTI)"   # reasonReference urn:uuid
    assert "start" not in case["medications"][1]               # '2024' is a partial date
    assert has(warnings, "effectivePeriod.start '2024' is a partial date")
    assert "Gestational diabetes" in case["history"]["conditions"]
    a = assess(case)
    assert a.risk_tier.tier == "unknown"
    assert assessed(a, "hemoglobin")[0].value == pytest.approx(12.5)


SYNTHEA = sorted(p.name for p in (FHIR / "synthea").glob("*.json")) or ["absent.json"]


@pytest.mark.parametrize("name", SYNTHEA)
def test_every_synthea_bundle_maps_and_assesses(name):
    case, warnings = bundle_to_case(load(f"synthea/{name}"))
    json.dumps(case, allow_nan=False)
    assert case["patient"]["sex"] in ("female", "male") and case["patient"]["age_years"] >= 0
    assert case["labs"], "every stored Synthea bundle has CBC values"
    if not lab_of(case, "wbc"):
        return
    try:
        a = assess(case)
    except CaseError as e:           # only the engine's plausibility guard may refuse Synthea's values
        assert all("is not plausible" in p.msg for p in e.problems), e.problems
        return
    assert a.risk_tier.tier == "unknown"    # Synthea has WBC, Hb, MCV, platelets: no differential, no ANC


# ---------------------------------------------------------------------------------------------
# Synthetic resources


def obs(loinc, value=None, *, unit=None, code=None, system=UCUM, time="2025-03-10T08:00:00Z", status="final",
        subject=None, rid=None, low=None, comparator=None):
    q = {}
    if value is not None:
        q["value"] = value
    if unit is not None:
        q["unit"] = unit
    if code is not None:
        q["code"] = code
        q["system"] = system
    if comparator:
        q["comparator"] = comparator
    r = {"resourceType": "Observation", "status": status, "code": {"coding": [{"system": LOINC, "code": loinc}]}}
    if rid:
        r["id"] = rid
    if q:
        r["valueQuantity"] = q
    if time:
        r["effectiveDateTime"] = time
    if subject:
        r["subject"] = {"reference": subject}
    if low is not None:
        r["referenceRange"] = [{"low": low}]
    return r


def bundle(*resources, kind="collection", urls=None):
    entries = []
    for i, r in enumerate(resources):
        e = {"resource": r}
        if urls and urls[i]:
            e["fullUrl"] = urls[i]
        entries.append(e)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def med_request(**fields):
    return {"resourceType": "MedicationRequest", "status": "active", "intent": "order", **fields}


AZA = {"coding": [{"system": RXNORM, "code": "1256", "display": "azathioprine"}], "text": "Imuran 50 mg tablet"}
WBC = obs("6690-2", 2.1, code="10*9/L")


def test_medication_reference_to_a_contained_medication():
    mr = med_request(id="m1", contained=[{"resourceType": "Medication", "id": "aza", "code": AZA}],
                     medicationReference={"reference": "#aza"}, authoredOn="2025-01-20")
    case, warnings = bundle_to_case(bundle(WBC, obs("751-8", 0.4, code="10*9/L"), mr))
    assert case["medications"] == [{"name": "Imuran 50 mg tablet", "rxnorm": "1256", "status": "active",
                                     "start": "2025-01-20"}]
    assert not has(warnings, "does not resolve")
    a = assess(case)
    assert a.risk_tier.tier == "severe"
    assert any("azathioprine" in c.agents for c in a.causes)


def test_medication_reference_to_a_bundled_medication_by_id_and_by_full_url():
    med = {"resourceType": "Medication", "id": "m-aza", "code": AZA}
    by_id = med_request(medicationReference={"reference": "Medication/m-aza"})
    by_url = med_request(medicationReference={"reference": "urn:uuid:0b5c7f2e-1111-4a1a-9e00-000000000001"})
    absolute = med_request(medicationReference={"reference": "https://ehr.example/fhir/Medication/m-aza/_history/3"})
    data = bundle(WBC, med, by_id, by_url, absolute,
                  urls=[None, "urn:uuid:0b5c7f2e-1111-4a1a-9e00-000000000001", None, None, None])
    case, warnings = bundle_to_case(data)
    assert [m["rxnorm"] for m in case["medications"]] == ["1256", "1256", "1256"]
    assert not has(warnings, "does not resolve")


def test_unresolvable_medication_reference_warns_and_uses_its_display():
    with_display = med_request(id="a", medicationReference={"reference": "Medication/nowhere", "display": "Imuran"})
    bare = med_request(id="b", medicationReference={"reference": "#missing"})
    case, warnings = bundle_to_case(bundle(WBC, with_display, bare))
    assert case["medications"] == [{"name": "Imuran", "status": "active"}]
    assert has(warnings, "MedicationRequest/a", "'Medication/nowhere' does not resolve", "display 'Imuran'")
    assert has(warnings, "MedicationRequest/b", "does not resolve")
    assert has(warnings, "MedicationRequest/b", "neither a name nor an RxNorm or ATC code; skipped")


def test_medication_statuses_and_draft_filtering():
    meds = [med_request(id=s, status=s, medicationCodeableConcept={"text": f"drug {s}"},
                        authoredOn="2025-01-01",
                        dispenseRequest={"validityPeriod": {"end": "2025-02-01"}})
            for s in ("active", "on-hold", "completed", "stopped", "cancelled", "entered-in-error", "draft")]
    case, warnings = bundle_to_case(bundle(WBC, *meds))
    got = {m["name"]: (m["status"], m.get("end")) for m in case["medications"]}
    assert got == {"drug active": ("active", None), "drug on-hold": ("active", None),
                   "drug completed": ("completed", "2025-02-01"), "drug stopped": ("stopped", "2025-02-01")}
    # cancelled: "withdrawn before any administrations have occurred" (FHIR R4): not taken, and said so
    assert has(warnings, "MedicationRequest/cancelled", "withdrawn before any dose", "skipped")
    assert has(warnings, "MedicationRequest/draft", "draft", "include_draft=True")
    assert has(warnings, "MedicationRequest/entered-in-error", "skipped")
    with_draft, _ = bundle_to_case(bundle(WBC, *meds), include_draft=True)
    # a draft being signed is not taken yet: it starts at the case date, whatever day it was written
    assert {"name": "drug draft", "status": "active", "start": "2025-03-10"} in with_draft["medications"]


def test_medication_statement_fields_dose_and_indication():
    ms = {"resourceType": "MedicationStatement", "status": "completed",
          "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "121191", "display": "rituximab"}]},
          "effectivePeriod": {"start": "2024-01-05", "end": "2024-06-01"},
          "dosage": [{"text": "375 mg/m2 weekly"}], "reasonCode": [{"coding": [{"display": "Follicular lymphoma"}]}]}
    per_day = med_request(medicationCodeableConcept={"text": "azathioprine"},
                          dosageInstruction=[{"text": "150 mg daily", "doseAndRate": [
                              {"doseQuantity": {"value": 150, "unit": "mg/d", "system": UCUM, "code": "mg/d"}}]}])
    per_kg = med_request(medicationCodeableConcept={"text": "mercaptopurine"},
                         dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 1.5, "code": "mg/kg/d",
                                                                               "system": UCUM}}]}])
    per_take = med_request(medicationCodeableConcept={"text": "methotrexate"},
                           dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 15, "code": "mg",
                                                                                 "system": UCUM}}]}])
    ucum_per_kg = med_request(medicationCodeableConcept={"text": "thioguanine"},
                              dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 2, "code": "mg/(kg.d)",
                                                                                    "system": UCUM}}]}])
    per_day_text = med_request(medicationCodeableConcept={"text": "clozapine"},
                               dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 2, "code": "/d",
                                                                                     "system": UCUM}}]}])
    case, _ = bundle_to_case(bundle(WBC, ms, per_day, per_kg, per_take, ucum_per_kg, per_day_text))
    ritux, aza, mp, mtx, tg, cloz = case["medications"]
    assert tg["dose"] == {"value": 2, "unit": "mg/(kg.d)"}
    assert cloz["dose"] == "2 /d"                         # a frequency is not a dose
    assert ritux == {"name": "rituximab", "rxnorm": "121191", "status": "completed", "start": "2024-01-05",
                     "end": "2024-06-01", "dose": "375 mg/m2 weekly", "indication": "Follicular lymphoma"}
    assert aza["dose"] == {"value": 150, "unit": "mg/d"}
    assert mp["dose"] == {"value": 1.5, "unit": "mg/kg/d"}
    assert mtx["dose"] == "15 mg"                         # a mass per take is left as text
    assess(case)


def test_medications_started_after_the_case_date_are_left_out():
    later = med_request(id="later", medicationCodeableConcept={"text": "clozapine"}, authoredOn="2025-04-01")
    case, warnings = bundle_to_case(bundle(WBC, later))
    assert "medications" not in case
    assert has(warnings, "1 medication started after 2025-03-10", "MedicationRequest/later")
    case, _ = bundle_to_case(bundle(WBC, later), as_of=date(2025, 5, 1))
    assert case["medications"][0]["name"] == "clozapine"
    assess(case)


def test_urn_uuid_subjects_and_patient_selection():
    p1, p2 = "urn:uuid:11111111-1111-4111-8111-111111111111", "urn:uuid:22222222-2222-4222-8222-222222222222"
    pat1 = {"resourceType": "Patient", "gender": "female", "birthDate": "1990-03-11"}
    pat2 = {"resourceType": "Patient", "id": "other", "gender": "male", "birthDate": "1950-01-01"}
    data = bundle(pat1, pat2, obs("6690-2", 2.0, code="10*9/L", subject=p1),
                  obs("6690-2", 9.0, code="10*9/L", subject=p2), obs("751-8", 0.8, code="10*9/L", subject=p1),
                  obs("751-8", 5.0, code="10*9/L", subject="Patient/other"),
                  urls=[p1, p2, None, None, None, None])
    case, warnings = bundle_to_case(data, patient_id="11111111-1111-4111-8111-111111111111",
                                    as_of=date(2025, 3, 10))
    assert [(resolved_test(lab), lab["value"]) for lab in case["labs"]] == [("wbc", 2.0), ("anc", 0.8)]
    assert case["patient"] == {"sex": "female", "age_years": 34}
    assert has(warnings, "2 Patient resources")
    assert has(warnings, "2 Observation, medication or Condition resources of another patient")
    other, _ = bundle_to_case(data, patient_id="Patient/other")
    assert [(resolved_test(lab), lab["value"]) for lab in other["labs"]] == [("wbc", 9.0), ("anc", 5.0)]
    assert other["patient"]["sex"] == "male" and other["id"] == "other"
    first, warnings = bundle_to_case(data)                # no patient_id: the first patient, and only its data
    assert [lab["value"] for lab in first["labs"]] == [2.0, 0.8]
    assert has(warnings, "used the first")


def test_patient_demographics_weight_and_ancestry():
    pat = {"resourceType": "Patient", "id": "p", "gender": "male", "birthDate": "1980",
           "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                          "extension": [{"url": "ombCategory", "valueCoding": {"display": "Black or African American"}}]}]}
    weights = [obs("29463-7", 180, unit="lb", code="[lb_av]", time="2025-03-01"),
               obs("29463-7", 70000, unit="g", code="g", time="2025-01-01"),
               obs("29463-7", 50, code="kg", time="2025-04-01")]           # after as_of: not the latest then
    case, warnings = bundle_to_case(bundle(pat, WBC, *weights), as_of=date(2025, 3, 10))
    assert case["patient"] == {"sex": "male", "age_years": 45, "weight_kg": pytest.approx(81.6466),
                               "ancestry": "Black or African American"}
    assert has(warnings, "birthDate '1980' is a partial date")
    a = assess(case)
    assert a.case_id == "p"


def test_a_comparator_is_sent_as_a_bound_and_a_count_below_it_is_judged_below_it():
    """ANC '<0.5' had been graded as 0.5 (moderate, no agranulocytosis alert; FHIR red-team)."""
    case, warnings = bundle_to_case(bundle(obs("751-8", 0.1, code="10*9/L", comparator="<", rid="anc1")))
    assert (case["labs"][0]["value"], case["labs"][0]["comparator"]) == (0.1, "<")
    assert has(warnings, "Observation/anc1", "reported as <0.1 10*9/L", "a bound", "judged as below it")
    case, warnings = bundle_to_case(bundle(obs("751-8", 2.5, code="10*9/L", comparator=">=", rid="anc2")))
    assert case["labs"][0]["comparator"] == ">=" and has(warnings, "Observation/anc2", ">=2.5", "judged as the bound")
    case, _ = bundle_to_case(bundle(obs("6690-2", 1.2, code="10*9/L"),
                                    obs("751-8", 0.5, code="10*9/L", comparator="<", rid="anc3")))
    a = assess(case)
    assert a.risk_tier.tier == "severe" and "agranulocytosis" in {x.id for x in a.alerts}


def test_unit_and_code_that_disagree_leave_the_value_out_and_say_so():
    """An ANC of 300 with unit text '/uL' and UCUM code '10*3/uL' had been read in the code's unit: 300 x10^9/L,
    normal, and no card (red-team round 10). The value is in one of the two and nothing says which: left out,
    named with both units; a unit and code that are one unit (K/uL, 10*3/uL) are read."""
    from leukodx.api.fhir import FhirMappingError
    w = obs("6690-2", 3.1, rid="w")
    w["valueQuantity"] = {"value": 3.1, "unit": "/uL", "system": "http://unitsofmeasure.org", "code": "10*3/uL"}
    anc = obs("751-8", 0.3, unit="10*9/L", code="10*9/L", rid="a")
    case, warnings = bundle_to_case(bundle(w, anc))
    assert [resolved_test(lab) for lab in case["labs"]] == ["anc"]
    assert has(warnings, "Observation/w", "'/uL'", "'10*3/uL'", "different units", "1000-fold", "skipped")
    with pytest.raises(FhirMappingError, match="different units"):      # nothing else: the mapping says why
        bundle_to_case(bundle(w))
    same, warnings = bundle_to_case(bundle(obs("6690-2", 3.1, unit="K/uL", code="10*3/uL")))
    assert same["labs"][0]["unit"] == "10*3/uL" and not has(warnings, "different units")
    assert assess(same).labs[0].value == pytest.approx(3.1)


@pytest.mark.parametrize("system", ["urn:oid:2.16.840.1.113883.6.8", "https://unitsofmeasure.org",
                                    "http://unitsofmeasure.org/", "HTTP://UNITSOFMEASURE.ORG"])
def test_ucum_is_read_however_its_system_is_spelled(system):
    """A count with only a UCUM code (no unit text) had been refused when UCUM was named by its OID (CDA-derived
    feeds), with https or a trailing slash, and the refusal said it had 'neither a unit nor a UCUM code'."""
    o = obs("751-8", 0.3, rid="a")
    o["valueQuantity"] = {"value": 0.3, "system": system, "code": "10*9/L"}
    case, _ = bundle_to_case(bundle(o))
    assert [(resolved_test(lab), lab["unit"]) for lab in case["labs"]] == [("anc", "10*9/L")]


def test_unit_choice_without_ucum_and_without_any_unit():
    text_only = obs("6690-2", 3.1, unit="x10(3)/mcL")
    other_system = obs("751-8", 1.1, unit="10^9/L", code="GIGA/L", system="http://lab.example/units")
    no_system_code = obs("770-8", 45, code="%", system=None)
    no_unit = obs("731-0", 1.0, rid="nounit")
    case, warnings = bundle_to_case(bundle(text_only, other_system, no_system_code, no_unit))
    assert [(resolved_test(lab), lab["unit"]) for lab in case["labs"]] == [("wbc", "x10(3)/mcL"), ("anc", "10^9/L"),
                                                                    ("neutrophils_pct", "%")]
    assert has(warnings, "Observation/nounit", "neither a unit nor a UCUM code", "skipped")


def test_reference_range_low_becomes_lln_in_its_own_unit_converted_by_the_engine():
    low_other_unit = obs("6690-2", 3800, code="/uL", low={"value": 4.0, "code": "10*9/L", "system": UCUM})
    low_no_unit = obs("751-8", 1.8, code="10*9/L", low={"value": 2.0})
    low_unread = obs("731-0", 1.1, code="10*9/L", low={"value": 1.0, "unit": "furlongs"}, rid="ly")
    case, warnings = bundle_to_case(bundle(low_other_unit, low_no_unit, low_unread))
    assert [(lab.get("lln"), lab.get("lln_unit")) for lab in case["labs"]] == [(4.0, "10*9/L"), (2.0, None),
                                                                                (None, None)]
    assert has(warnings, "Observation/ly", "referenceRange[0].low is in 'furlongs'", "left out")
    a = assess(case)
    assert {lab.test: (lab.value, lab.lln) for lab in a.labs if lab.test in ("wbc", "anc") and not lab.derived} == \
        {"wbc": (pytest.approx(3.8), pytest.approx(4.0)), "anc": (pytest.approx(1.8), pytest.approx(2.0))}


def test_statuses_duplicates_and_ignored_codes():
    data = bundle(obs("6690-2", 2.0, code="10*9/L", rid="first"),
                  obs("6690-2", 2.5, code="10*9/L", rid="second"),                 # same test, same time
                  obs("26464-8", 2.6, code="10*9/L", rid="third"),                 # another WBC code, same time
                  obs("6690-2", 3.0, code="10*9/L", rid="gone", status="entered-in-error",
                      time="2025-03-09T08:00:00Z"),
                  obs("6690-2", 3.5, code="10*9/L", rid="prelim", status="preliminary", time="2025-03-08"),
                  obs("2951-2", 140, code="mmol/L"), obs("2823-3", 4.1, code="mmol/L"))
    case, warnings = bundle_to_case(data)
    assert [lab["value"] for lab in case["labs"]] == [2.0, 3.5]
    assert has(warnings, "Observation/second", "a second wbc value at 2025-03-10T08:00:00+00:00", "Observation/first")
    assert has(warnings, "Observation/third", "a second wbc value")
    assert has(warnings, "Observation/gone", "status 'entered-in-error'", "skipped")
    assert has(warnings, "2 Observations of codes leukodx does not use", "LOINC 2951-2", "LOINC 2823-3")
    assess(case)


def test_conditions_active_ones_once():
    def cond(text, clinical="active", verification="confirmed", onset=None):
        c = {"resourceType": "Condition", "code": {"text": text},
             "clinicalStatus": {"coding": [{"code": clinical}]}, "verificationStatus": {"coding": [{"code": verification}]}}
        if onset:
            c["onsetDateTime"] = onset
        return c
    data = bundle(WBC, cond("Crohn's disease"), cond("crohn's disease"), cond("Influenza", clinical="resolved"),
                  cond("HIV", verification="refuted"), cond("Sepsis", clinical="inactive"),
                  cond("Rheumatoid arthritis", clinical="remission"), cond("Pregnancy", onset="2025-06-01"),
                  {"resourceType": "Condition", "code": {"coding": [{"system": "http://snomed.info/sct",
                                                                     "code": "38341003",
                                                                     "display": "Hypertension"}]}})
    case, warnings = bundle_to_case(data)
    # in remission: kept, as past (a chronic condition is still read from it; a cancer is no longer treated now)
    assert case["history"] == {"conditions": ["Crohn's disease", "history of Rheumatoid arthritis", "Hypertension"]}
    assert has(warnings, "1 condition began after 2025-03-10")


def test_a_condition_counts_when_it_was_current_at_the_date_judged():
    """Abatement dates decide over the status: a screening judged at a past date sees the pneumonia of
    that time, and an 'active' condition that abated before it is not current."""
    def cond(text, clinical, abated=None, period=False):
        c = {"resourceType": "Condition", "code": {"text": text}, "clinicalStatus": {"coding": [{"code": clinical}]},
             "onsetDateTime": "2025-01-01"}
        if abated:
            c.update({"abatementPeriod": {"start": "2025-01-01", "end": abated}} if period else {"abatementDateTime": abated})
        return c
    data = bundle(WBC, cond("Pneumonia", "resolved", "2025-04-01"), cond("Sepsis", "resolved", "2025-03-10T06:00:00Z"),
                  cond("Influenza", "active", "2025-02-01"), cond("Gout", "inactive"),
                  cond("Cellulitis", "resolved", "2025-05-01", period=True), cond("Crohn's disease", "active"))
    case, warnings = bundle_to_case(data)          # judged at the lab's date, 2025-03-10
    assert case["history"]["conditions"] == ["Pneumonia", "Cellulitis", "Crohn's disease"]
    assert has(warnings, "abated on 2025-02-01", "clinical status is active", "not counted as current")
    later, _ = bundle_to_case(data, as_of=date(2025, 6, 1))
    assert later["history"]["conditions"] == ["Crohn's disease"]


def test_a_clozapine_agranulocytosis_over_is_kept_as_history():
    """The clozapine label's no-rechallenge follows a clozapine agranulocytosis of any date: resolved, inactive or
    abated, it is kept (with a warning saying so), where another resolved condition is left out; a refuted one is
    still not read."""
    def cond(text, clinical, abated=None, verification="confirmed"):
        c = {"resourceType": "Condition", "code": {"text": text}, "clinicalStatus": {"coding": [{"code": clinical}]},
             "verificationStatus": {"coding": [{"code": verification}]}, "onsetDateTime": "2023-02-01"}
        return {**c, "abatementDateTime": abated} if abated else c
    data = bundle(WBC, cond("Clozapine-induced agranulocytosis", "resolved"), cond("Influenza", "resolved"),
                  cond("Agranulocytosis secondary to clozapine", "active", abated="2023-03-01"),
                  cond("Severe neutropenia due to clozapine", "inactive", verification="refuted"))
    case, warnings = bundle_to_case(data)
    assert case["history"]["conditions"] == ["Clozapine-induced agranulocytosis", "Agranulocytosis secondary to clozapine"]
    assert has(warnings, "entry[1]", "resolved, and kept as history")
    assert has(warnings, "entry[3]", "abated, and kept as history")


@pytest.mark.parametrize("clinical,verification", [
    ({"coding": [{"code": "active"}]}, {"text": "Refuted"}),
    ({"coding": [{"code": "active"}]}, {"coding": [{"code": "REFUTED"}]}),
    ({"coding": [{"code": "active"}]}, {"coding": [{"display": "Entered in Error"}]}),
    ({"coding": [{"code": "Resolved"}]}, None),
    ({"text": "Resolved"}, None),
    ({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "display": "Inactive"}]}, None),
    ({"text": "No longer active"}, None), ({"text": "not active"}, None),
    ({"coding": [{"code": "active"}]}, {"text": "Ruled out"}),
    ({"coding": [{"code": "active"}]}, {"coding": [{"code": "entered_in_error"}]}),
])
def test_a_condition_status_is_read_from_its_codes_displays_or_text_in_any_case(clinical, verification):
    """A sepsis marked refuted or resolved in text only, a display only or capitals had been an active sepsis, and a
    mild neutropenia an emergency (red-team round 10)."""
    c = {"resourceType": "Condition", "code": {"text": "Sepsis"}, "clinicalStatus": clinical}
    if verification:
        c["verificationStatus"] = verification
    case, _ = bundle_to_case(bundle(WBC, c))
    assert "conditions" not in case.get("history", {})


def test_an_acute_episode_left_active_for_months_and_an_abatement_still_to_come_are_not_current():
    """A sepsis recorded 'active' three years before had made a mild neutropenia critical 'emergency department now';
    an 'inactive' one abating in the future was current. An acute illness is current for acute_condition_max_age_days
    after its onset (or recorded date) at most; a chronic one is not aged; an abatement after today is no date."""
    from datetime import datetime, timedelta, timezone
    def cond(text, **more):
        return {"resourceType": "Condition", "code": {"text": text}, "clinicalStatus": {"coding": [{"code": "active"}]},
                **more}
    soon = (datetime.now(timezone.utc).date() + timedelta(days=5)).isoformat()
    data = bundle(WBC, cond("Urosepsis", onsetDateTime="2022-03-01"), cond("Pneumonia", recordedDate="2024-11-01"),
                  cond("Sepsis", onsetDateTime="2025-02-20"), cond("Crohn's disease", onsetDateTime="2010-01-01"),
                  cond("HIV", onsetDateTime="2015-01-01"), cond("CMV infection", onsetDateTime="2024-11-01"),
                  cond("Sepsis in CLL patient", onsetDateTime="2023-05-01"), cond("Fever", onsetDateTime="2024"),
                  cond("Influenza", clinicalStatus={"coding": [{"code": "inactive"}]}, abatementDateTime=soon))
    case, warnings = bundle_to_case(data)          # judged at the lab's date, 2025-03-10
    assert case["history"]["conditions"] == [
        "history of Urosepsis", "history of Pneumonia", "Sepsis", "Crohn's disease", "HIV", "CMV infection",
        "history of Sepsis in CLL patient", "history of Fever"]     # a year-only onset: its first day
    assert has(warnings, "an acute illness recorded with its onset on or before 2022-03-01", "read as past")
    assert has(warnings, f"abatement date {soon} is in the future", "(inactive) was taken")
    a = assess(case)
    assert {"cll", "hiv", "cmv_infection", "crohns_disease"} <= set(a.conditions)
    assert not {"pneumonia", "fever"} & set(a.conditions)      # (the sepsis of 2025-02-20 is current)


def test_an_acute_episode_whose_onset_is_an_age_or_a_text_is_placed_in_time():
    """A sepsis 'active' with onsetAge 5 years (of a patient born in 1970) had been read as undated, so current: a mild
    neutropenia became 'emergency department now'. An onset given as an age is placed by the birth date (a Range of
    ages by its upper bound, the latest it can have begun), one given as text by the date or the one year it names;
    text that names no date ('in childhood') and an age with no birth date leave it dated by when it was recorded."""
    def cond(text, **more):
        return {"resourceType": "Condition", "code": {"text": text}, "clinicalStatus": {"coding": [{"code": "active"}]},
                **more}
    def age(value, unit="a"):
        return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1970-01-01", "gender": "female"}
    conditions = [cond("Sepsis", onsetAge=age(5)), cond("Pneumonia", onsetRange={"low": age(20), "high": age(30)}),
                  cond("Febrile neutropenia", onsetString="since March 2019"), cond("Malaria", onsetString="2024-12-20"),
                  cond("Influenza", onsetAge=age(660, "mo")),   # 55 years: 2025-01-01, 68 days before the lab
                  cond("COVID-19", onsetString="in childhood")]
    case, warnings = bundle_to_case(bundle(patient, WBC, *conditions))         # judged at the lab's date, 2025-03-10
    assert case["history"]["conditions"] == [
        "history of Sepsis", "history of Pneumonia", "history of Febrile neutropenia", "Malaria", "Influenza",
        "COVID-19"]
    # judged by the latest day each can have begun: age 5 until the day before the 6th birthday, the range's 30th
    # year, 2019's last day
    assert has(warnings, "an acute illness recorded with its onset on or before 1975-12-31", "read as past")
    assert has(warnings, "on or before 2000-12-31") and has(warnings, "on or before 2019-12-31")
    # an onset this year, at the patient's age now, or with no upper age: not aged past (they had been read as begun
    # on the year's first day, or the birthday, and so as past)
    this_year = [cond("Sepsis", onsetString="since 1 March 2025"), cond("Pneumonia", onsetAge=age(55)),
                 cond("Influenza", onsetRange={"low": age(30)})]
    case, _ = bundle_to_case(bundle(patient, WBC, *this_year))
    assert case["history"]["conditions"] == ["Sepsis", "Pneumonia", "Influenza"]
    # no birth date: the age cannot be placed, and it says so; the recorded date still bounds it
    case, warnings = bundle_to_case(bundle(WBC, cond("Sepsis", onsetAge=age(5), recordedDate="2020-01-01"),
                                           cond("Pneumonia", onsetAge=age(5))))
    assert case["history"]["conditions"] == ["history of Sepsis", "Pneumonia"]
    assert has(warnings, "its onset is an age that cannot be placed in time")


def test_an_active_order_whose_period_ended_is_a_completed_course():
    """A clozapine order still 'active' whose dosage bounds ended 60 days before had been counted as taken (red-team
    round 12): an order or statement whose period (effectivePeriod.end, or every dosage's boundsPeriod.end) ended
    before the date the case is judged at is a course completed then. A period ending later, or a dosage with no
    bounds beside one with them, leaves it active."""
    def bounded(end, *more):
        return [{"timing": {"repeat": {"boundsPeriod": {"start": "2024-06-01", "end": end}}}}, *more]
    ended = med_request(id="m1", medicationCodeableConcept=AZA, authoredOn="2024-06-01",
                        dosageInstruction=bounded("2025-01-09"))      # the lab is dated 2025-03-10
    case, warnings = bundle_to_case(bundle(WBC, ended))
    assert (case["medications"][0]["status"], case["medications"][0]["end"]) == ("completed", "2025-01-09")
    assert has(warnings, "status active, but its period ended on 2025-01-09")
    by_period = med_request(id="m2", medicationCodeableConcept=AZA, authoredOn="2024-06-01",
                            effectivePeriod={"start": "2024-06-01", "end": "2024-12-31"})
    assert bundle_to_case(bundle(WBC, by_period))[0]["medications"][0]["status"] == "completed"
    for still in (bounded("2025-06-30"), bounded("2025-01-09", {"text": "50 mg daily"})):
        case, _ = bundle_to_case(bundle(WBC, med_request(id="m3", medicationCodeableConcept=AZA, authoredOn="2024-06-01",
                                                         dosageInstruction=still)))
        assert case["medications"][0]["status"] == "active" and "end" not in case["medications"][0]


def test_nested_bundles_contained_resources_and_empty_entries():
    inner = bundle(obs("751-8", 0.7, code="10*9/L"), kind="searchset")
    inner["entry"].append({"fullUrl": "https://ehr.example/fhir/Observation/x", "search": {"mode": "outcome"}})
    report = {"resourceType": "DiagnosticReport", "id": "dr", "effectiveDateTime": "2025-03-10T07:00:00Z",
              "contained": [obs("6690-2", 2.2, code="10*9/L", rid="c1", time=None)],
              "result": [{"reference": "#c1"}]}
    outer = bundle(bundle(inner, report, kind="transaction"), kind="batch-response")
    resources = resources_from(outer)
    assert [r["resourceType"] for r in resources] == ["Observation", "DiagnosticReport", "Observation"]
    case, warnings = bundle_to_case(outer)
    assert [(resolved_test(lab), lab.get("time")) for lab in case["labs"]] == [("anc", "2025-03-10T08:00:00+00:00"),
                                                                        ("wbc", "2025-03-10T07:00:00+00:00")]
    assert has(warnings, "took the time of the report or panel", "DiagnosticReport/dr")
    assert assess(case).risk_tier.tier == "moderate"


def test_an_unusable_time_is_warned_about_once_and_the_reports_time_is_taken():
    # the report-time pass and the lab mapping both read the Observation's time: one warning, naming the lab
    lab = obs("6690-2", 2.2, code="10*9/L", rid="w1", time="2025-03")
    report = {"resourceType": "DiagnosticReport", "id": "dr", "effectiveDateTime": "2025-03-10T07:00:00Z",
              "result": [{"reference": "Observation/w1"}]}
    case, warnings = bundle_to_case(bundle(lab, report))
    assert [lab.get("time") for lab in case["labs"]] == ["2025-03-10T07:00:00+00:00"]
    partial = [w for w in warnings if "'2025-03' is a partial date" in w]
    assert partial == ["entry[0].resource (Observation/w1): effectiveDateTime '2025-03' is a partial date; not used."]
    assert has(warnings, "took the time of the report or panel", "DiagnosticReport/dr")


def test_resources_from_single_resource_and_list_with_nulls():
    one = obs("6690-2", 2.0, code="10*9/L")
    assert resources_from(one) == [one]
    prefetch = {"patient": {"resourceType": "Patient", "id": "p"}, "labs": bundle(one, kind="searchset"), "meds": None}
    assert [r["resourceType"] for r in resources_from(list(prefetch.values()))] == ["Patient", "Observation"]


def test_reference_cycle_is_refused():
    b = {"resourceType": "Bundle", "type": "collection", "entry": []}
    b["entry"].append({"resource": b})
    with pytest.raises(FhirMappingError) as err:
        resources_from(b)
    assert err.value.problems == [Problem("entry[0].resource", "reference cycle: this object contains itself; refused")]
    r = {"resourceType": "Observation", "contained": []}
    r["contained"].append(r)
    with pytest.raises(FhirMappingError, match="cycle"):
        bundle_to_case(r)
    lst: list = []
    lst.append(lst)
    with pytest.raises(FhirMappingError, match="cycle"):
        resources_from(lst)


def test_over_deep_nesting_is_refused():
    data = bundle(obs("6690-2", 2.0, code="10*9/L"))
    for _ in range(MAX_DEPTH):
        data = bundle(data)
    with pytest.raises(FhirMappingError) as err:
        resources_from(data)
    assert "nested more than 8 levels" in err.value.problems[0].msg
    assert err.value.problems[0].loc.startswith("entry[0].resource.entry[0].resource")
    ok = bundle(obs("6690-2", 2.0, code="10*9/L"))
    for _ in range(MAX_DEPTH - 1):
        ok = bundle(ok)
    assert len(resources_from(ok)) == 1


def test_too_many_resources_are_refused():
    many = bundle(*({"resourceType": "Basic"} for _ in range(MAX_RESOURCES + 1)))
    with pytest.raises(FhirMappingError, match=f"more than {MAX_RESOURCES} resources"):
        resources_from(many)


@pytest.mark.parametrize("bad", ["{}", 3, None, True, b"{}"])
def test_non_object_input_is_refused(bad):
    with pytest.raises(FhirMappingError) as err:
        bundle_to_case(bad)
    assert err.value.problems[0].loc == ""
    assert isinstance(err.value, ValueError)


def test_malformed_structure_is_refused_with_paths():
    data = {"resourceType": "Bundle", "entry": [{"resource": obs("6690-2", 2.0, code="10*9/L")}, "oops",
                                                {"resource": ["not", "a", "resource"]}, {"resource": {"id": "x"}},
                                                {"resource": {"resourceType": "Observation", "contained": {}}}]}
    with pytest.raises(FhirMappingError) as err:
        resources_from(data)
    assert [p.loc for p in err.value.problems] == ["entry[1]", "entry[2].resource", "entry[3].resource",
                                                   "entry[4].resource.contained"]
    with pytest.raises(FhirMappingError) as err:
        resources_from([obs("6690-2", 2.0, code="10*9/L"), "text"])
    assert err.value.problems[0].loc == "[1]"


def test_no_usable_lab_is_a_mapping_error():
    with pytest.raises(FhirMappingError) as err:
        bundle_to_case(bundle({"resourceType": "Patient", "id": "p"}, obs("2951-2", 140, code="mmol/L")))
    assert len(err.value.problems) == 1 and "no lab value" in err.value.problems[0].msg


def test_values_the_contract_refuses_are_passed_to_the_engine():
    case, _ = bundle_to_case(bundle(obs("6690-2", 3.8, code="/uL"), obs("751-8", "1,2", code="10*9/L",
                                                                         time="2025-03-09")))
    assert [lab["value"] for lab in case["labs"]] == [3.8, "1,2"]   # (a plain "1.2" is read as the number)
    with pytest.raises(CaseError) as err:              # the contract refuses the text first ...
        assess(case)
    assert [(p.loc, p.msg) for p in err.value.problems] == [("labs[1].value", "must be a number, not the text '1,2'")]
    case["labs"].pop()
    with pytest.raises(CaseError) as err:              # ... then normalisation the WBC sent in the wrong unit
        assess(case)
    assert "not plausible" in err.value.problems[0].msg and "10^9/L" in err.value.problems[0].msg


def test_deterministic_and_json_ready():
    data = load("hl7/r4-core-examples/diagnosticreport-example-ghp.json")
    first = bundle_to_case(copy.deepcopy(data), case_id="c1")
    second = bundle_to_case(copy.deepcopy(data), case_id="c1")
    assert first == second
    assert json.loads(json.dumps(first[0], allow_nan=False)) == first[0]
    assert first[0]["id"] == "c1"


# Any JSON in the fields the mapping reads: the mapping returns a case or raises FhirMappingError, nothing else.
_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                     | st.text(max_size=12), lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.sampled_from(["value", "unit", "code", "system", "reference", "text",
                                                        "coding", "display", "start", "end", "low", "comparator",
                                                        "url", "extension", "valueString", "doseAndRate",
                                                        "doseQuantity"]), kids, max_size=4), max_leaves=12)
_fields = st.dictionaries(st.sampled_from(["status", "code", "valueQuantity", "effectiveDateTime", "effectivePeriod",
                                           "issued", "subject", "referenceRange", "medicationCodeableConcept",
                                           "medicationReference", "authoredOn", "dosageInstruction", "reasonCode",
                                           "reasonReference", "clinicalStatus", "gender", "birthDate", "extension",
                                           "hasMember", "result", "id", "dispenseRequest", "onsetDateTime"]),
                          _json, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["Observation", "MedicationRequest", "MedicationStatement", "Condition",
                                           "Patient", "DiagnosticReport", "Medication"]), _fields), max_size=5))
def test_garbage_fields_never_crash_the_mapping(resources):
    data = bundle(WBC, *({"resourceType": t, **f} for t, f in resources))
    try:
        case, warnings = bundle_to_case(data, patient_id=None)
    except FhirMappingError:
        return
    json.dumps(case)
    assert all(isinstance(w, str) for w in warnings)


# ---------------------------------------------------------------------------------------------
# TPMT and NUDT15 results found by their LOINC code (rules/pgx/result_codes.yaml)

def pgx(loinc, *, text=None, value=None, quantity=None, components=(), time="2024-05-01"):
    code = {"coding": [{"system": LOINC, "code": loinc}]}
    if text:
        code["text"] = text
    r = {"resourceType": "Observation", "status": "final", "code": code, "effectiveDateTime": time,
         "component": [{"code": {"coding": [{"system": LOINC, "code": c}]},
                        "valueCodeableConcept": {"coding": [{"system": "http://www.genenames.org/geneId",
                                                             "code": hgnc, "display": symbol}]}}
                       for c, hgnc, symbol in components]}
    if value is not None:
        r["valueCodeableConcept"] = {"text": value}
    if quantity is not None:
        r["valueQuantity"] = quantity
    return r


def pgx_history(*resources):
    case, warnings = bundle_to_case(bundle(WBC, obs("751-8", 0.4, code="10*9/L"), *resources))
    return case.get("history", {}), warnings


def test_a_tpmt_genotype_coded_only_by_loinc_is_read():
    history, _ = pgx_history(pgx("80738-8", value="*1/*3A"))
    assert history == {"tpmt": "*1/*3A"}


def test_a_genomics_reporting_genotype_takes_its_gene_from_the_gene_studied_component():
    nudt15 = pgx("84413-4", value="*1/*3", components=[("48018-6", "HGNC:23063", "NUDT15")])
    cyp = pgx("84413-4", value="*1/*2", components=[("48018-6", "HGNC:2623", "CYP2C9")])
    history, warnings = pgx_history(nudt15, cyp)
    assert history == {"nudt15": "*1/*3"}           # the CYP2C9 genotype is not taken for either gene
    assert not has(warnings, "CYP2C9")


def test_a_tpmt_result_held_in_its_interpretation_or_a_component_is_read_and_disagreement_is_named():
    """A TPMT result with no value of its own, its phenotype in `interpretation` or in a component (as some
    laboratories send it), had been dropped ("without a phenotype or diplotype")."""
    by_interpretation = pgx("80738-8")
    by_interpretation["interpretation"] = [{"text": "Intermediate metabolizer"}]
    history, _ = pgx_history(by_interpretation)
    assert history == {"tpmt": "intermediate"}
    by_component = pgx("84413-4", components=[("48018-6", "HGNC:12014", "TPMT")])
    by_component["component"].append({"code": {"text": "Diplotype"}, "valueString": "*1/*3A"})
    history, _ = pgx_history(by_component)
    assert history == {"tpmt": "*1/*3A"}
    flagged = pgx("80738-8")                                # the lab's normal flag, not a phenotype
    v3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    flagged["interpretation"] = [{"coding": [{"system": v3, "code": "N", "display": "Normal"}]}]
    history, warnings = pgx_history(flagged)
    assert "tpmt" not in history and has(warnings, "without a phenotype or diplotype")
    torn = pgx("80738-8")
    torn["interpretation"] = [{"text": "Poor metabolizer"}]
    torn["component"] = [{"code": {"text": "Phenotype"}, "valueString": "Normal metabolizer"}]
    history, warnings = pgx_history(torn)
    assert "tpmt" not in history
    assert has(warnings, "say different things", "Poor metabolizer", "Normal metabolizer")


def test_a_two_gene_result_is_cut_at_each_gene_and_never_lends_one_gene_the_other_gene_s_result():
    history, _ = pgx_history(pgx("93193-1", value="TPMT *1/*1; NUDT15 *1/*3"))
    assert history == {"nudt15": "*1/*3", "tpmt": "*1/*1"}
    history, warnings = pgx_history(pgx("93193-1", value="TPMT *1/*3A"))
    assert history == {"tpmt": "*1/*3A"}
    assert has(warnings, "NUDT15 result was not used")


def test_a_tpmt_activity_or_single_variant_is_named_and_never_turned_into_a_phenotype():
    activity = pgx("21563-2", quantity={"value": 8.2, "unit": "U/mL RBC"})
    variant = pgx("49653-9", value="Not detected")
    history, warnings = pgx_history(activity, variant)
    assert "tpmt" not in history
    assert has(warnings, "TPMT", "8.2 U/mL RBC", "measured enzyme activity")
    assert has(warnings, "TPMT", "Not detected", "single-variant")


def test_a_genotype_report_longer_than_any_laboratory_writes_is_named_and_not_searched():
    # searching 30 MB of text for a diplotype took seconds; a long report (up to the limit) is still read
    from leukodx.api.fhir.pgx import MAX_RESULT_TEXT
    report = "TPMT genotype *1/*3A: intermediate metabolizer. " + "Interpretation follows. " * 400
    assert len(report) < MAX_RESULT_TEXT
    history, _ = pgx_history(pgx("80738-8", value=report))
    assert history == {"tpmt": "*1/*3A"}
    history, warnings = pgx_history(pgx("80738-8", value="*1/*3A " + "x" * MAX_RESULT_TEXT))
    assert "tpmt" not in history
    assert has(warnings, "TPMT result text of 10,007 characters was not read", "at most 10,000")


def test_a_blood_count_is_never_read_as_a_genotype_whatever_its_text():
    """An Observation coded as a blood-count test leukodx reads is a lab, even when its text names a
    gene; the same text under a local code is still read as the genotype it names."""
    mislabelled = obs("751-8", 0.4, code="10*9/L")
    mislabelled["code"]["text"] = "TPMT phenotype"
    mislabelled["valueString"] = "Poor metabolizer"
    history, _ = pgx_history(mislabelled)
    assert "tpmt" not in history


def test_the_text_still_names_the_gene_when_the_code_is_local():
    local = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2024-05-01",
             "code": {"coding": [{"system": "urn:local", "code": "PGX1"}], "text": "TPMT phenotype"},
             "valueString": "Poor metabolizer"}
    history, _ = pgx_history(local)
    assert history == {"tpmt": "poor"}


def test_a_long_date_string_is_refused_and_never_kept():
    # date text of one draw is parsed once and kept; a long string (a CDS body may hold 32 MB) is never kept
    from leukodx.api.fhir import datatypes
    kept = datatypes._parse_when.cache_info().currsize
    long = "2025-03-10T08:00:00Z" + " " * 10 + "x" * 5000
    assert datatypes.parse_when(long) == (None, f"{long!r} is not a FHIR date or dateTime")
    assert datatypes._parse_when.cache_info().currsize == kept
    assert datatypes.parse_when(" 2025-03-10 ")[0] == date(2025, 3, 10)


def test_an_observation_whose_unit_is_a_long_text_is_left_out_and_the_rest_assessed():
    # a 100,000-character unit took the mapping a minute (pint's parser); now it is refused unread
    long = "10*9/L" + "x" * 100_000
    weight = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2025-03-10T08:00:00Z",
              "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "valueQuantity": {"value": 70, "unit": long}}
    data = bundle(obs("6690-2", 3.0, unit=long, code=long, rid="w"), obs("751-8", 0.8, code="10*9/L", rid="n"), weight)
    case, warnings = bundle_to_case(data)
    assert has(warnings, "body weight not used", f"a unit of {len(long)} characters")
    a = assess(case, partial=True)
    assert [(n.field, n.reason) for n in a.not_assessed] == [
        ("labs[0] (Observation/w)", "unit: String should have at most 60 characters")]
    assert a.risk_tier.tier == "moderate"


def test_a_genotype_observation_is_not_counted_among_codes_leukodx_does_not_use():
    """A TPMT genotype (LOINC 36922-3) is read by the pharmacogenomics mapping; it had also been listed as an
    Observation 'of codes leukodx does not use'."""
    genotype = {"resourceType": "Observation", "id": "g1", "status": "final", "subject": {"reference": "Patient/p"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "36922-3"}]},
                "effectiveDateTime": "2024-01-01", "valueCodeableConcept": {"text": "*1/*3A"}}
    case, warnings = bundle_to_case(bundle(obs("6690-2", 5.0, code="10*9/L"), genotype))
    assert case["history"]["tpmt"] == "*1/*3A"
    assert not [w for w in warnings if "does not use" in w]


def test_a_dose_per_take_with_its_timing_is_read_as_a_dose_per_day():
    """Azathioprine 125 mg twice a day (doseQuantity with timing.repeat) had been "not a mass per day", so the
    dose rules (here: above 3 mg/kg/day at 50 kg) never applied to FHIR data (the re-verification)."""
    aza = med_request(id="a", authoredOn="2025-01-01", medicationCodeableConcept={"text": "azathioprine"},
                      dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 125, "unit": "mg",
                                                                            "system": UCUM, "code": "mg"}}],
                                          "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}])
    weekly = med_request(id="m", authoredOn="2025-01-01", medicationCodeableConcept={"text": "methotrexate"},
                         dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 14, "unit": "mg"}}],
                                             "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}}])
    case, _ = bundle_to_case(bundle(obs("6690-2", 2.8, code="10*9/L"), obs("29463-7", 50, code="kg"), aza, weekly))
    doses = {m["name"]: m["dose"] for m in case["medications"]}
    assert doses == {"azathioprine": {"value": 250.0, "unit": "mg/d"}, "methotrexate": {"value": 14.0, "unit": "mg/wk"}}
    a = assess(case)
    assert "thiopurine.azathioprine_above_usual_dose" in {t.rule for t in a.trace}


def test_a_split_dose_is_summed_and_mixed_dosages_are_not_read_as_one():
    """Azathioprine 100 mg in the morning and 100 mg in the evening (two dosage instructions) had been read as
    100 mg/d from the first alone (the second re-verification)."""
    def dosage(mg, unit="mg"):
        return {"doseAndRate": [{"doseQuantity": {"value": mg, "unit": unit}}],
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}
    split = med_request(id="a", authoredOn="2025-01-01", medicationCodeableConcept={"text": "azathioprine"},
                        dosageInstruction=[dosage(100), dosage(100)])
    mixed = med_request(id="b", authoredOn="2025-01-01", medicationCodeableConcept={"text": "methotrexate"},
                        dosageInstruction=[dosage(10), {"text": "as directed"}])
    per_m2 = med_request(id="c", authoredOn="2025-01-01", medicationCodeableConcept={"text": "mercaptopurine"},
                         dosageInstruction=[dosage(25, "mg/m2"), dosage(25, "mg/m2")])
    m2_and_mg = med_request(id="d", authoredOn="2025-01-01", medicationCodeableConcept={"text": "thioguanine"},
                            dosageInstruction=[dosage(40, "mg/m2"), dosage(10)])
    case, warnings = bundle_to_case(bundle(obs("6690-2", 2.8, code="10*9/L"), split, mixed, per_m2, m2_and_mg))
    doses = {m["name"]: m.get("dose") for m in case["medications"]}
    assert doses == {"azathioprine": {"value": 200.0, "unit": "mg/d"}, "methotrexate": None,
                     "mercaptopurine": {"value": 50.0, "unit": "mg/m2/d"}, "thioguanine": None}
    assert has(warnings, "MedicationRequest/b", "2 dosage instructions (10 mg/d; as directed)", "not applied")
    assert has(warnings, "MedicationRequest/d", "2 dosage instructions (40 mg/m2/d; 10 mg/d)", "not applied")


def test_a_temperature_without_a_lab_is_mapped_only_on_a_known_case_date():
    """A fever with no blood count makes a case with no labs when the case date is known (the CDS call's
    today, the REST as_of); without one nothing dates the case, and the mapping refuses as for no data."""
    from datetime import date
    from leukodx.api.fhir import FhirMappingError, map_bundle
    from leukodx.engine import get_engine
    temp = {"resourceType": "Observation", "id": "t", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "effectiveDateTime": "2026-11-30T08:00:00Z",
            "valueQuantity": {"value": 38.9, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}
    kb = get_engine().kb
    mapped = map_bundle([temp], kb=kb, patient_id="p", as_of=date(2026, 12, 1))
    assert mapped.case["labs"] == [] and mapped.case["history"]["temperature_c"] == 38.9
    a = get_engine().assess(mapped.case, partial=True)
    assert [x.id for x in a.alerts] == ["fever_without_current_count"]
    with pytest.raises(FhirMappingError, match="no lab value"):
        map_bundle([temp], kb=kb, patient_id="p")


def test_of_two_loinc_codes_the_one_whose_test_the_unit_fits_is_read():
    """An Observation coded 770-8 (neutrophils %) and 751-8 (ANC) with 0.3 10*9/L had been read under the first code
    and refused as a percentage (red-team round 10); with a % unit, the percentage is read."""
    both = obs("770-8", 0.3, unit="10*9/L", code="10*9/L", rid="n")
    both["code"]["coding"].append({"system": LOINC, "code": "751-8"})
    pct = obs("770-8", 40, unit="%", code="%", rid="p")
    pct["code"]["coding"].append({"system": LOINC, "code": "751-8"})
    case, _ = bundle_to_case(bundle(both))
    assert [(lab["loinc"], lab["value"]) for lab in case["labs"]] == [("751-8", 0.3)]
    case, _ = bundle_to_case(bundle(obs("6690-2", 5.0, unit="10*9/L", code="10*9/L"), pct))
    assert [(lab["loinc"], lab["value"]) for lab in case["labs"]] == [("6690-2", 5.0), ("770-8", 40)]


@pytest.mark.parametrize("ingredient,read", [
    ({"itemCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1256"}]}},
     {"rxnorm": "1256"}),
    ({"item": {"concept": {"text": "azathioprine"}}}, {"name": "azathioprine"}),              # R5
    ({"itemReference": {"reference": "#aza"}}, {"name": "azathioprine"}),
])
def test_a_drug_named_only_by_its_medications_ingredient_is_read(ingredient, read):
    """A compounded azathioprine coded by NDC alone (no display), its ingredient RxNorm 1256, had been 'not in the
    data' and the thiopurine missed (red-team round 10)."""
    med = {"resourceType": "Medication", "id": "m", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/ndc",
                                                                           "code": "99999-0001-01"}]},
           "ingredient": [ingredient]}
    aza = {"resourceType": "Medication", "id": "aza", "code": {"text": "azathioprine"}}
    request = med_request(id="r", authoredOn="2025-01-01", medicationReference={"reference": "#m"},
                          contained=[med, aza])
    case, warnings = bundle_to_case(bundle(obs("6690-2", 2.8, code="10*9/L"), request))
    [drug] = case["medications"]
    assert {k: drug.get(k) for k in read} == read, warnings
    assert ("thiopurine_myelotoxicity", ["azathioprine"]) in [(c.id, c.agents) for c in assess(case).causes]


@pytest.mark.parametrize("system", ["http://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"])
def test_a_drug_coded_with_atc_alone_is_read_as_its_drug(system):
    """European EHRs code medications with WHO ATC: azathioprine L04AX01 sent with no name and no RxNorm code had been
    a medication whose drug cannot be told (a thiopurine missed)."""
    request = med_request(id="r", authoredOn="2025-01-01",
                          medicationCodeableConcept={"coding": [{"system": system, "code": "L04AX01"}]})
    case, _ = bundle_to_case(bundle(obs("6690-2", 2.8, code="10*9/L"), request))
    assert [(m.get("name"), m.get("atc")) for m in case["medications"]] == [(None, "L04AX01")]
    assert ("thiopurine_myelotoxicity", ["azathioprine"]) in [(c.id, c.agents) for c in assess(case).causes]


def test_an_order_coded_with_atc_alone_gets_its_check(engine):
    from leukodx.engine import OrderInput
    [c] = engine.check_orders([OrderInput(key="o", atc="L01BB02")], None, "poor", "normal")
    assert (c.drug, c.topic, c.priority) == ("mercaptopurine", "thiopurine_pgx", "critical")


def test_a_named_medication_keeps_its_name_and_an_excipient_is_no_drug():
    """'Imuran' sent with a methotrexate ingredient had been read as methotrexate (azathioprine lost); an ingredient
    marked isActive false had been taken as the drug; a compounded product's name keeps its ingredient beside it."""
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    def med(code, *ingredients):
        return {"resourceType": "Medication", "id": "m", "code": code, "ingredient": list(ingredients)}
    def read(medication):
        request = med_request(id="r", authoredOn="2025-01-01", medicationReference={"reference": "#m"},
                              contained=[medication])
        case, _ = bundle_to_case(bundle(obs("6690-2", 2.8, code="10*9/L"), request))
        return [(m.get("name"), m.get("rxnorm"), m.get("atc")) for m in case["medications"]]
    mtx = {"itemCodeableConcept": {"coding": [{"system": rx, "code": "6851", "display": "methotrexate"}]}}
    assert read(med({"text": "Imuran"}, mtx)) == [("Imuran (methotrexate)", None, None)]
    assert read(med({"text": "Pharmacy compounded suspension"}, {"itemCodeableConcept": {"text": "azathioprine"}})) \
        == [("Pharmacy compounded suspension (azathioprine)", None, None)]
    excipient = {"isActive": False, "itemCodeableConcept": {"coding": [{"system": rx, "code": "1256"}]}}
    atc = {"itemCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "L01BB02"}]}}
    assert read(med({"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "1"}]}, excipient, atc)) == [
        (None, None, "L01BB02")]


def test_one_value_sent_in_two_units_is_not_a_conflict():
    """The same ANC sent as 1.2 10*9/L and as 1200 /uL had been named a conflict ('nothing says which is right')."""
    a = obs("751-8", 1.2, unit="10*9/L", code="10*9/L", rid="a")
    b = obs("751-8", 1200, unit="/uL", code="/uL", rid="b")
    c = obs("751-8", 1300, unit="/uL", code="/uL", rid="c")
    case, warnings = bundle_to_case(bundle(a, b))
    assert [lab["value"] for lab in case["labs"]] == [1.2]
    assert has(warnings, "Observation/b", "with the same value") and not has(warnings, "conflicts")
    case, warnings = bundle_to_case(bundle(a, c))          # a real disagreement still is one
    assert has(warnings, "Observation/c", "conflicts with 1.2 10*9/L")


def test_an_orders_indication_is_every_reason_it_gives():
    """The order check had read only the first reasonCode's text: Crohn's disease as the second reasonCode, or only as
    a reference to the Condition, left a thiopurine order read as a cancer's (red-team round 17)."""
    from leukodx.api.fhir.medications import order_drugs
    crohn = {"resourceType": "Condition", "id": "c1", "code": {"text": "Crohn's disease"}}
    orders = [{"resourceType": "MedicationRequest", "status": "draft", "medicationCodeableConcept": {"text": "mercaptopurine"},
               "reasonCode": [{"coding": [{"code": "K50.0"}]}, {"text": "Crohn's disease"}]},
              {"resourceType": "MedicationRequest", "status": "draft", "medicationCodeableConcept": {"text": "mercaptopurine"},
               "reasonReference": [{"reference": "Condition/c1"}]},
              {"resourceType": "MedicationRequest", "status": "draft", "medicationCodeableConcept": {"text": "mercaptopurine"},
               "reasonReference": [{"reference": "Condition/elsewhere", "display": "Ulcerative colitis"}]}]
    got = [d.indication for d in order_drugs(orders, {"resourceType": "Bundle", "entry": [{"resource": crohn}]})]
    assert got == ["Crohn's disease", "Crohn's disease", "Ulcerative colitis"]


def test_a_reason_sent_as_an_icd10_code_only_is_read():
    """A reasonCode with a code and no text had been dropped, so a cancer elsewhere on the record decided: a thiopurine for
    K50.0 (Crohn's disease) beside a breast cancer read as chemotherapy (red-team round 17). An ICD-10 code of a chapter
    without neoplasms is a reason that is no cancer; C00-C97 is a cancer; a SNOMED CT or a Z code says nothing."""
    from leukodx.api.fhir.medications import order_drugs
    kb = get_engine().kb

    def reason(system: str, code: str) -> dict:
        return {"resourceType": "MedicationRequest", "status": "draft", "medicationCodeableConcept": {"text": "mercaptopurine"},
                "reasonCode": [{"coding": [{"system": system, "code": code}]}]}
    icd, cm, oid = "http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm", "urn:oid:2.16.840.1.113883.6.90"
    orders = [reason(icd, "K50.0"), reason(cm, "M06.9"), reason(oid, "D69.6"), reason(icd, "C91.0"), reason(cm, "C7A.1"),
              reason(cm, "Z51.11"), reason(icd, "D46.9"), reason("http://snomed.info/sct", "34000006")]
    got = [d.indication for d in order_drugs(orders, {"resourceType": "Bundle", "entry": []}, kb=kb)]
    assert got == ["K50.0 (ICD-10)", "M06.9 (ICD-10)", "D69.6 (ICD-10)", "cancer", "cancer", None, None, None]

    from leukodx.engine.vocabulary import oncologic_use
    assert [oncologic_use(kb, text, cancer_among_conditions=True) for text in got] == [False, False, False, True, True,
                                                                                       True, True, True]
    # a drug taken, its reason a Condition coded only; and a coded-only Condition on the problem list is a cancer
    crohn = {"resourceType": "Condition", "id": "c1", "clinicalStatus": {"coding": [{"code": "active"}]},
             "code": {"coding": [{"system": icd, "code": "K50.9"}]}}
    breast = {"resourceType": "Condition", "id": "c2", "clinicalStatus": {"coding": [{"code": "active"}]},
              "code": {"coding": [{"system": cm, "code": "C50.911"}]}}
    taken = {"resourceType": "MedicationStatement", "status": "active", "medicationCodeableConcept": {"text": "azathioprine"},
             "effectiveDateTime": "2026-01-05", "reasonReference": [{"reference": "Condition/c1"}]}
    wbc = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2"}]},
           "effectiveDateTime": "2026-06-01", "valueQuantity": {"value": 5.0, "unit": "10*9/L"}}
    case, _ = bundle_to_case({"resourceType": "Bundle", "entry": [{"resource": r} for r in (crohn, breast, taken, wbc)]},
                             kb=kb)
    assert case["medications"][0]["indication"] == "K50.9 (ICD-10)"
    assert "cancer" in case["history"]["conditions"]


def test_old_encounter_diagnoses_and_pregnancies_are_not_current():
    """Red-team round 21 (the conditions prefetch now asks for every status): an infectious mononucleosis diagnosed at a
    visit in 2015 (no clinical status) had explained an agranulocytosis of today and dropped its marrow, and a pregnancy
    of 2019 or 2023 set the pregnancy haemoglobin limit. An encounter diagnosis of an acute illness ages like an
    episode; a pregnancy is over 301 days after its onset (post-term: 294 days, WHO ICD-10)."""
    kb = get_engine().kb

    def condition(text, onset, **extra):
        return {"resourceType": "Condition", "code": {"text": text}, "onsetDateTime": onset, **extra}
    wbc = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2026-06-01",
           "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2"}]}, "valueQuantity": {"value": 5.0, "unit": "10*9/L"}}
    visit = {"category": [{"coding": [{"code": "encounter-diagnosis"}]}]}
    active = {"clinicalStatus": {"coding": [{"code": "active"}]}}

    def read(*conditions):
        case, _ = bundle_to_case({"resourceType": "Bundle", "entry": [{"resource": r} for r in (wbc, *conditions)]},
                                 kb=kb)
        return set(assess(case).conditions)
    assert not {"ebv_infection", "viral_infection"} & read(condition("Infectious mononucleosis", "2015-03-01"))
    assert not {"viral_infection"} & read(condition("Parvovirus B19 infection", "2014-05-01", **visit))
    assert "ebv_infection" not in read(condition("Infectious mononucleosis", "2015-03-01", **active))
    assert "ebv_infection" in read(condition("Infectious mononucleosis", "2026-05-20"))          # 12 days: current
    assert "viral_infection" in read(condition("Chronic hepatitis B", "2014-05-01", **active))    # a chronic one stays
    assert "pregnancy" not in read(condition("Pregnancy", "2023-01-10", **active))
    assert "pregnancy" not in read(condition("Pregnancy", "2019-01-10", **visit))
    assert "pregnancy" in read(condition("Pregnancy", "2026-01-10", **active))                   # 142 days: current
    for status in ("recurrence", "relapse"):      # happening now, whatever its first onset (round 21)
        assert "sepsis" in read(condition("Sepsis", "2019-01-10", clinicalStatus={"coding": [{"code": status}]}))
    assert "sepsis" not in read(condition("Sepsis", "2019-01-10", **active))
    remission = {"clinicalStatus": {"coding": [{"code": "remission"}]}}     # a child of inactive (round 23)
    assert "sepsis" not in read(condition("Sepsis", "2026-05-30", **remission))
    leukaemia = condition("Acute lymphoblastic leukemia", "2025-01-10", **remission)    # maintenance is given then
    case, _ = bundle_to_case({"resourceType": "Bundle", "entry": [{"resource": r} for r in (wbc, leukaemia)]}, kb=kb)
    assert assess(case).cancer_current is True
