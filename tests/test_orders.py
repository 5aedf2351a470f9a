"""The engine's order check (engine/orders.py): a thiopurine against TPMT and NUDT15 (CPIC 2018 tables,
2020 rows, March 2024 update), clozapine against the label's ANC thresholds. Expected values are
CPIC's and the label's, not the engine's output."""
from __future__ import annotations

import pytest

from leukodx.engine import OrderInput

from conftest import base_case, lab

AZA = OrderInput(key="o1", name="azathioprine")


def check(engine, order=AZA, assessment=None, tpmt=None, nudt15=None):
    [c] = engine.check_orders([order], assessment, tpmt, nudt15)
    return c


@pytest.mark.parametrize("tpmt,nudt15,priority,factor,times,percent", [
    ("normal", "normal", "info", None, None, (100, 100)),              # normal starting dose
    ("intermediate", "normal", "warning", 0.8, None, (30, 80)),        # CPIC: 30-80% of normal
    ("normal", "possible_intermediate", "warning", 0.8, None, (30, 80)),
    ("intermediate", "intermediate", "warning", 0.5, None, (20, 50)),  # CPIC 2024 update: 20-50%
    ("poor", "normal", "critical", 0.1, 3, (10, 10)),                  # 10-fold, thrice weekly (malignancy)
    ("normal", "poor", "critical", 0.1, None, (10, 10)),               # azathioprine: 10-fold daily (malignancy)
])
def test_thiopurine_dose_changes_follow_cpic(engine, tpmt, nudt15, priority, factor, times, percent):
    c = check(engine, tpmt=tpmt, nudt15=nudt15)
    assert (c.topic, c.priority) == ("thiopurine_pgx", priority)
    assert c.dose_change.percent_range == percent
    assert (c.dose_change.factor, c.dose_change.times) == (factor, times)
    if times:
        assert c.dose_change.per == "week"


def test_thioguanine_intermediate_range_is_50_to_80(engine):
    c = check(engine, OrderInput(key="t", name="thioguanine"), tpmt="intermediate", nudt15="normal")
    assert c.dose_change.percent_range == (50, 80) and c.dose_change.factor == 0.8


@pytest.mark.parametrize("tpmt", ["normal", "intermediate", None])
def test_thioguanine_for_a_nudt15_poor_metabolizer_is_25_percent_in_malignancy(engine, tpmt):
    """CPIC's thioguanine table, NUDT15 poor metabolizer (TPMT normal, intermediate or not assigned): "reduce
    starting doses to 25% of normal dose ... For non-malignant conditions, consider alternative non-thiopurine
    immunosuppressant therapy". The check had offered no dose, and with TPMT unknown read "CPIC advises CPIC
    advises"."""
    c = check(engine, OrderInput(key="t", name="thioguanine", indication="acute myeloid leukemia"),
              tpmt=tpmt, nudt15="poor")
    assert (c.priority, c.adjust, c.cancel) == ("critical", "recommended", "no")
    assert (c.dose_change.factor, c.dose_change.percent_range) == (0.25, (25, 25))
    assert "CPIC advises CPIC" not in c.detail
    c = check(engine, OrderInput(key="t", name="thioguanine", indication="Crohn's disease"), tpmt=tpmt, nudt15="poor")
    assert (c.adjust, c.cancel) == ("no", "recommended")


def test_the_2024_range_comes_before_the_superseded_2020_text(engine):
    c = check(engine, tpmt="intermediate", nudt15="intermediate")
    assert c.detail.index("20-50%") < c.detail.index("30%-80%")


def test_unknown_status_asks_for_genotyping(engine):
    c = check(engine)
    assert (c.priority, c.genotype, c.adjust, c.cancel, c.dose_change) == ("warning", "recommended", "no", "no", None)
    assert c.genes_to_test == ["TPMT", "NUDT15"]


def test_an_intermediate_metabolizer_with_the_other_gene_untested_starts_reduced(engine):
    """TPMT intermediate with no NUDT15 result had been 'genotype before dosing' with the full dose standing: CPIC's
    intermediate start (30-80%) at least, and NUDT15 genotyped as well."""
    c = check(engine, tpmt="intermediate")
    assert (c.priority, c.adjust, c.genotype) == ("warning", "recommended", "possible")
    assert c.dose_change is not None and c.dose_change.percent_range == (30, 80)
    assert "NUDT15 unknown" in c.summary and "Genotype NUDT15" in c.detail
    assert c.genes_to_test == ["NUDT15"]        # TPMT is known: the suggestion orders NUDT15 alone
    assert check(engine, tpmt="normal", nudt15="normal").genes_to_test == []


def test_a_poor_metabolizer_with_the_other_gene_untested_is_still_critical(engine):
    """Genotyping the other gene is offered, never the recommended action: it does not change a poor metabolizer's
    advice (the one-click recommended suggestion had been genotyping, leaving the full dose in place)."""
    c = check(engine, tpmt="poor")
    assert c.priority == "critical" and c.genotype == "possible"
    assert (c.dose_change.factor, c.dose_change.times) == (0.1, 3)


@pytest.mark.parametrize("indication,adjust,cancel", [
    ("acute lymphoblastic leukemia", "recommended", "no"),   # malignancy: the reduced dose
    ("Crohn's disease", "no", "recommended"),                 # non-malignant: an alternative drug
    (None, "possible", "possible"),                           # indication unknown: the clinician chooses
])
def test_a_poor_metabolizer_by_indication(engine, indication, adjust, cancel):
    c = check(engine, OrderInput(key="o", name="mercaptopurine", indication=indication), tpmt="poor", nudt15="normal")
    assert (c.adjust, c.cancel) == (adjust, cancel)


def test_diplotypes_are_resolved_and_unreadable_ones_count_as_unknown(engine):
    assert check(engine, tpmt="*3A/*3A", nudt15="*1/*1").priority == "critical"
    assert check(engine, tpmt="*99/*98", nudt15="*1/*1").genotype == "recommended"


def test_phenotypes_come_from_the_assessment_when_there_is_one(engine):
    a = engine.assess(base_case(history={"tpmt": "poor", "nudt15": "normal"}))
    c = check(engine, assessment=a, tpmt="normal", nudt15="normal")   # the results given are not used
    assert c.priority == "critical"


