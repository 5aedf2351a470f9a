"""Engine behaviour stage by stage: parse and normalize errors, derivations, tiers and CTCAE at
every cutoff, trends, drugs and text, determinism."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leukodx.engine import CaseError
from leukodx.engine.render import to_json, to_text

from conftest import base_case, lab


def problems(engine, raw) -> list[str]:
    with pytest.raises(CaseError) as e:
        engine.assess(raw)
    return [str(p) for p in e.value.problems]


# ---- bad input: a clear error naming the field and the reason ------------------------------------

@pytest.mark.parametrize("raw,where,words", [
    ({}, "", "empty"),
    ("", "", "empty"),
    ("{\"labs\": [", "", "not valid JSON"),
    ("labs: [\n  - {test: wbc", "", "not valid YAML"),
    ("[1, 2]", "", "JSON object"),
    ({"labs": []}, "labs", "no lab values"),
    ({"patient": {"sex": "female"}}, "labs", "no lab values"),
    (base_case(labs=[lab("wbc", 3.0, "furlongs")]), "labs[0].unit", "not a count per volume"),
    (base_case(labs=[lab("wbc", 3.0, "blorps")]), "labs[0].unit", "unknown unit"),
    (base_case(labs=[lab("anc", 40, "%")]), "labs[0].unit", "percentage"),
    (base_case(labs=[lab("neutrophils_pct", 1.5, "10^9/L")]), "labs[0].unit", "absolute count"),
    (base_case(labs=[lab("wbc", 3.8, "/uL")]), "labs[0].value", "probably '10^9/L'"),
    (base_case(labs=[lab("wbc", 3100, "10^9/L")]), "labs[0].value", "probably '/uL'"),
    (base_case(labs=[lab("hemoglobin", 120, "g/dL")]), "labs[0].value", "probably 'g/L'"),
    (base_case(labs=[lab("wbc", -1.0)]), "labs[0].value", "negative"),
    (base_case(labs=[lab("wbc", "3.2")]), "labs[0].value", "must be a number"),
    (base_case(labs=[lab("wbc", True)]), "labs[0].value", "valid number"),
    (base_case(labs=[lab("wbc", float("nan"))]), "labs[0].value", "finite"),
    (base_case(labs=[lab("wbc", float("inf"))]), "labs[0].value", "finite"),
    ('{"labs": [{"test": "wbc", "value": NaN, "unit": "10^9/L"}]}', "", "NaN"),
    ('{"labs": [{"test": "wbc", "value": 1e309, "unit": "10^9/L"}]}', "labs[0].value", "finite"),
    ('{"id": "a", "id": "b", "labs": []}', "", "duplicated key"),
    ("id: a\nid: b\nlabs: []\n", "", "duplicated key"),
    (base_case(labs=[lab("neutrophils_pct", 70, "%"), lab("lymphocytes_pct", 40, "%")]), "labs", "exceed 100"),
    (base_case(labs=[lab("lymphocytes_pct", 140, "%")]), "labs[0].value", "percentage"),
    (base_case(as_of="2025-01-01", labs=[lab("wbc", 3.0)]), "labs[0].time", "future"),
    (base_case(medications=[{"name": "azathioprine", "start": "2026-01-01"}]), "medications[0].start", "future"),
    (base_case(history={"last_transfusion": "2030-01-01"}), "history.last_transfusion", "future"),
    (base_case(history={"tpmt": "*99/*99"}), "history.tpmt", "diplotype"),
    (base_case(history={"nudt15": "somewhat low"}), "history.nudt15", "phenotype"),
    (base_case(labs=[{"test": "ferritin", "value": 3, "unit": "ng/mL"}]), "labs[0].test", "unknown test"),
    (base_case(labs=[{"loinc": "2345-7", "value": 3, "unit": "mg/dL"}]), "labs[0].loinc", "unknown LOINC"),
    (base_case(labs=[{"value": 3, "unit": "10^9/L"}]), "labs[0]", "give `test` or `loinc`"),
    (base_case(labs=[{"test": "wbc", "value": 3}]), "labs[0].unit", "required"),
    (base_case(medications=[{"status": "active"}]), "medications[0]", "give `name` or `rxnorm`"),
    (base_case(patient={"sex": "f"}), "patient.sex", "female"),
    (base_case(surprise=1), "surprise", "unknown field"),
    (base_case(as_of="0000-01-01"), "as_of", ""),
    (base_case(labs=[lab("wbc", 3.0), lab("wbc", 3.5)]), "labs[1]", "second wbc"),
    (base_case(labs=[lab("wbc", 3.0, time=None), lab("wbc", 3.5, time=None)]), "labs", "without a time"),
    (base_case(medications=[{"name": "x", "start": "2025-02-01", "end": "2025-01-01"}]), "medications[0].end",
     "before start"),
    (base_case(history={"temperature_c": 52}), "history.temperature_c", "45"),
])
def test_bad_input_is_refused_with_field_and_reason(engine, raw, where, words):
    found = problems(engine, raw)
    assert any(p.startswith(where) and words.lower() in p.lower() for p in found), found


def test_every_problem_is_reported_not_just_the_first(engine):
    raw = base_case(labs=[lab("wbc", 3.0, "blorps"), lab("anc", -1), lab("hemoglobin", 130, "g/dL")],
                    history={"tpmt": "*99/*99"})
    found = problems(engine, raw)
    assert len(found) == 4, found


def test_deep_nesting_is_refused_cleanly(engine):
    deep = "[" * 100000 + "]" * 100000
    assert problems(engine, '{"labs": ' + deep + "}")


def test_yaml_aliases_are_refused(engine):
    text = "a: &x [1, 2]\nb: *x\nlabs: []\n"
    assert any("alias" in p for p in problems(engine, text))


def test_unicode_tricks_in_drug_names_still_match(engine):
    for name in ["Aza\u200bthioprine", "ＩＭＵＲＡＮ", "imuran\u00ad", "  AZATHIOPRINE 50 mg tablet "]:
        a = engine.assess(base_case(labs=[lab("wbc", 2.5), lab("anc", 1.0)],
                                    medications=[{"name": name, "start": "2025-01-01"}]))
        assert "thiopurine_myelotoxicity" in [c.id for c in a.causes], name


def test_unknown_drug_and_condition_are_reported_not_dropped(engine):
    a = engine.assess(base_case(medications=[{"name": "unobtainium"}], history={"conditions": ["gout of the soul"]}))
    assert any("unobtainium" in w for w in a.warnings)
    assert any("gout of the soul" in w for w in a.warnings)


def test_negative_zero_is_zero(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 0.5), lab("anc", -0.0)]))
    assert a.risk_tier.anc == 0.0 and "-0.0" not in to_json(a)
    assert a.risk_tier.tier == "profound"


# ---- tiers and CTCAE exactly on every cutoff -------------------------------------------------------

@pytest.mark.parametrize("anc,tier,grade", [
    (3.0, "normal", 0), (1.5, "normal", 0), (1.4999, "mild", 2), (1.0, "mild", 2), (0.9999, "moderate", 3),
    (0.5, "moderate", 3), (0.4999, "severe", 4), (0.1, "severe", 4), (0.0999, "profound", 4), (0.0, "profound", 4),
])
def test_tier_and_ctcae_anc_at_cutoffs(engine, anc, tier, grade):
    a = engine.assess(base_case(labs=[lab("wbc", 5.0), lab("anc", anc)]))
    assert a.risk_tier.tier == tier
    assert a.ctcae.anc.grade == grade


@pytest.mark.parametrize("anc,grade", [(1.5, 0), (1.0, 1), (0.9999, 2), (0.5, 2), (0.4999, 3), (0.1, 3), (0.0999, 4)])
def test_ctcae_v6_neutrophil_grades(engine, anc, grade):
    a = engine.assess(base_case(labs=[lab("wbc", 5.0), lab("anc", anc)]), ctcae_version="6.0")
    assert a.ctcae.version == "6.0" and a.ctcae.anc.grade == grade


@pytest.mark.parametrize("wbc,grade", [(4.0, 0), (3.99, 1), (3.0, 1), (2.99, 2), (2.0, 2), (1.99, 3), (1.0, 3),
                                       (0.99, 4)])
def test_ctcae_wbc_at_cutoffs(engine, wbc, grade):
    assert engine.assess(base_case(labs=[lab("wbc", wbc)])).ctcae.wbc.grade == grade


@pytest.mark.parametrize("lymph,grade", [(1.0, 0), (0.99, 1), (0.8, 1), (0.79, 2), (0.5, 2), (0.49, 3), (0.2, 3),
                                         (0.19, 4)])
def test_ctcae_lymphocytes_at_cutoffs(engine, lymph, grade):
    assert engine.assess(base_case(labs=[lab("lymphocytes", lymph)])).ctcae.lymphocytes.grade == grade


def test_anc_grade_1_needs_the_labs_lln(engine):
    without = engine.assess(base_case(labs=[lab("anc", 1.8)]))
    with_lln = engine.assess(base_case(labs=[lab("anc", 1.8, lln=2.0)]))
    assert without.ctcae.anc.grade == 0 and "LLN" in without.ctcae.anc.criterion
    assert with_lln.ctcae.anc.grade == 1


def test_lab_lln_moves_the_leukopenia_cutoff(engine):
    assert "leukopenia" in [f.id for f in engine.assess(base_case(labs=[lab("wbc", 4.2, lln=4.5)])).findings]
    assert "leukopenia" not in [f.id for f in engine.assess(base_case(labs=[lab("wbc", 3.6, lln=3.5)])).findings]


def test_tier_unknown_without_any_anc(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 2.0)]))
    assert a.risk_tier.tier == "unknown" and a.risk_tier.anc is None
    assert any("ANC" in m.item for m in a.missing_data)
    assert "repeat_cbc_with_differential" in [s.id for s in a.steps]


# ---- derivations -------------------------------------------------------------------------------

def test_anc_is_derived_from_wbc_and_segs_plus_bands(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 3.2), lab("neutrophils_pct", 40, "%"), lab("bands_pct", 5, "%")]))
    assert a.risk_tier.anc == pytest.approx(1.44) and a.risk_tier.anc_derived
    assert a.risk_tier.tier == "mild" and a.ctcae.anc.grade == 2 and a.ctcae.wbc.grade == 1
    derived = [x for x in a.labs if x.derived]
    assert derived and derived[0].test == "anc" and "40" in derived[0].derivation


def test_lymphocytes_are_derived_too(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("lymphocytes_pct", 30, "%")]))
    assert "lymphopenia" in [f.id for f in a.findings]
    assert a.ctcae.lymphocytes.value == pytest.approx(0.6)


def test_disagreeing_absolute_and_computed_anc_is_warned(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 4.0), lab("anc", 1.0), lab("neutrophils_pct", 60, "%")]))
    assert any("differ by more than 10%" in w for w in a.warnings)
    assert a.risk_tier.anc == 1.0 and not a.risk_tier.anc_derived
    quiet = engine.assess(base_case(labs=[lab("wbc", 4.0), lab("anc", 2.3), lab("neutrophils_pct", 60, "%")]))
    assert not any("differ" in w for w in quiet.warnings)


def test_normalized_labs_keep_their_originals(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 3100, "/uL"), {"loinc": "718-7", "value": 6.2, "unit": "mmol/L",
                                                                 "time": "2025-03-10T08:00:00Z"}]))
    wbc = next(x for x in a.labs if x.test == "wbc")
    hb = next(x for x in a.labs if x.test == "hemoglobin")
    assert wbc.value == pytest.approx(3.1) and wbc.original.value == 3100 and wbc.original.unit == "/uL"
    assert hb.value == pytest.approx(9.99, abs=0.01) and hb.original.loinc == "718-7"


def test_latest_sample_is_current_and_series_make_trends(engine):
    labs = [lab("anc", 3.0, time="2025-01-01T08:00:00Z"), lab("anc", 2.0, time="2025-02-01T08:00:00Z"),
            lab("anc", 1.2, time="2025-03-01T08:00:00Z")]
    a = engine.assess(base_case(as_of=None, labs=labs))
    assert a.risk_tier.anc == 1.2 and str(a.as_of) == "2025-03-01"
    assert "falling_counts" in [f.id for f in a.findings]


def test_stable_chronic_and_cyclic_patterns(engine):
    stable = [lab("anc", v, time=f"2025-{m:02d}-01T08:00:00Z") for m, v in ((1, 1.2), (2, 1.3), (3, 1.2), (4, 1.25))]
    a = engine.assess(base_case(as_of="2025-04-01", labs=stable))
    assert "stable_chronic" in [f.id for f in a.findings]
    cyclic = [lab("anc", v, time=t) for t, v in [("2025-01-01T08:00:00Z", 0.2), ("2025-01-11T08:00:00Z", 2.5),
                                                 ("2025-01-22T08:00:00Z", 0.3), ("2025-02-01T08:00:00Z", 2.2),
                                                 ("2025-02-12T08:00:00Z", 0.25)]]
    b = engine.assess(base_case(as_of="2025-02-12", labs=cyclic))
    assert "cyclic_pattern" in [f.id for f in b.findings]
    assert b.causes[0].id == "cyclic_neutropenia"


# ---- reasoning products ----------------------------------------------------------------------------

def test_febrile_neutropenia_is_an_emergency(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.45)], history={"temperature_c": 38.4}))
    assert [x.id for x in a.alerts][:2] == ["febrile_neutropenia", "agranulocytosis"]
    assert a.steps[0].id == "emergency_febrile_neutropenia_care" and a.steps[0].urgency == "immediate"


def test_steps_are_ordered_by_urgency(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.3)], history={"temperature_c": 38.5}))
    order = {"immediate": 0, "urgent": 1, "routine": 2}
    assert [order[s.urgency] for s in a.steps] == sorted(order[s.urgency] for s in a.steps)


def test_duffy_null_isolated_mild_neutropenia_no_marrow(engine):
    a = engine.assess(base_case(patient={"sex": "female", "age_years": 30, "duffy_null": True},
                                labs=[lab("wbc", 3.2), lab("anc", 1.2), lab("hemoglobin", 13, "g/dL"),
                                      lab("platelets", 220)]))
    assert a.causes[0].id == "duffy_null_associated_neutrophil_count"
    assert "bone_marrow_examination" not in [s.id for s in a.steps]
    assert a.risk_tier.duffy_null_note and "merz_2023" in a.risk_tier.sources


def test_causes_without_support_are_not_listed_and_each_item_has_sources(engine):
    a = engine.assess(base_case())
    assert a.causes == [] and a.alerts == [] and a.risk_tier.tier == "normal"
    b = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", 0.8)],
                                medications=[{"name": "Bactrim", "start": "2025-02-10"}]))
    for item in [*b.causes, *b.steps, *b.alerts, *b.findings]:
        assert item.sources and all(s in b.sources for s in item.sources)
    assert b.causes[0].id == "idiosyncratic_drug_agranulocytosis"
    assert b.causes[0].agents == ["trimethoprim-sulfamethoxazole"] or b.causes[0].agents


def test_trace_lists_fired_rules_with_the_facts_they_read(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 3.0), lab("anc", 1.2)]))
    t = next(x for x in a.trace if x.rule == "findings.neutropenia")
    assert t.facts == {"anc_max": 1.2}


def test_the_output_says_it_supports_clinical_judgement(engine):
    a = engine.assess(base_case())
    assert "does not replace clinical judgement" in a.disclaimer
    assert "does not replace clinical judgement" in to_text(a)


# ---- determinism and invariance --------------------------------------------------------------------

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


@given(st.floats(min_value=0, max_value=3, allow_nan=False), st.floats(min_value=0, max_value=3, allow_nan=False))
@settings(max_examples=80, deadline=None)
def test_lower_anc_never_gives_a_milder_tier(engine, x, y):
    rank = ["normal", "mild", "moderate", "severe", "profound"]
    lo, hi = sorted((round(x, 2), round(y, 2)))   # counts are reported to 2 decimals
    t_lo = engine.assess(base_case(labs=[lab("anc", lo)])).risk_tier.tier
    t_hi = engine.assess(base_case(labs=[lab("anc", hi)])).risk_tier.tier
    assert rank.index(t_lo) >= rank.index(t_hi)


def test_durable_and_plain_backends_give_the_same_assessment(engine, plain_engine):
    assert to_json(engine.assess(RICH)) == to_json(plain_engine.assess(RICH))


@pytest.mark.parametrize("text,expected,absent", [
    ("allergic to all penicillins", set(), {"acute_leukemia"}),
    ("ALL in remission", {"acute_leukemia", "cancer"}, set()),
    ("uses hearing aids", set(), {"hiv"}),
    ("hiv infection, on ART", {"hiv", "viral_infection"}, set()),
    ("Crohn's disease", {"crohns_disease", "inflammatory_bowel_disease"}, set()),
    ("cap on a tooth", set(), {"pneumonia"}),
])
def test_condition_vocabulary_does_not_mistake_words_for_abbreviations(kb, text, expected, absent):
    from leukodx.engine.vocabulary import match_conditions
    found = set(match_conditions(kb, text))
    assert expected <= found and not (absent & found)


@pytest.mark.parametrize("text,organ", [("kidney allograft", "kidney"), ("allo-HCT", "hsct"),
                                        ("allogeneic stem cell transplant", "hsct"), ("renal", "kidney")])
def test_transplant_organs(kb, text, organ):
    from leukodx.engine.vocabulary import match_organ
    assert match_organ(kb, text) == organ


def test_children_are_warned_that_the_cutoffs_are_for_adults(engine):
    child = engine.assess(base_case(patient={"age_years": 6, "sex": "female"}))
    infant = engine.assess(base_case(patient={"age_years": 0.5, "sex": "male"}))
    adult = engine.assess(base_case())
    assert any("children" in w for w in child.warnings) and not any("infant" in w for w in child.warnings)
    assert any("infant" in w for w in infant.warnings)
    assert not any("children" in w for w in adult.warnings)
