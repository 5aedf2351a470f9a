"""Explain (engine/explain.py): firings into the Assessment's alerts, steps (ordered by urgency),
findings, missing data and the trace of the rules that fired with the facts they read."""
from __future__ import annotations

import pytest

from conftest import base_case, lab


def test_febrile_neutropenia_is_an_emergency(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.45)], history={"temperature_c": 38.4}))
    assert [x.id for x in a.alerts][:2] == ["febrile_neutropenia", "agranulocytosis"]
    assert a.steps[0].id == "emergency_febrile_neutropenia_care" and a.steps[0].urgency == "immediate"


def test_steps_are_ordered_by_urgency(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.3)], history={"temperature_c": 38.5}))
    order = {"immediate": 0, "urgent": 1, "routine": 2}
    assert [order[s.urgency] for s in a.steps] == sorted(order[s.urgency] for s in a.steps)


def test_trace_lists_fired_rules_with_the_facts_they_read(engine):
    a = engine.assess(base_case(labs=[lab("wbc", 3.0), lab("anc", 1.2)]))
    t = next(x for x in a.trace if x.rule == "findings.neutropenia")
    assert t.facts == {"anc_max": 1.2}


def test_a_patient_on_no_drug_is_not_shown_a_chemotherapy_label(engine):
    """The referral, marrow and B12 rules cited the lomustine label for their chemotherapy-nadir exception, so a
    patient on no drug saw a chemotherapy label among the sources (the clinical red-team). The window's source
    stays on its threshold (rules/thresholds.yaml chemotherapy_nadir_window_days)."""
    isolated = engine.assess(base_case(labs=[lab("anc", 0.6, time="2024-11-01T08:00:00Z"),   # persisting: referred
                                             lab("wbc", 2.0), lab("anc", 0.5), lab("hemoglobin", 14, "g/dL"),
                                             lab("platelets", 250)]))
    pancytopenic = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", 0.4), lab("hemoglobin", 8.5, "g/dL"),
                                                 lab("platelets", 60)]))
    for a in (isolated, pancytopenic):
        assert a.steps and "lomustine_label" not in a.sources
    assert "hematology_referral" in {s.id for s in isolated.steps}


def test_tpmt_results_cpic_calls_unreliable_give_no_cpic_dose(engine):
    """A TPMT 'normal' of unrecorded method 3 weeks after a transfusion, and TPMT/NUDT15 genotyped from blood after
    an allogeneic HSCT, had been dosed from as if reliable."""
    def pgx(**history):
        return engine.assess(base_case(labs=[lab("wbc", 2.9), lab("anc", 1.4)], history=history, medications=[
            {"name": "azathioprine", "start": "2025-02-24", "indication": "Crohn's disease"}])).pharmacogenomics
    hsct = {"tpmt": "*1/*1", "tpmt_method": "genotype", "nudt15": "*1/*1",
            "transplant": {"organ": "allogeneic HSCT", "date": "2024-06-03"}}
    p = pgx(tpmt="normal", nudt15="normal", tpmt_test_date="2025-02-12", last_transfusion="2025-01-22")
    assert (p.tpmt_reliable, p.nudt15_reliable, p.recommendations) == (False, True, [])
    assert "method not given" in p.note
    p = pgx(**hsct, tpmt_test_date="2025-01-02")
    assert (p.tpmt_reliable, p.nudt15_reliable, p.recommendations) == (False, False, [])
    assert "pre-transplant" in p.note
    before = pgx(**hsct, tpmt_test_date="2024-05-02")
    assert before.tpmt_reliable and before.recommendations


def test_ciclosporin_treating_aplastic_anaemia_is_not_held_urgently_by_the_dmard_rule(engine):
    """Ciclosporin for severe aplastic anaemia, ANC 0.3: the rheumatology DMARD rule (BSR) had asked for an urgent
    hold of the treatment of the marrow failure itself; with rheumatoid arthritis instead, it still does."""
    def hold(condition):
        a = engine.assess(base_case(labs=[lab("wbc", 1.0), lab("anc", 0.3)],
                                    medications=[{"name": "ciclosporin", "start": "2025-01-01"}],
                                    history={"conditions": [condition]}))
        return next((s.urgency for s in a.steps if s.id == "hold_or_reduce_suspect_drug"), None)
    assert hold("severe aplastic anaemia") != "urgent"
    assert hold("rheumatoid arthritis") == "urgent"