CLOZ = OrderInput(key="c1", name="Clozaril")


@pytest.mark.parametrize("anc,priority", [(0.8, "critical"), (2.0, "info")])   # label: interrupt below 1.0
def test_clozapine_against_the_label_threshold(engine, anc, priority):
    a = engine.assess(base_case(labs=[lab("wbc", 4.0), lab("anc", anc)],
                                medications=[{"name": "clozapine", "start": "2024-01-01"}]))
    c = check(engine, CLOZ, a)
    assert (c.topic, c.priority) == ("clozapine_anc", priority)
    assert (c.cancel == "recommended") is (priority == "critical")
    # the patient's own assessment says it as loudly as the order check: at 0.8 the label interrupts clozapine today
    # (the patient-view card had been a warning)
    assert a.priority == ("critical" if anc < 1.0 else "info")


def test_clozapine_below_a_bound_says_the_bound(engine):
    """An ANC reported as "<0.5" had been 'ANC 0.5 x10^9/L is below the clozapine threshold': 0.5 is not below 0.5."""
    a = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", 0.5, comparator="<")],
                                medications=[{"name": "clozapine", "start": "2024-01-01"}]))
    c = check(engine, CLOZ, a)
    assert c.priority == "critical" and c.summary.startswith("ANC <0.5 x10^9/L is below the clozapine threshold")


def test_clozapine_after_an_anc_below_0_5_the_day_before_is_not_started(engine):
    """ANC 0.3 yesterday evening and 1.6 today: the clozapine order had been 'may proceed' (red-team round 13). The
    low count is not set aside by a higher one hours later: the order waits for a repeat count."""
    a = engine.assess(base_case(labs=[lab("wbc", 1.8, time="2025-03-09T20:00:00Z"), lab("anc", 0.3, time="2025-03-09T20:00:00Z"),
                                      lab("wbc", 3.1), lab("anc", 1.6)]))
    c = check(engine, CLOZ, a)
    assert (c.priority, c.cancel) == ("critical", "recommended")
    assert c.summary.startswith("An ANC below 0.5 x10^9/L in the 48 hours before the current count: do not start")


def test_clozapine_without_a_current_anc_asks_for_a_baseline(engine):
    a = engine.assess(base_case(labs=[lab("hemoglobin", 13.0, "g/dL")]))
    c = check(engine, CLOZ, a)
    assert c.priority == "warning" and "at least 1.5" in c.detail and "at least 1" in c.detail


EARLIER_COURSE = {"name": "clozapine", "status": "stopped", "start": "2024-01-10", "end": "2024-02-20"}
SEVERE_ON_IT = [lab("anc", 0.3, time="2024-02-19T08:00:00Z"), lab("wbc", 1.5, time="2024-02-19T08:00:00Z")]


@pytest.mark.parametrize("earlier_anc, flagged", [(0.3, True), (0.49, True), (0.5, False), (0.8, False)])
def test_clozapine_ordered_again_after_a_severe_count_on_an_earlier_course(engine, earlier_anc, flagged):
    """Clozapine label (general population): an ANC below 0.5 on clozapine means no rechallenge unless the
    benefit outweighs the risk; 0.5-1.0 means interrupt, and treatment may resume. The order being written
    (a new course today) is checked against the earlier course's counts, whatever the current ANC."""
    a = engine.assess(base_case(labs=[lab("anc", earlier_anc, time="2024-02-19T08:00:00Z"), lab("wbc", 4.0),
                                      lab("anc", 2.5)],
                                medications=[EARLIER_COURSE, {"name": "clozapine", "start": "2025-03-10"}]))
    assert ("clozapine_rechallenge" in [x.id for x in a.alerts]) is flagged
    c = check(engine, CLOZ, a)
    assert c.priority == ("warning" if flagged else "info")
    assert c.summary.startswith("An earlier ANC below 0.5 on clozapine") is flagged
    assert c.cancel == "no"


def test_benign_ethnic_neutropenia_gets_the_no_rechallenge_advice_below_0_5_too(engine):
    """PMC9243911 Table 7 (BEN), severe neutropenia below 500/uL: interrupt, do not rechallenge unless the prescriber
    determines benefits outweigh risks. A Duffy-null patient restarted after an ANC of 0.3 on clozapine had been
    'may proceed', and a current 0.45 never said 'no rechallenge' (red-team round 11)."""
    ben = {"age_years": 40, "sex": "male", "weight_kg": 80, "duffy_null": True}
    again = engine.assess(base_case(patient=ben, labs=[lab("anc", 0.3, time="2024-02-19T08:00:00Z"), lab("wbc", 4.0),
                                                       lab("anc", 2.5)],
                                    medications=[EARLIER_COURSE, {"name": "clozapine", "start": "2025-03-10"}]))
    assert "clozapine_rechallenge" in [x.id for x in again.alerts]
    assert check(engine, CLOZ, again).summary.startswith("An earlier ANC below 0.5 on clozapine")
    now = engine.assess(base_case(patient=ben, labs=[lab("wbc", 2.0), lab("anc", 0.45)],
                                  medications=[{"name": "clozapine", "start": "2024-06-01"}]))
    assert {"clozapine_no_rechallenge", "clozapine_neutropenia"} <= {x.id for x in now.alerts}
    moderate = engine.assess(base_case(patient=ben, labs=[lab("wbc", 2.5), lab("anc", 0.8)],
                                       medications=[{"name": "clozapine", "start": "2024-06-01"}]))
    assert "clozapine_no_rechallenge" not in [x.id for x in moderate.alerts]      # BEN 0.5-1.0: continue


def test_a_severe_count_before_clozapine_or_on_its_first_day_is_not_a_rechallenge(engine):
    """The count of the day a course starts is its baseline (as for a count low before a drug started); one
    from before any clozapine is not a count on clozapine."""
    for start in ("2024-02-19", "2024-03-01"):
        a = engine.assess(base_case(labs=[*SEVERE_ON_IT, lab("wbc", 4.0), lab("anc", 2.5)],
                                    medications=[{"name": "clozapine", "start": start}]))
        assert "clozapine_rechallenge" not in [x.id for x in a.alerts], start


