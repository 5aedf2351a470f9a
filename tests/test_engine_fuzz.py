"""Property tests: any input gives an Assessment or a documented rejection (CaseError), never
another exception; the same input gives byte-identical output."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leukodx.engine import CaseError, get_engine
from leukodx.engine.render import to_json

TESTS = ["wbc", "anc", "neutrophils_pct", "bands_pct", "lymphocytes", "lymphocytes_pct", "monocytes", "eosinophils_pct",
         "blasts_pct", "hemoglobin", "platelets", "mcv", "vitamin_b12", "folate", "copper", "nonsense"]
UNITS = ["10^9/L", "10*3/uL", "/uL", "K/uL", "G/L", "%", "g/dL", "g/L", "mmol/L", "fL", "pg/mL", "pmol/L", "ng/mL",
         "nmol/L", "ug/dL", "umol/L", "cells/mm3", "furlongs", "", "K", "10^9/L extra", "\u00b5L"]
DRUGS = ["azathioprine", "Imuran", "CellCept", "clozapine", "Bactrim", "rituximab", "pembrolizumab", "ceftriaxone",
         "vancomycin", "prednisone", "lithium", "unknown pill", "\u200bImuran", "AZATHIOPRINE 50MG", "6-MP", ""]
DATES = st.one_of(st.none(), st.dates().map(str), st.datetimes().map(lambda d: d.isoformat() + "Z"),
                  st.sampled_from(["2025-13-40", "yesterday", "", "0000-01-01", "9999-12-31"]))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**6, max_value=10**6),
                    st.sampled_from([0, -0.0, 1.5, 0.1, 1000.0, "3.2", True, None]))

lab = st.fixed_dictionaries({"value": NUMBERS, "unit": st.sampled_from(UNITS)},
                            optional={"test": st.sampled_from(TESTS), "loinc": st.sampled_from(["6690-2", "751-8", "0-0"]),
                                      "time": DATES, "lln": NUMBERS})
med = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(DRUGS), "rxnorm": st.sampled_from(["1256", "2626", "abc", "999999999"]),
    "status": st.sampled_from(["active", "stopped", "completed", "draft"]), "start": DATES, "end": DATES,
    "dose": st.one_of(st.text(max_size=20), st.fixed_dictionaries({"value": NUMBERS, "unit": st.sampled_from(
        ["mg/day", "mg/kg/day", "g/day", "mg", "mg/m2/day", "furlongs"])})),
    "indication": st.text(max_size=30)})
case = st.fixed_dictionaries({"labs": st.lists(lab, max_size=8)}, optional={
    "id": st.text(max_size=20), "as_of": DATES,
    "patient": st.fixed_dictionaries({}, optional={"age_years": NUMBERS, "sex": st.sampled_from(["female", "male", "x"]),
                                                  "weight_kg": NUMBERS, "duffy_null": st.sampled_from([True, False, None, "yes"]),
                                                  "ancestry": st.text(max_size=20)}),
    "medications": st.lists(med, max_size=4),
    "history": st.fixed_dictionaries({}, optional={
        "tpmt": st.sampled_from(["*1/*3A", "*3A/*3A", "poor", "normal", "*99/*1", "", "unknown"]),
        "nudt15": st.sampled_from(["*1/*3", "intermediate", "weird"]), "tpmt_method": st.sampled_from(["genotype", "activity", "x"]),
        "tpmt_test_date": DATES, "last_transfusion": DATES, "temperature_c": NUMBERS,
        "fever_sustained_1h": st.sampled_from([True, False, None]), "conditions": st.lists(st.text(max_size=25), max_size=3),
        "smear_findings": st.lists(st.sampled_from(["blasts", "dysplasia", "leukocyte_agglutination", "nope"]), max_size=2),
        "transplant": st.fixed_dictionaries({"organ": st.sampled_from(["kidney", "HSCT", ""])}, optional={"date": DATES})}),
})


@given(case)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_case_gives_an_assessment_or_a_documented_rejection(raw):
    engine = get_engine()
    try:
        first = to_json(engine.assess(raw))
    except CaseError as e:
        assert e.problems and all(p.msg for p in e.problems)
        return
    assert to_json(engine.assess(raw)) == first                     # deterministic
    doc = json.loads(first)
    assert doc["risk_tier"]["tier"] in ("normal", "mild", "moderate", "severe", "profound", "unknown")
    assert all(s in doc["sources"] for c in doc["causes"] for s in c["sources"])


@given(st.binary(max_size=300) | st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_or_text_give_a_case_error_or_an_assessment(blob):
    try:
        get_engine().assess(blob)
    except CaseError as e:
        assert e.problems