def test_a_thiopurine_is_held_urgently_below_a_wbc_of_2_5(engine):
    """Singh 2022 (Table 6): WBC 1.5-2.5 stop for a week and restart lower; the hold had been routine above 1.5."""
    def hold(wbc, anc):
        a = engine.assess(base_case(labs=[lab("wbc", wbc), lab("anc", anc)],
                                    medications=[{"name": "azathioprine", "start": "2024-06-01",
                                                  "indication": "Crohn's disease"}]))
        return next((s.urgency for s in a.steps if s.id == "hold_or_reduce_suspect_drug"), None)
    assert hold(2.0, 1.2) == "urgent" and hold(1.4, 1.2) == "urgent"
    assert hold(2.6, 1.2) == "routine"     # 2.5-3.5: check metabolites or reduce


def test_methotrexate_is_withheld_at_an_eosinophilia_above_0_5(engine):
    """The DMARD protocol withholds at an unexplained eosinophilia above 0.5 x10^9/L (NHS Dumfries and Galloway)."""
    def hold(eos):
        a = engine.assess(base_case(labs=[lab("wbc", 6.0), lab("anc", 3.5), lab("eosinophils", eos)],
                                    medications=[{"name": "methotrexate", "start": "2024-01-10",
                                                  "dose": "20 mg once weekly", "indication": "rheumatoid arthritis"}]))
        return next((s.urgency for s in a.steps if s.id == "hold_or_reduce_suspect_drug"), None)
    assert hold(0.7) == "urgent" and hold(0.4) is None


def test_a_suspect_already_stopped_is_not_held_but_one_still_taken_is(engine):
    """Methimazole stopped 10 days ago: nothing left to hold (it had been an urgent hold), the count followed; with
    propylthiouracil started in its place the hold stands, for the drug still taken."""
    labs = [lab("wbc", 1.2), lab("anc", 0.2)]
    stopped = {"name": "methimazole", "status": "stopped", "start": "2025-01-05", "end": "2025-02-28",
               "dose": {"value": 20, "unit": "mg/day"}}
    a = engine.assess(base_case(labs=labs, medications=[stopped]))
    assert "hold_or_reduce_suspect_drug" not in {s.id for s in a.steps}
    assert [b.id for b in a.steps_not_advised] == ["hold_or_reduce_suspect_drug"]
    assert "serial_cbc_monitoring" in {s.id for s in a.steps}
    taken = {"name": "propylthiouracil", "status": "active", "start": "2025-02-28", "dose": {"value": 300, "unit": "mg/day"}}
    a = engine.assess(base_case(labs=labs, medications=[stopped, taken]))
    assert {s.id: s.urgency for s in a.steps}["hold_or_reduce_suspect_drug"] == "urgent"
    assert not a.steps_not_advised


def test_azathioprine_outside_bowel_disease_is_withheld_urgently_at_the_dmard_limits(engine):
    """SLE on azathioprine at WBC 3.3: the DMARD withhold is urgent, as for methotrexate (it had been routine). In
    Crohn's disease the IBD guidance's lower limits decide: routine at WBC 3.3."""
    labs = [lab("wbc", 3.3), lab("anc", 1.3)]
    aza = {"name": "azathioprine", "status": "active", "start": "2024-11-01", "indication": "SLE"}
    urgency = lambda conditions: {s.id: s.urgency for s in engine.assess(base_case(   # noqa: E731
        labs=labs, medications=[aza], history={"conditions": conditions})).steps}["hold_or_reduce_suspect_drug"]
    assert urgency(["systemic lupus erythematosus"]) == "urgent"
    assert urgency(["Crohn's disease"]) == "routine"


@pytest.mark.parametrize("started,drawn,overdue", [
    ("2025-01-10", "2025-03-02", True),      # day 59 (weekly): 8 days old
    ("2025-01-10", "2025-03-05", False),     # 5 days old
    ("2024-07-01", "2025-02-20", True),      # month 8 (every 2 weeks): 18 days old
    ("2024-07-01", "2025-02-28", False),     # 10 days old
])
def test_clozapine_monitoring_overdue_follows_the_labels_intervals(engine, started, drawn, overdue):
    """Weekly for 6 months, every 2 weeks for months 6-12, then monthly (clozapine label)."""
    t = f"{drawn}T08:00:00Z"
    a = engine.assess(base_case(labs=[lab("wbc", 6.0, time=t), lab("anc", 3.0, time=t)],
                                medications=[{"name": "clozapine", "status": "active", "start": started}]))
    assert ("clozapine_anc_overdue" in {x.id for x in a.alerts}) is overdue