def test_clozapine_rechallenge_with_no_current_anc_also_asks_for_a_baseline(engine):
    a = engine.assess(base_case(labs=[*SEVERE_ON_IT, lab("hemoglobin", 13.0, "g/dL")],
                                medications=[EARLIER_COURSE, {"name": "clozapine", "start": "2025-03-10"}]))
    c = check(engine, CLOZ, a)
    assert c.summary.startswith("An earlier ANC below 0.5 on clozapine")
    assert "not to rechallenge" in c.detail and "baseline ANC of at least 1.5" in c.detail


def test_a_current_count_below_the_threshold_still_says_interrupt_after_an_earlier_severe_one(engine):
    a = engine.assess(base_case(labs=[*SEVERE_ON_IT, lab("wbc", 2.0), lab("anc", 0.7)],
                                medications=[EARLIER_COURSE, {"name": "clozapine", "start": "2025-02-01"}]))
    assert {"clozapine_rechallenge", "clozapine_neutropenia"} <= {x.id for x in a.alerts}
    c = check(engine, CLOZ, a)
    assert (c.priority, c.cancel) == ("critical", "recommended")


def test_other_drugs_get_no_check(engine):
    assert engine.check_orders([OrderInput(key="x", name="amoxicillin"), OrderInput(key="y", name="zzz")], None) == []



def test_a_drug_leukodx_does_not_know_is_named_when_something_is_at_stake(engine):
    """Imurel (a European brand of azathioprine) signed for a TPMT poor metaboliser had no card: a drug none of
    leukodx's names matches is said, for a patient with a reduced TPMT or NUDT15 function or a low count, to be
    unchecked; for anyone else it is not (most drugs ordered are none of leukodx's business)."""
    imurel = OrderInput(key="o", name="Imurel 50 mg comprimidos")
    c = check(engine, imurel, tpmt="*3A/*3A", nudt15="*1/*1")
    assert (c.topic, c.priority) == ("unknown_drug", "warning")
    assert c.summary == "'Imurel 50 mg comprimidos' is not a drug leukodx knows: not checked against TPMT poor function"
    severe = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.4)]))
    assert check(engine, imurel, severe).summary.endswith("not checked against a severe neutropenia")
    assert engine.check_orders([imurel], engine.assess(base_case()), None, None) == []
    leukopenia = engine.assess(base_case(labs=[lab("wbc", 3.0)]))          # no differential
    assert check(engine, imurel, leukopenia).priority == "info"
    assert engine.check_orders([imurel], None, "*1/*1", "*1/*1") == []



@pytest.mark.parametrize("order,named", [(OrderInput(key="o", rxnorm="999999"), "'RxNorm 999999'"),
                                         (OrderInput(key="o", atc="Z99ZZ99"), "'ATC Z99ZZ99'"),
                                         (OrderInput(key="o"), "'an unnamed drug'")])
def test_an_unknown_drug_with_no_name_is_named_by_its_code(engine, order, named):
    """An unknown RxNorm or ATC code with no name (FHIR red-team round 26) had ended the order check in a TypeError:
    a 500, the patient's critical card lost with it."""
    severe = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.4)]))
    c = check(engine, order, severe)
    assert (c.topic, c.priority) == ("unknown_drug", "warning")
    assert c.summary == f"{named} is not a drug leukodx knows: not checked against a severe neutropenia"


# ---- where CPIC's row is not shown (issue 14.2) ------------------------------------------------------

AZA_ACTIVE = [{"name": "azathioprine", "start": "2025-01-01", "indication": "Crohn's disease"}]


def test_a_tpmt_activity_soon_after_a_transfusion_gives_no_cpic_dose(engine):
    """CPIC: erythrocyte TPMT activity is unreliable after a recent transfusion; genotype instead."""
    a = engine.assess(base_case(medications=AZA_ACTIVE, history={
        "tpmt": "normal", "nudt15": "normal", "tpmt_method": "activity", "tpmt_test_date": "2025-02-20",
        "last_transfusion": "2025-01-30"}))
    p = a.pharmacogenomics
    assert (p.tpmt_reliable, p.recommendations) == (False, []) and "21 days after a red cell transfusion" in p.note
    assert check(engine, assessment=a).genotype == "recommended"


def test_with_nudt15_untested_cpics_dose_for_the_tpmt_result_alone_and_the_note_says_why(engine):
    """CPIC's post-test alerts for "No NUDT15 result on file" give a reduced TPMT result's dose as with NUDT15 normal
    (a TPMT poor metaboliser starting mercaptopurine had been given no dose at all); a normal one, none."""
    a = engine.assess(base_case(medications=AZA_ACTIVE, history={"tpmt": "intermediate"}))
    p = a.pharmacogenomics
    assert p.note.startswith("NUDT15 not tested") and "genotype NUDT15 as well" in p.note
    [rec] = p.recommendations
    assert (rec.tpmt_phenotype, rec.nudt15_phenotype) == ("TPMT intermediate metabolizer", "No NUDT15 result on file")
    assert "(30%-80% of normal dose)" in rec.recommendation and rec.note.startswith("No NUDT15 result on file: CPIC's post-test alert")
    assert len(rec.implications) == 1 and "NUDT15" not in rec.implications[0]
    poor = engine.assess(base_case(medications=[{"name": "mercaptopurine", "start": "2025-03-01",
                                                 "indication": "acute lymphoblastic leukaemia"}],
                                   history={"tpmt": "*3A/*3A"})).pharmacogenomics
    assert "10 mg/m2/day given just 3 days/week" in poor.recommendations[0].recommendation
    nudt15_only = engine.assess(base_case(medications=AZA_ACTIVE, history={"nudt15": "poor"})).pharmacogenomics
    assert nudt15_only.recommendations[0].tpmt_phenotype == "No TPMT result on file"
    normal = engine.assess(base_case(medications=AZA_ACTIVE, history={"tpmt": "normal"})).pharmacogenomics
    assert normal.recommendations == [] and "needs both TPMT and NUDT15" in normal.note


