"""Derive (engine/derive.py): from normalized labs to the facts the rules read. The neutrophil risk
tier and CTCAE grades exactly on every cutoff, the lab's LLN, ANC and lymphocytes computed from the
differential, the current sample and the series (falling, stable chronic, cyclic), age warnings."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import base_case, lab


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


@given(st.floats(min_value=0, max_value=3, allow_nan=False), st.floats(min_value=0, max_value=3, allow_nan=False))
@settings(max_examples=80, deadline=None)
def test_lower_anc_never_gives_a_milder_tier(engine, x, y):
    rank = ["normal", "mild", "moderate", "severe", "profound"]
    lo, hi = sorted((round(x, 2), round(y, 2)))   # counts are reported to 2 decimals
    t_lo = engine.assess(base_case(labs=[lab("anc", lo)])).risk_tier.tier
    t_hi = engine.assess(base_case(labs=[lab("anc", hi)])).risk_tier.tier
    assert rank.index(t_lo) >= rank.index(t_hi)


# ---- counts derived from the differential --------------------------------------------------------

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


# ---- the current sample and the series -----------------------------------------------------------

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


# ---- the patient -------------------------------------------------------------------------------------

def test_children_are_judged_against_their_age_not_adult_cutoffs(engine):
    """WHO 2024 anaemia cut-offs by age; no adult WBC limit for a child without the lab's own (issue 14.4)."""
    def hb_limit(a):
        return next((r.lln, r.basis) for r in a.reference_limits if r.test == "hemoglobin")
    child = engine.assess(base_case(patient={"age_years": 6, "sex": "female"}))
    infant = engine.assess(base_case(patient={"age_years": 0.5, "sex": "male"}))
    adult = engine.assess(base_case())
    assert hb_limit(child) == (11.5, "WHO 2024, 5-11 years") and hb_limit(infant)[0] == 10.5
    assert hb_limit(adult) == (12.0, "WHO 2024, non-pregnant women 15 years and older (also for other or unknown "
                                     "sex, so that anaemia is not missed)")
    no_wbc_limit = "White blood cell count: no lower limit for a patient of this age"
    assert any(no_wbc_limit in w for w in child.warnings) and not any(no_wbc_limit in w for w in adult.warnings)
    assert any("infant" in w for w in infant.warnings) and not any("infant" in w for w in child.warnings)


def test_a_three_year_old_with_hb_11_4_is_not_anaemic_and_the_labs_own_limit_wins(engine):
    labs = [lab("wbc", 7.0), lab("anc", 2.5), lab("hemoglobin", 11.4, "g/dL"), lab("platelets", 250)]
    three = engine.assess(base_case(patient={"age_years": 3, "sex": "female"}, labs=labs))
    assert "anemia" not in {f.id for f in three.findings}          # WHO: 11.0 at 24-59 months
    own = [*labs[:2], lab("hemoglobin", 11.4, "g/dL", lln=11.5), labs[3]]
    with_lab = engine.assess(base_case(patient={"age_years": 3, "sex": "female"}, labs=own))
    assert "anemia" in {f.id for f in with_lab.findings}
    assert [(r.test, r.basis) for r in with_lab.reference_limits if r.test == "hemoglobin"] == \
        [("hemoglobin", "the lab's lower limit")]


def test_pregnancy_lowers_the_anaemia_cutoff(engine):
    labs = [lab("wbc", 7.0), lab("anc", 4.0), lab("hemoglobin", 11.4, "g/dL"), lab("platelets", 250)]
    pregnant = engine.assess(base_case(labs=labs, history={"conditions": ["pregnancy, 28 weeks"]}))
    not_pregnant = engine.assess(base_case(labs=labs))
    assert "anemia" not in {f.id for f in pregnant.findings} and "anemia" in {f.id for f in not_pregnant.findings}


