"""Pipeline (engine/pipeline.py): one engine call from parse to explain. Determinism and invariance:
the same case gives byte-identical JSON, the order of labs and medications and the units of the same
counts change nothing, and the durable-rules and plain backends give the same assessment."""
from __future__ import annotations

import copy
import json
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from leukodx.engine import CaseError
from leukodx.engine.render import to_json

from conftest import base_case, lab

RICH = base_case(
    labs=[lab("wbc", 2.4), lab("neutrophils_pct", 30, "%"), lab("lymphocytes_pct", 40, "%"),
          lab("hemoglobin", 11, "g/dL"), lab("platelets", 120), lab("mcv", 104, "fL"),
          lab("wbc", 4.0, time="2025-02-01T08:00:00Z")],
    medications=[{"name": "methotrexate", "start": "2024-06-01"}, {"name": "Imuran", "start": "2025-01-15"},
                 {"name": "prednisone"}],
    history={"conditions": ["rheumatoid arthritis", "alcohol use disorder"], "temperature_c": 37.2,
             "tpmt": "*1/*3A", "nudt15": "normal"})


def test_same_case_byte_identical_output(engine):
    assert to_json(engine.assess(RICH)) == to_json(engine.assess(copy.deepcopy(RICH)))


@given(st.randoms(use_true_random=False))
@settings(max_examples=30, deadline=None)
def test_order_of_labs_and_medications_changes_nothing(engine, rnd):
    shuffled = copy.deepcopy(RICH)
    rnd.shuffle(shuffled["labs"])
    rnd.shuffle(shuffled["medications"])
    a, b = engine.assess(RICH), engine.assess(shuffled)
    strip = lambda x: {k: v for k, v in json.loads(to_json(x)).items() if k not in ("warnings",)}
    assert strip(a) == strip(b)


def test_same_counts_in_other_units_change_nothing(engine):
    per_ul = copy.deepcopy(RICH)
    for x in per_ul["labs"]:
        if x["test"] in ("wbc", "platelets"):
            x["value"], x["unit"] = x["value"] * 1000, "cells/uL"
    a, b = engine.assess(RICH), engine.assess(per_ul)
    assert [c.id for c in a.causes] == [c.id for c in b.causes]
    assert a.risk_tier == b.risk_tier and [s.id for s in a.steps] == [s.id for s in b.steps]


def test_durable_and_plain_backends_give_the_same_assessment(engine, plain_engine):
    assert to_json(engine.assess(RICH)) == to_json(plain_engine.assess(RICH))


def test_a_partial_assessment_never_changes_the_callers_case(engine):
    # what partial assessment removes sits at every level it removes from: a lab, a medication, a condition,
    # a patient field, a history field and a top-level field
    case = base_case(
        as_of="2025-03-10",
        labs=[lab("wbc", 2.4), lab("wbc", 3.0, "furlongs", time="2025-02-01T08:00:00Z"),
              lab("neutrophils_pct", 30, "%")],
        medications=[{"name": "methotrexate", "start": "2024-06-01"}, {"name": "Imuran", "start": "2030-01-01"}],
        history={"conditions": ["rheumatoid arthritis"], "tpmt": "*99/*98", "last_transfusion": "2031-01-01"})
    case["patient"] = {"age_years": 54, "sex": "female", "weight_kg": 5000}
    before = copy.deepcopy(case)
    a = engine.assess(case, partial=True)
    left_out = {n.field.split(" ")[0] for n in a.not_assessed}
    assert {"labs[1]", "medications[1]", "history.tpmt", "history.last_transfusion",
            "patient.weight_kg"} <= left_out, left_out
    assert case == before


def test_a_dose_that_cannot_be_read_is_left_out_and_the_drug_kept(engine):
    """A negative azathioprine dose had taken the whole drug out of an EHR's assessment, and with it the TPMT
    poor metabolizer's critical alert; a clozapine dose of 1e308 took the clozapine alert."""
    labs = [lab("wbc", 5.0), lab("anc", 2.5)]
    aza = {"name": "azathioprine", "start": "2025-01-01", "dose": {"value": -50, "unit": "mg/day"},
           "indication": "x" * 100_000}
    case = base_case(labs=labs, medications=[aza], history={"tpmt": "*3A/*3A"})
    before = copy.deepcopy(case)
    a = engine.assess(case, partial=True)
    assert case == before
    assert "thiopurine_high_risk_genotype" in {x.id for x in a.alerts}
    assert sorted(n.field for n in a.not_assessed) == ["medications[0].dose", "medications[0].indication"]
    assert all("the drug was assessed without its" in n.reason for n in a.not_assessed)
    cloz = {"name": "clozapine", "start": "2024-01-01", "dose": {"value": 1e308, "unit": "mg/day"}}
    b = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", 0.8)], medications=[cloz]), partial=True)
    assert "clozapine_neutropenia" in {x.id for x in b.alerts}
    with pytest.raises(CaseError):                  # a person's case is still refused
        engine.assess(base_case(labs=labs, medications=[aza]))


def test_what_a_partial_assessment_leaves_out_is_named_by_the_callers_index_and_part(engine):
    # labs[0] is refused by the case contract (first round), labs[2] and labs[3] by normalisation (second
    # round, after labs[0] was removed): each is named as the caller numbered it, with the part at fault
    case = base_case(as_of="2025-03-10", labs=[
        lab("wbc", 3.0, "x" * 100), lab("anc", 0.8, time="2025-03-10T08:00:00Z"),
        lab("wbc", 3.0, "furlongs", time="2025-03-09T08:00:00Z"),
        lab("wbc", 3.1, "parsecs", time="2025-03-08T08:00:00Z")])
    a = engine.assess(case, partial=True)
    left_out = [(n.field, n.reason) for n in a.not_assessed]
    assert [f for f, _ in left_out] == ["labs[0]", "labs[2]", "labs[3]"], left_out
    assert left_out[0][1] == "unit: String should have at most 60 characters"
    assert "'furlongs'" in left_out[1][1] and "'parsecs'" in left_out[2][1]
    assert a.risk_tier.tier == "moderate"          # the ANC 0.8 the caller sent as labs[1] was assessed


@pytest.mark.parametrize("mg_day,urgency", [(50, "routine"), (84, "routine"), (100, "urgent"), (None, "urgent")])
def test_the_cpic_dose_step_is_routine_when_the_dose_is_already_within_cpics_reduced_range(engine, mg_day, urgency):
    """TPMT intermediate on mercaptopurine 0.71 mg/kg/day (70 kg) had an urgent 'adjust to CPIC' step (vignette round
    10): CPIC's reduced starting doses go up to 1.2 mg/kg/day (84 mg at 70 kg), 'dose reduction may not be
    recommended' below its normal dose. 1.43 mg/kg/day, or a dose not known, keeps it urgent."""
    med = {"name": "mercaptopurine", "start": "2025-01-01", **({"dose": {"value": mg_day, "unit": "mg/day"}}
                                                              if mg_day else {})}
    a = engine.assess(base_case(medications=[med], history={"tpmt": "intermediate", "nudt15": "normal"}))
    [step] = [s for s in a.steps if s.id == "thiopurine_dose_per_cpic"]
    assert step.urgency == urgency