def test_the_text_report_puts_the_2024_update_before_the_2020_text(engine):
    from leukodx.engine.render import to_text
    a = engine.assess(base_case(medications=AZA_ACTIVE, history={"tpmt": "intermediate", "nudt15": "intermediate"}))
    report = to_text(a)
    assert report.index("20-50%") < report.index("Superseded 2020 text") < report.index("30%-80%")


def test_allopurinol_cuts_the_thiopurine_dose_to_a_quarter_on_top_of_cpic(engine):
    """Medsafe 1998 / febuxostat label: azathioprine with a xanthine oxidase inhibitor at 25% of the dose."""
    a = engine.assess(base_case(medications=[{"name": "azathioprine", "start": "2025-01-01"},
                                             {"name": "allopurinol", "start": "2025-02-01"}],
                                history={"tpmt": "normal", "nudt15": "normal"}))
    assert [i.id for i in a.interactions] == ["thiopurine_xanthine_oxidase"]
    c = check(engine, assessment=a)
    assert c.priority == "warning" and c.adjust == "recommended" and c.dose_change.factor == 0.25
    assert "normal starting dose" not in c.summary.split(";")[1]


@pytest.mark.parametrize("dose, weight, cut", [
    ({"value": 25, "unit": "mg/day"}, 70, False),       # 0.36 mg/kg/day: a quarter of CPIC's 2-3 mg/kg/day already
    ({"value": 50, "unit": "mg/day"}, 70, False),       # 0.71: still within a quarter of 3 mg/kg/day
    ({"value": 150, "unit": "mg/day"}, 70, True),       # 2.1 mg/kg/day: a normal dose, cut to a quarter
    ({"value": 25, "unit": "mg/day"}, None, True),      # mg/kg/day unknown without the weight: cut, as before
    (None, 70, True),                                   # no dose ordered: cut, as before
    ("25 mg/day", 70, False),                           # a dose in the order's text
    ("25 mg daily", 70, False),                         # a mass per take and how often: 25 mg/day
    ("25 mg", 70, True)])                               # text leukodx cannot read as a dose per day: cut, as before
def test_a_thiopurine_dose_already_cut_for_allopurinol_is_not_cut_again(engine, dose, weight, cut):
    """An azathioprine order already at a quarter of the normal starting dose (CPIC: 2-3 mg/kg/day), beside
    allopurinol, had been cut to a quarter again (6.25 mg a day)."""
    a = engine.assess(base_case(medications=[{"name": "azathioprine", "start": "2025-01-01"},
                                             {"name": "allopurinol", "start": "2025-02-01"}],
                                history={"tpmt": "normal", "nudt15": "normal"}))
    c = check(engine, OrderInput(key="o1", name="azathioprine", dose=dose, weight_kg=weight), a)
    assert c.priority == "warning"
    assert (c.dose_change is not None and c.dose_change.factor == 0.25) is cut
    assert (c.adjust == "recommended") is cut
    assert ("already reduced" in c.summary) is not cut
    assert ("is not cut again" in c.detail) is not cut
    assert "allopurinol" in c.summary


@pytest.mark.parametrize("mg_day, cut", [(35, False), (50, True)])
def test_a_tpmt_intermediate_order_is_compared_with_a_quarter_of_cpics_reduced_dose(engine, mg_day, cut):
    """TPMT intermediate: CPIC's reduced start (the dose table's 80%) and then a quarter for allopurinol,
    3 x 0.8 x 0.25 = 0.6 mg/kg/day: 35 mg/day at 70 kg (0.5) is within it, 50 mg/day (0.71) is cut to 20%."""
    a = engine.assess(base_case(medications=[{"name": "azathioprine", "start": "2025-01-01"},
                                             {"name": "allopurinol", "start": "2025-02-01"}],
                                history={"tpmt": "intermediate", "nudt15": "normal"}))
    dose = {"value": mg_day, "unit": "mg/day"}
    c = check(engine, OrderInput(key="o1", name="azathioprine", dose=dose, weight_kg=70), a)
    assert (c.dose_change.factor if c.dose_change else None) == (0.2 if cut else None)
    assert ("after the CPIC reduction" in c.detail) is not cut


@pytest.mark.parametrize("indication,recommended", [("Crohn's disease", ["cancel"]),
                                                     ("acute lymphoblastic leukaemia", ["adjust"]), (None, [])])
def test_at_most_one_action_is_recommended_for_a_poor_metabolizer_with_the_other_gene_untested(engine, indication,
                                                                                                recommended):
    """TPMT poor with NUDT15 untested had recommended both genotyping and cancelling on one card whose
    suggestions allow at most one choice (FHIR red-team): the decisive action is recommended, genotyping offered.
    With the indication unknown, the clinician chooses between the cut and another drug: none is recommended
    (genotyping had been, which leaves the full dose in place and does not change a poor metabolizer's advice)."""
    [check] = engine.check_orders([OrderInput(key="o1", name="azathioprine", indication=indication)], None, "poor", None)
    advice = {"genotype": check.genotype, "adjust": check.adjust, "cancel": check.cancel}
    assert [k for k, v in advice.items() if v == "recommended"] == recommended
    assert advice["genotype"] == "possible"


def test_clozapine_below_the_interrupt_threshold_gets_urgent_daily_monitoring(engine):
    """The label (Table 6): ANC 0.5-0.999 in the general population, interrupt and check the ANC daily. The
    monitoring step had been routine there while the milder 1.0-1.5 band got it urgent (three times weekly)."""
    import yaml
    from conftest import CASES
    for name in ("clozapine-general-anc-0-9-interrupt.yaml", "clozapine-weekly-falling-still-above-1-0.yaml"):
        folder = "drugs" if "interrupt" in name else "series"
        a = engine.assess(yaml.safe_load((CASES / folder / name).read_text()))
        [step] = [s for s in a.steps if s.id == "serial_cbc_monitoring"]
        assert step.urgency == "urgent", name