def test_a_childs_wbc_series_without_a_lab_limit_still_gives_trends(engine):
    labs = [lab("wbc", 9.0, time="2025-03-01T08:00:00Z"), lab("wbc", 3.0)]
    a = engine.assess(base_case(patient={"age_years": 4, "sex": "male"}, labs=labs))
    facts = {k: v for t in a.trace for k, v in t.facts.items()}
    assert a.risk_tier.tier == "unknown" and "low_span_days" not in facts


@pytest.mark.parametrize("comparator,value,tier,alerts", [
    ("<", 0.5, "severe", {"agranulocytosis"}),           # on the cutoff, a bound below it is the worse tier
    ("<", 0.1, "profound", {"agranulocytosis", "profound_neutropenia"}),
    ("<=", 1.0, "moderate", set()),
    (">", 1.0, "mild", set()),                          # above the bound: judged as the bound (the worse side)
    (None, 0.5, "moderate", set()),                     # a measured 0.5 is moderate (a cutoff's value is milder)
])
def test_a_count_reported_as_a_bound_is_judged_on_the_worse_side(engine, comparator, value, tier, alerts):
    """An ANC reported as '<0.5' had been graded as 0.5, moderate, with no agranulocytosis alert (FHIR red-team)."""
    anc = {**lab("anc", value), **({"comparator": comparator} if comparator else {})}
    a = engine.assess(base_case(labs=[lab("wbc", 2.0), anc]))
    assert a.risk_tier.tier == tier and {x.id for x in a.alerts} == alerts
    shown = next(x for x in a.labs if x.test == "anc")
    assert (shown.value, shown.comparator, a.risk_tier.anc) == (value, comparator, value)
    if comparator:
        assert f"{comparator}{value:g}: a bound" in a.risk_tier.basis


def test_an_anc_derived_from_a_wbc_reported_as_a_bound_is_the_tier_or_worse(engine):
    """WBC '<0.5' with 40% neutrophils gave ANC 0.2, severe, as if measured: the true ANC is below 0.2 and may
    be profound."""
    a = engine.assess(base_case(labs=[lab("wbc", 0.5, comparator="<"), lab("neutrophils_pct", 40, "%")]))
    assert (a.risk_tier.tier, a.risk_tier.tier_at_least) == ("severe", "severe")
    assert "bound" in a.risk_tier.basis and "severe or worse" in a.risk_tier.basis
    plain = engine.assess(base_case(labs=[lab("wbc", 0.5), lab("neutrophils_pct", 40, "%")]))
    assert (plain.risk_tier.tier, plain.risk_tier.tier_at_least) == ("severe", None)


def test_a_count_recovering_from_its_nadir_is_not_falling(engine):
    """ANC 4.0, then 0.1, 0.6 and now 1.3 (recovering after a drug was stopped) had been called falling: the
    fall was measured from the 90-day maximum whatever came after the nadir."""
    def findings(*values):
        days = ["2025-01-10", "2025-02-01", "2025-02-20", "2025-03-10"][-len(values):]
        labs = [lab("anc", v, time=f"{d}T08:00:00Z") for v, d in zip(values, days)]
        labs += [lab("wbc", 5.0, time="2025-03-10T08:00:00Z")]
        return {f.id for f in engine.assess(base_case(labs=labs)).findings}
    assert "falling_counts" not in findings(4.0, 0.1, 0.6, 1.3)
    assert "falling_counts" in findings(4.0, 3.9, 1.0, 1.1)       # a small uptick after a fall is still a fall
    assert "falling_counts" in findings(4.0, 3.8, 2.0)