@pytest.mark.parametrize("drug,dose,cut", [
    ("mercaptopurine", "50 mg/day", False),    # 0.71 mg/kg/day: within CPIC's 0.45-1.2
    ("mercaptopurine", "100 mg/day", True),    # 1.43 mg/kg/day: a normal starting dose, cut to 80%
    ("azathioprine", "100 mg/day", False),     # 1.43 mg/kg/day: within 80% of the lowest normal dose (1.6)
    ("azathioprine", "150 mg/day", True),      # 2.14 mg/kg/day: in CPIC's example 0.6-2.4, but a normal dose of 2-3
    ("azathioprine", "200 mg/day", True),      # 2.86 mg/kg/day: cut
])
def test_an_intermediate_metabolizers_order_already_within_cpics_reduced_range_is_not_cut_again(engine, drug, dose,
                                                                                                  cut):
    """CPIC, TPMT or NUDT15 intermediate: "start with reduced starting doses (30%-80% of normal dose) ... (e.g., 0.6 -
    2.4 mg/kg/day)" for azathioprine, "0.45-1.2 mg/kg/day" for mercaptopurine; "if normal starting dose is already
    < ... 1.5 mg/kg/day, dose reduction may not be recommended". An order of 0.71 mg/kg/day had been cut to 80%. The
    example's 2.4 lies inside azathioprine's normal 2-3 mg/kg/day (clinical red-team round 25: a full 2.2 had been
    read as reduced): at most 1.6, 80% of the lowest normal dose, is reduced whatever the normal dose."""
    c = check(engine, OrderInput(key="o", name=drug, dose=dose, weight_kg=70), tpmt="intermediate", nudt15="normal")
    assert c.priority == "warning"
    if cut:
        assert (c.adjust, c.dose_change.factor) == ("recommended", 0.8)
    else:
        assert (c.adjust, c.dose_change) == ("no", None) and "already within CPIC's reduced starting doses" in c.detail


@pytest.mark.parametrize("drug,dose,cut", [
    ("mercaptopurine", "50 mg/m2 once daily", False),             # within CPIC's 25-60 mg/m2/day
    ("mercaptopurine", {"value": 60, "unit": "mg/m2/d"}, False),  # the upper end itself
    ("mercaptopurine", {"value": 75, "unit": "mg/m2/d"}, True),   # CPIC's normal starting dose: cut to 80%
    ("thioguanine", {"value": 30, "unit": "mg/(m2.d)"}, False),   # within 80% of the lowest normal 40 mg/m2/day
    ("thioguanine", {"value": 45, "unit": "mg/(m2.d)"}, True),    # in CPIC's example 20-48, but a normal dose (40-60)
    ("thioguanine", {"value": 60, "unit": "mg/m2/day"}, True),
    ("mercaptopurine", "75 mg/m2 once weekly", True),            # a weekly dose is no reduced daily dose
])
def test_a_dose_per_body_surface_area_already_within_cpics_reduced_range_is_not_cut_again(engine, drug, dose, cut):
    """CPIC, TPMT intermediate: mercaptopurine "e.g., start at 25-60 mg/m2/day ... if normal starting dose is already
    <75mg/m2/day ..., dose reduction may not be recommended"; thioguanine "(e.g. 20-48 mg/m2/day)". A child's
    50 mg/m2/day (a dose per m2 is not read as mg/kg/day) had been cut to 40."""
    c = check(engine, OrderInput(key="o", name=drug, dose=dose, weight_kg=20), tpmt="intermediate", nudt15="normal")
    assert c.priority == "warning"
    if cut:
        assert c.adjust == "recommended" and c.dose_change.factor == 0.8
    else:
        assert (c.adjust, c.dose_change) == ("no", None) and "mg/m2/day, is already within CPIC's reduced" in c.detail


def test_a_thiopurine_ordered_with_febuxostat_is_contraindicated_not_cut_to_a_quarter(engine):
    """Febuxostat is contraindicated with azathioprine and mercaptopurine (its label): the order card had
    recommended the quarter dose that is for allopurinol that cannot be avoided."""
    def check(other):
        a = engine.assess(base_case(medications=[{"name": other, "start": "2024-01-01"},   # the draft, as CDS counts it
                                                 {"name": "azathioprine", "start": "2025-03-10"}],
                                    history={"tpmt": "normal", "nudt15": "normal"}))
        [c] = engine.check_orders([OrderInput(key="o", name="azathioprine", dose={"value": 150, "unit": "mg/d"},
                                              weight_kg=70, indication="Crohn's disease")], a)
        return c
    febuxostat, allopurinol = check("febuxostat"), check("allopurinol")
    assert febuxostat.priority == "critical" and febuxostat.dose_change is None and febuxostat.adjust == "no"
    assert "contraindicated" in febuxostat.summary
    assert allopurinol.dose_change is not None and allopurinol.dose_change.factor == 0.25


@pytest.mark.parametrize("dose, indication, priority, adjust, cancel", [
    ("10 mg/m2 three times a week", "acute lymphoblastic leukemia", "warning", "no", "no"),   # CPIC's example
    ({"value": 30, "unit": "mg/m2/wk"}, "acute lymphoblastic leukemia", "critical", "recommended", "no"),  # 30 once?
    ("15 mg/m2 twice a week", "acute lymphoblastic leukemia", "critical", "recommended", "no"),   # above 10 a day
    ("10 mg/m2 daily", "acute lymphoblastic leukemia", "critical", "recommended", "no"),   # not thrice weekly
    ("20 mg/m2 three times a week", "acute lymphoblastic leukemia", "critical", "recommended", "no"),
    ("10 mg/m2 three times a week", "Crohn's disease", "critical", "no", "recommended"),   # an alternative drug
])
def test_mercaptopurine_already_at_cpics_poor_metabolizer_dose_is_not_cut_again(engine, dose, indication, priority,
                                                                                 adjust, cancel):
    """CPIC, TPMT poor metabolizer with a malignancy: "reduce daily dose by 10-fold and reduce frequency to thrice
    weekly instead of daily, e.g., 10 mg/m2/day given just 3 days/week". That dose had been told, critically, to be
    reduced drastically (red-team round 14)."""
    order = OrderInput(key="o", name="mercaptopurine", dose=dose, indication=indication)
    c = check(engine, order, tpmt="poor", nudt15="normal")
    if dose == "10 mg/m2 daily":          # CPIC, NUDT15 poor with a malignancy: "initiate dose at 10 mg/m2/day"
        nudt15 = check(engine, order, tpmt="normal", nudt15="poor")
        assert (nudt15.priority, nudt15.adjust) == ("warning", "no") and "already a reduced dose" in nudt15.summary
    assert (c.priority, c.adjust, c.cancel) == (priority, adjust, cancel)
    if priority == "warning":
        assert "already a reduced dose (CPIC)" in c.summary and c.cancel == "no"


@pytest.mark.parametrize("drug, labs, priority", [
    ("methotrexate", [("wbc", 1.5), ("anc", 0.4)], "critical"),     # withheld below 1.6; a severe tier is critical
    ("leflunomide", [("wbc", 3.0), ("anc", 1.2)], "warning"),       # neutrophils < 1.6, WBC < 3.5
    ("sulfasalazine", [("wbc", 3.2), ("anc", 2.1)], "warning"),     # WBC < 3.5 alone
    ("methotrexate", [("wbc", 5.0), ("anc", 2.5)], None),           # at or above every threshold: nothing to say
])
def test_a_dmard_ordered_at_counts_its_monitoring_withholds_it_at(engine, drug, labs, priority):
    """UK DMARD monitoring (BSR-aligned; nhs_dg_sulfasalazine_monitoring): withhold when neutrophils fall below 1.6,
    the WBC below 3.5 or platelets below 140. Methotrexate, leflunomide or sulfasalazine ordered at an ANC of 0.4 had
    had no order card (red-team round 14): the order counted as taken starts today."""
    a = engine.assess(base_case(labs=[lab(t, v) for t, v in labs],
                                medications=[{"name": drug, "start": "2025-03-10"}],      # the draft, as CDS counts it
                                history={"conditions": ["rheumatoid arthritis"]}))
    checks = [c for c in engine.check_orders([OrderInput(key="o", name=drug)], a) if c.topic == "dmard_monitoring"]
    assert [c.priority for c in checks] == ([priority] if priority else [])
    if priority:
        assert "do not start" in checks[0].summary and "bsr_dmard_2017" in checks[0].sources
    for history in ({"transplant": {"organ": "kidney", "date": "2020-01-01"}},   # the transplant team's, as for a
                    {"conditions": ["Kidney transplant status"]},                # drug already taken; named on the
                    {"conditions": ["s/p liver transplant 2019"]},               # problem list too (red-team 15)
                    {"conditions": ["metastatic breast cancer"]}):               # a protocol for rheumatology's DMARDs
        other = engine.assess(base_case(labs=[lab(t, v) for t, v in labs], medications=[{"name": drug,
                                                                                          "start": "2025-03-10"}],
                                        history=history))
        assert not [c for c in engine.check_orders([OrderInput(key="o", name=drug)], other)
                    if c.topic == "dmard_monitoring"], history
    candidate = engine.assess(base_case(labs=[lab(t, v) for t, v in labs], medications=[{"name": drug,
                                                                                          "start": "2025-03-10"}],
                                        history={"conditions": ["Kidney transplant candidate", "rheumatoid arthritis"]}))
    assert len([c for c in engine.check_orders([OrderInput(key="o", name=drug)], candidate)
                if c.topic == "dmard_monitoring"]) == bool(priority)      # a candidate is no recipient yet


@pytest.mark.parametrize("mg,said", [(210, None), (600, "above the label's highest dose (5 mg/kg/day)"),
                                     (2000, "probably an entry or unit error")])
def test_an_order_above_the_labels_highest_dose_says_so_first(engine, mg, said):
    """Azathioprine 600 mg a day for 70 kg (8.6 mg/kg/day) had been 'normal starting dose (CPIC)'."""
    a = engine.assess(base_case(history={"tpmt": "normal", "nudt15": "normal"}))
    [check] = engine.check_orders([OrderInput(key="o", name="azathioprine", dose={"value": mg, "unit": "mg/d"},
                                              weight_kg=70, indication="Crohn's disease")], a)
    if said is None:
        assert check.priority == "info" and "label" not in check.summary
    else:
        assert check.priority == "warning" and said in check.summary


def test_no_dose_change_is_offered_for_a_dose_above_the_label_and_none_goes_unchecked_unsaid(engine):
    """Azathioprine 15,000 mg a day for 70 kg in a TPMT intermediate metaboliser had been offered a one-click change to
    12,000 mg (80%, CPIC) beside 'probably an entry or unit error'; with no weight, 1,500 mg to 1,200 mg with nothing
    said (red-team round 12). CPIC reduces a normal starting dose: above the label's highest, no change is offered;
    with no weight to check the dose against it, the check says so."""
    a = engine.assess(base_case(history={"tpmt": "intermediate", "nudt15": "normal"}))
    def order(mg, weight):
        [c] = engine.check_orders([OrderInput(key="o", name="azathioprine", dose={"value": mg, "unit": "mg/d"},
                                              weight_kg=weight, indication="Crohn's disease")], a)
        return c
    above, normal, unweighed = order(15000, 70), order(200, 70), order(1500, None)   # 200: 2.9 mg/kg/day
    assert above.adjust == "no" and "No dose change is offered" in above.detail and "entry or unit error" in above.summary
    assert normal.adjust == "recommended" and normal.dose_change is not None and "weight" not in normal.detail
    assert unweighed.adjust == "recommended" and unweighed.detail.startswith(
        "**The weight is not known, so 1500 mg a day could not be checked against the label's highest dose")


def test_clozapine_below_the_interrupt_threshold_is_critical_even_without_the_alert(engine):
    """An assessment that does not count the clozapine as taken (so no clozapine alert) and an ANC of 0.4: the check
    had fallen into the 1.0-1.5 branch, "continue clozapine with the ANC three times a week"."""
    a = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.4)]))
    c = check(engine, OrderInput(key="o", name="clozapine"), a)
    assert (c.priority, c.cancel) == ("critical", "recommended") and "below the clozapine threshold" in c.summary