def test_a_value_dated_by_its_day_alone_joins_that_days_only_timed_draw(engine):
    """A WBC of 1.8 dated 2025-03-10 (no time of day; as JSON text, as an EHR sends it) and neutrophils 15 % at 06:26:
    they had not been paired, and an ANC of 0.27 went unseen. With two timed draws that day, which one is unknown:
    not paired."""
    day = [{"test": "wbc", "value": 1.8, "unit": "10^9/L", "time": "2025-03-10"},
           lab("neutrophils_pct", 15, "%", time="2025-03-10T06:26:00Z")]
    a = engine.assess(base_case(labs=day))
    assert (a.risk_tier.tier, a.risk_tier.anc) == ("severe", 0.27)
    assert any("dated 2025-03-10 with no time of day" in w for w in a.warnings)
    two = day + [lab("neutrophils_pct", 60, "%", time="2025-03-10T18:00:00Z")]
    unpaired = engine.assess(base_case(labs=two)).risk_tier
    assert unpaired.anc is None            # said, with the ANC it would give (the latest percentage: 60 %)
    assert "A neutrophil percentage of 60 % drawn 2025-03-10 18:00 UTC could not be tied" in unpaired.basis
    assert "the ANC is 1.1 x10^9/L" in unpaired.basis
    # the laboratory's own day: 2025-03-09 22:00 at UTC-8 is 06:00 UTC on the 10th, the WBC dated the 9th
    local = [{"test": "wbc", "value": 1.8, "unit": "10^9/L", "time": "2025-03-09"},
             lab("neutrophils_pct", 15, "%", time="2025-03-09T22:00:00-08:00")]
    assert engine.assess(base_case(labs=local)).risk_tier.anc == 0.27


def test_a_childs_wbc_with_no_limit_for_the_age_is_not_graded_against_the_adult_limit(engine):
    """A 9-month-old's WBC of 3.0 with no lower limit from the lab had been "CTCAE grade 1 (< LLN 4)" beside the
    warning that no limit for the age was known: grade 1 needs the LLN; grade 2 (< 3.0) does not."""
    baby = {"age_years": 0.75, "sex": "male", "weight_kg": 9}
    grade = engine.assess(base_case(patient=baby, labs=[lab("wbc", 3.0)])).ctcae.wbc
    assert grade.grade == 0 and "grade 1 needs the lab's LLN" in grade.criterion
    assert engine.assess(base_case(patient=baby, labs=[lab("wbc", 2.5)])).ctcae.wbc.grade == 2
    assert engine.assess(base_case(patient=baby, labs=[lab("wbc", 3.0, lln=6.0)])).ctcae.wbc.grade == 1


def test_a_neutrophil_percentage_of_all_neutrophils_is_not_added_to_a_band_percentage(engine):
    """FHIR red-team round 26: an automated neutrophil percentage (LOINC 770-8, band forms included) and a manual band
    percentage (764-1) had been added: 65 + 15 = 80%, an ANC of 1.6 (normal) where it is 1.3 at most. A segmented
    percentage (769-0) still gets its bands added."""
    def anc(code: str) -> float:
        a = engine.assess(base_case(labs=[lab("wbc", 2.0), {"loinc": code, "value": 65, "unit": "%",
                                                            "time": "2025-03-10T08:00:00Z"}, lab("bands_pct", 15, "%")]))
        return a.risk_tier.anc
    assert anc("770-8") == 1.3
    assert anc("769-0") == 1.6


def test_a_second_differential_of_the_draw_with_no_count_of_its_own_is_used_when_lower(engine):
    """A manual differential resulted 90 minutes after the analyser's (segmented 10%, bands 3%), no specimen in
    common: it had been left out unnamed, the automated 66% setting the tier (ANC 1.98, normal). The lower stands,
    said; a higher one leaves the count as it was."""
    def case(seg: float):
        return base_case(labs=[lab("wbc", 3.0), {"loinc": "770-8", "value": 66, "unit": "%", "time": "2025-03-10T08:00:00Z"},
                               {"loinc": "769-0", "value": seg, "unit": "%", "time": "2025-03-10T09:30:00Z"},
                               lab("bands_pct", 3, "%", time="2025-03-10T09:30:00Z")])
    a = engine.assess(case(10))
    assert (a.risk_tier.tier, a.risk_tier.anc) == ("severe", 0.39)
    assert any(w.startswith("ANC: a differential of 2025-03-10 09:30 with no count of its own") for w in a.warnings)
    b = engine.assess(case(63))
    assert (b.risk_tier.tier, b.risk_tier.anc) == ("normal", 1.98)
    assert not any("with no count of its own" in w for w in b.warnings)