def test_an_indeterminate_result_beside_an_untested_gene_is_named_too(engine):
    """TPMT indeterminate and NUDT15 untested: the note had named only NUDT15 as unknown."""
    p = engine.assess(base_case(medications=AZA_ACTIVE, history={"tpmt": "indeterminate"})).pharmacogenomics
    assert p.recommendations == [] and p.note.endswith("TPMT is indeterminate: its result gives no phenotype either.")


def test_a_second_thiopurine_is_named_as_one_thiopurine_taken_twice(engine):
    """Mercaptopurine ordered for a patient on azathioprine had been 'normal starting dose (CPIC)', an information card:
    azathioprine is broken down to 6-mercaptopurine, so the two are one thiopurine twice (red-team round 12). The
    allopurinol beside a thiopurine stays in the thiopurine's own check (its dose cut), not in a second card."""
    def checks(other):
        a = engine.assess(base_case(medications=[{"name": other, "start": "2024-01-01"},
                                                 {"name": "mercaptopurine", "start": "2025-03-10"}],   # the draft
                                    history={"tpmt": "normal", "nudt15": "normal"}))
        return engine.check_orders([OrderInput(key="o", name="mercaptopurine", dose={"value": 75, "unit": "mg/d"},
                                               weight_kg=70, indication="Crohn's disease")], a)
    dose, twice = checks("azathioprine")
    assert dose.topic == "thiopurine_pgx" and (twice.topic, twice.priority) == ("interaction", "warning")
    assert "azathioprine" in twice.summary and "broken down to 6-mercaptopurine" in twice.detail
    [cut] = checks("allopurinol")
    assert cut.topic == "thiopurine_pgx" and cut.dose_change is not None and cut.dose_change.factor == 0.25
    # a switch: azathioprine stopped yesterday for the mercaptopurine ordered is not both taken (it had been warned)
    a = engine.assess(base_case(medications=[{"name": "azathioprine", "start": "2024-01-01", "status": "stopped",
                                              "end": "2025-03-09"}, {"name": "mercaptopurine", "start": "2025-03-10"}],
                                history={"tpmt": "normal", "nudt15": "normal"}))
    assert [c.topic for c in engine.check_orders([OrderInput(key="o", name="mercaptopurine")], a)] == ["thiopurine_pgx"]


def test_a_thiopurines_own_indication_decides_whether_it_treats_a_cancer(engine):
    """Mercaptopurine 10 mg/m2 three times a week for Crohn's disease, a breast cancer also on record, TPMT poor: CPIC's
    reduced dose is for a malignancy; for a non-malignant condition it is an alternative drug (red-team round 16: the
    cancer on record had made it 'already a reduced dose', a warning)."""
    med = {"name": "mercaptopurine", "start": "2025-01-10", "dose": "10 mg/m2 three times a week",
           "indication": "Crohn's disease"}
    a = engine.assess(base_case(medications=[med], history={"tpmt": "poor", "nudt15": "normal",
                                                              "conditions": ["Crohn's disease", "breast cancer"]}))
    assert "thiopurine_high_risk_genotype" in {x.id for x in a.alerts} and a.priority == "critical"
    [c] = [c for c in engine.check_orders([OrderInput(key="o", name="mercaptopurine", dose=med["dose"],
                                                      indication="Crohn's disease")], a) if c.topic == "thiopurine_pgx"]
    assert (c.priority, c.cancel) == ("critical", "recommended")


@pytest.mark.parametrize("anc,ben_clause", [(1.2, True), (0.8, False)])
def test_clozapine_start_below_the_threshold_names_the_duffy_null_one(engine, anc, ben_clause):
    """Red-team round 19: no prefetch asks for a Duffy result, and a Duffy-null patient's start at ANC 1.2 (the label's
    BEN threshold is 1.0) had been a bare critical "do not start". Below 1.0 the BEN threshold is no help either."""
    a = engine.assess(base_case(labs=[lab("wbc", 3.0), lab("anc", anc)],
                                medications=[{"name": "clozapine", "start": base_case()["as_of"][:10]}]))
    c = check(engine, CLOZ, a)
    assert c.priority == "critical" and c.summary.startswith(f"ANC {anc:g} x10^9/L is below")
    assert ("if Duffy-null/BEN" in c.summary) is ben_clause and len(c.summary) <= 140
    # a patient already on clozapine continues at 1.0-1.5 (label Table 6): no "interrupt" there (round 21)
    assert ("interrupt" in c.summary) is not ben_clause and ("continues" in c.summary) is ben_clause
    duffy_null = base_case(labs=[lab("wbc", 3.0), lab("anc", 1.2)], patient={"duffy_null": True},
                           medications=[{"name": "clozapine", "start": base_case()["as_of"][:10]}])
    assert check(engine, CLOZ, engine.assess(duffy_null)).summary.startswith("Current ANC 1.2")
    ben = base_case(labs=[lab("wbc", 3.0), lab("anc", 0.7)], patient={"duffy_null": True},
                    medications=[{"name": "clozapine", "start": base_case()["as_of"][:10]}])
    summary = check(engine, CLOZ, engine.assess(ben)).summary        # BEN 0.5-1.0: continue with a consult (Table 7)
    assert "in BEN" in summary and "haematology consult" in summary and "interrupt" not in summary


@pytest.mark.parametrize("name,topic", [("valganciclovir", "drug_label"), ("methotrexate", "dmard_monitoring"),
                                        ("leflunomide", "dmard_monitoring")])
def test_a_drug_with_count_limits_ordered_without_a_current_count_is_asked_for_one(engine, name, topic):
    """Red-team round 21: valganciclovir (its label: not below ANC 0.5, platelets 25 or Hb 8) or a DMARD (baseline
    blood tests) ordered with no count on file had had no card, where a thiopurine or clozapine is asked for one."""
    order = OrderInput(key="o", name=name, indication="rheumatoid arthritis")
    for assessment in (None, engine.assess(base_case(labs=[lab("wbc", 5.0, time="2020-01-01T08:00:00Z")]))):
        c = check(engine, order, assessment)
        assert (c.topic, c.priority) == (topic, "warning") and "without a current blood count" in c.summary
    wbc_only = engine.assess(base_case(labs=[lab("wbc", 5.0)]))     # round 22: a WBC alone had given no card
    assert "without a current neutrophil count" in check(engine, order, wbc_only).summary
    if topic == "dmard_monitoring":      # a WBC the protocol withholds at says so itself, not "no neutrophil count"
        low = engine.assess(base_case(labs=[lab("wbc", 1.2)], medications=[   # the order counted as taken, as CDS does
            {"name": name, "start": base_case()["as_of"][:10], "indication": "rheumatoid arthritis"}]))
        assert "withholds" in check(engine, order, low).summary
    current = engine.assess(base_case(labs=[lab("wbc", 6.0), lab("anc", 4.0), lab("hemoglobin", 13.0, "g/dL"),
                                            lab("platelets", 250)]))
    assert engine.check_orders([order], current) == []            # a normal current count: nothing to say
    oncology = OrderInput(key="o", name="methotrexate", indication="acute lymphoblastic leukaemia")
    assert engine.check_orders([oncology], None) == []             # chemotherapy: not the DMARD protocol


def test_clozapine_with_the_conditions_not_had_is_no_all_clear(engine):
    """Red-team round 21: with the conditions search failed, a clozapine order at ANC 3.5 was "may proceed",
    information, though a past clozapine agranulocytosis (no rechallenge) could not be looked for."""
    a = engine.assess(base_case(labs=[lab("wbc", 6.0), lab("anc", 3.5)],
                                medications=[{"name": "clozapine", "start": base_case()["as_of"][:10]}]))
    assert check(engine, CLOZ, a).priority == "info"
    [c] = engine.check_orders([CLOZ], a, unhad=frozenset({"conditions"}))
    assert c.priority == "warning" and "conditions could not be had" in c.summary and len(c.summary) <= 140


def test_a_past_cancer_on_record_makes_no_order_chemotherapy(engine):
    """Red-team round 22: with "History of breast cancer" on the problem list, a methotrexate 10 mg daily order (no
    indication) had no daily-dosing card, as if it were chemotherapy; the patient's own assessment had it."""
    past = engine.assess(base_case(history={"conditions": ["History of breast cancer", "rheumatoid arthritis"]}))
    now = engine.assess(base_case(history={"conditions": ["breast cancer, on chemotherapy"]}))
    assert past.cancer_current is False and now.cancer_current is True and "cancer" in past.conditions
    daily = OrderInput(key="o", name="methotrexate", dose="10 mg daily")
    assert {c.topic: c.priority for c in engine.check_orders([daily], past)}["dosing_frequency"] == "critical"
    # a current cancer and no indication: a question (round 24), not the hard stop
    assert {c.topic: c.priority for c in engine.check_orders([daily], now)}["dosing_frequency"] == "warning"


def test_a_daily_methotrexate_order_beside_a_cancer_on_record_is_a_question_not_silence(engine):
    """Red-team round 24: methotrexate 10 mg daily with no indication for a patient with rheumatoid arthritis and a
    basal cell carcinoma had no card (any current cancer lifted ISMP's hard stop); a warning now asks. Its own cancer
    indication still lifts it; sulfasalazine (never chemotherapy) ordered with no count is still asked for one."""
    a = engine.assess(base_case(history={"conditions": ["rheumatoid arthritis", "basal cell carcinoma"]}))
    [c] = [c for c in engine.check_orders([OrderInput(key="o", name="methotrexate", dose="10 mg daily")], a)
           if c.topic == "dosing_frequency"]
    assert c.priority == "warning" and "confirm it is the cancer's regimen" in c.summary and len(c.summary) <= 140
    own = OrderInput(key="o", name="methotrexate", dose="10 mg daily", indication="gestational trophoblastic neoplasia")
    assert "dosing_frequency" not in {c.topic for c in engine.check_orders([own], a)}
    old = engine.assess(base_case(labs=[lab("wbc", 5.0, time="2020-01-01T08:00:00Z")],
                                  history={"conditions": ["rheumatoid arthritis", "basal cell carcinoma"]}))
    assert [c.topic for c in engine.check_orders([OrderInput(key="o", name="sulfasalazine")], old)] == ["dmard_monitoring"]


def test_one_thiopurine_ordered_in_several_drafts_is_dosed_by_their_total(engine):
    """Order red-team round 31: a 100 mg and a 50 mg azathioprine draft (150 mg a day, 2.1 mg/kg, for 70 kg) in a TPMT
    intermediate metabolizer were each "already reduced"; two 200 mg drafts (5.7 mg/kg/day) two normal starting
    doses. The dose checks are of the day's total; each draft's own cut stays proportional."""
    def drafts(*mg):
        return [OrderInput(key=f"o{i}", name="azathioprine", dose=f"{m} mg/day", weight_kg=70) for i, m in enumerate(mg)]
    split = engine.check_orders(drafts(100, 50), None, "intermediate", "normal")
    assert [(c.adjust, c.dose_change.factor) for c in split] == [("recommended", 0.8)] * 2
    assert all("150 mg a day in all" in c.detail for c in split)
    twice = engine.check_orders(drafts(200, 200), None, "normal", "normal")
    assert all(c.summary.startswith("5.7 mg/kg/day is above the label's highest dose") for c in twice)
    [alone] = engine.check_orders(drafts(100), None, "intermediate", "normal")
    assert alone.adjust == "no" and "in all" not in alone.detail          # 1.4 mg/kg/day: already reduced


def test_a_clozapine_order_beside_carbamazepine_gets_the_interactions_warning(engine):
    """Order red-team round 31: a clozapine order for a patient on carbamazepine got only "may proceed"; only a
    carbamazepine order had been checked for the pair."""
    a = engine.assess(base_case(medications=[{"name": "carbamazepine", "status": "active", "start": "2024-01-01"},
                                             {"name": "clozapine", "status": "active", "start": "2025-03-10"}]))
    # (the assessment an order is checked against counts the draft as taken, as the CDS route makes it)
    checks = engine.check_orders([OrderInput(key="c", name="clozapine")], a)
    assert [c.topic for c in checks][:1] == ["clozapine_anc"]
    assert any(c.summary.startswith("Clozapine with carbamazepine") for c in checks), [c.summary for c in checks]
