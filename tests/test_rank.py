"""Rank (engine/rank.py): the evidence for and against each cause summed and ranked. A cause is
listed only when a rule supports it; the drugs behind a drug cause are named as its agents."""
from __future__ import annotations

from conftest import base_case, lab


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
    assert b.causes[0].agents == ["trimethoprim-sulfamethoxazole"]   # the vocabulary's name for "Bactrim"


def test_a_drug_started_after_the_count_is_no_cause_of_it(engine):
    """Sulfasalazine started four days after the count (ANC 0.9) had been listed as an agranulocytosis agent:
    it cannot have caused a count drawn before it. Started before the count, it is one."""
    labs = [lab("wbc", 2.9, time="2025-06-01T08:00:00Z"), lab("anc", 0.9, time="2025-06-01T08:00:00Z")]
    def assess(start):
        return engine.assess(base_case(as_of="2025-06-10", labs=labs,
                                       medications=[{"name": "sulfasalazine", "start": start}]))
    after, before = assess("2025-06-05"), assess("2025-04-20")
    assert "idiosyncratic_drug_agranulocytosis" not in {c.id for c in after.causes}
    assert [w for w in after.warnings if "after the current count was drawn (2025-06-01)" in w][0].startswith(
        "medications[0] 'sulfasalazine' started 2025-06-05")
    assert "idiosyncratic_drug_agranulocytosis" in {c.id for c in before.causes}
    assert not [w for w in before.warnings if "after the current count" in w]


def test_a_drug_stopped_on_a_day_not_given_stays_a_suspect(engine):
    """Azathioprine started 14 months ago and stopped on a day not given (a FHIR MedicationRequest rarely has a
    stop date; it is often stopped because of the count) had been dated by its start and dropped: no cause at
    all for ANC 0.8. A course completed on a day not given may have ended any day since its start while that start
    lies within the onset window (idiosyncratic_onset_max_days, 60: carbimazole started 40 days before had been
    dropped); begun before it, it is an old course, dated by its start (one of 2019 had become the 'likely' cause)."""
    def assess(status, start="2024-01-10"):
        return engine.assess(base_case(as_of="2025-03-10", labs=[lab("wbc", 2.0), lab("anc", 0.8)],
                                       medications=[{"name": "azathioprine", "status": status, "start": start}],
                                       history={"conditions": ["Crohn's disease"]}))
    stopped, completed, lately = assess("stopped"), assess("completed"), assess("completed", start="2025-01-29")
    assert "thiopurine_myelotoxicity" in {c.id for c in stopped.causes}
    assert any("stopped on a day not given" in w for w in stopped.warnings)
    assert "thiopurine_myelotoxicity" not in {c.id for c in completed.causes}          # begun 425 days before
    assert any("beyond its 60-day window" in w and "dated by its start" in w for w in completed.warnings)
    assert "thiopurine_myelotoxicity" in {c.id for c in lately.causes}                 # begun 40 days before
    assert any("completed on a day not given" in w and "possibly completed recently" in w for w in lately.warnings)
    def chemo(start):
        return engine.assess(base_case(as_of="2025-03-10", labs=[lab("wbc", 1.5), lab("anc", 0.3)],
                                       medications=[{"name": "cyclophosphamide", "status": "completed", "start": start,
                                                     "indication": "diffuse large B-cell lymphoma"}],
                                       history={"conditions": ["diffuse large B-cell lymphoma"]}))
    assert "cytotoxic_chemotherapy" in {c.id for c in chemo("2025-02-01").causes}      # begun 37 days before
    old = chemo("2019-03-01")       # a course of 2019 had been the 'likely' cause, the referral and marrow dropped
    assert "cytotoxic_chemotherapy" not in {c.id for c in old.causes}
    assert {"hematology_referral", "bone_marrow_examination"} <= {s.id for s in old.steps}
    rituximab = engine.assess(base_case(as_of="2025-03-10", labs=[lab("wbc", 1.5), lab("anc", 0.3)],
                                        medications=[{"name": "rituximab", "status": "stopped", "start": "2024-08-10",
                                                      "indication": "rheumatoid arthritis"}],
                                        history={"conditions": ["rheumatoid arthritis"]}))
    assert "anti_cd20_late_onset_neutropenia" in {c.id for c in rituximab.causes}   # its last dose not given


def test_a_drug_stopped_days_ago_keeps_the_onset_window_of_its_course(engine):
    """Methimazole taken for 48 days and stopped 3 days before ANC 0.3 had dropped from likely to possible:
    days on the drug were counted only while it was taken."""
    def assess(status, end=None, start="2025-01-18"):
        med = {"name": "methimazole", "status": status, "start": start, **({"end": end} if end else {})}
        return engine.assess(base_case(as_of="2025-03-10", labs=[lab("wbc", 2.1), lab("anc", 0.3)], medications=[med]))
    stopped, taken = assess("stopped", "2025-03-07"), assess("active")
    rules = lambda a: {e.rule for c in a.causes if c.id == "idiosyncratic_drug_agranulocytosis" for e in c.evidence}
    assert rules(stopped) == rules(taken)
    assert "drug_induced.idiosyncratic_in_window" in rules(stopped)
    long_ago = assess("stopped", "2024-01-07", start="2023-11-01")   # before the recent-drug window: no suspect
    assert "idiosyncratic_drug_agranulocytosis" not in {c.id for c in long_ago.causes}


def test_the_rheumatology_withhold_rule_does_not_stop_a_transplant_recipients_immunosuppression(engine):
    """Tacrolimus for GVHD prophylaxis at day +10 had been urgently 'withheld' by the BSR DMARD rule."""
    def hold_rules(**history):
        a = engine.assess(base_case(labs=[lab("wbc", 2.0), lab("anc", 0.8)], history=history,
                                    medications=[{"name": "tacrolimus", "start": "2025-01-20"}]))
        return {r for s in a.steps if s.id == "hold_or_reduce_suspect_drug" for r in s.rules}
    assert "drug_induced.immunosuppressant_withhold" in hold_rules(conditions=["rheumatoid arthritis"])
    assert "drug_induced.immunosuppressant_withhold" not in hold_rules(
        transplant={"organ": "kidney", "date": "2024-06-01"})


def test_a_drug_stopped_long_ago_is_not_named_beside_todays(engine):
    """Mycophenolate stopped 14 months before had been named as an agent of immunosuppressant myelotoxicity beside
    the tacrolimus taken now: an agent is a drug taken now or within its class's window (recent_drug_days; a
    cytotoxic drug's nadir window)."""
    meds = [{"name": "mycophenolate mofetil", "status": "stopped", "start": "2022-01-01", "end": "2024-01-10"},
            {"name": "tacrolimus", "start": "2024-01-10"}]
    a = engine.assess(base_case(labs=[lab("wbc", 3.0), lab("anc", 1.2)], medications=meds,
                                history={"transplant": {"organ": "heart"}}))
    assert [c.agents for c in a.causes if c.id == "immunosuppressant_myelotoxicity"] == [["tacrolimus"]]
    chemo = [{"name": "cyclophosphamide", "status": "completed", "start": "2025-02-01", "end": "2025-02-01",
              "indication": "breast cancer"}]
    b = engine.assess(base_case(labs=[lab("wbc", 1.5), lab("anc", 0.4)], medications=chemo))   # 37 days after
    assert [c.agents for c in b.causes if c.id == "cytotoxic_chemotherapy"] == [["cyclophosphamide"]]


def test_fever_from_a_diagnosis_alone_is_said_to_be_one(engine):
    """Febrile neutropenia raised from "Neutropenic fever" on the problem list, with no temperature, had read as a
    measured 38.3 C: the output now says the fever came from a diagnosis; with a temperature it does not."""
    labs = [lab("wbc", 1.0), lab("anc", 0.3)]
    said = "not from a measured temperature"
    a = engine.assess(base_case(labs=labs, history={"conditions": ["Neutropenic fever"]}))
    assert "febrile_neutropenia" in [x.id for x in a.alerts] and [w for w in a.warnings if said in w]
    b = engine.assess(base_case(labs=labs, history={"conditions": ["Neutropenic fever"], "temperature_c": 38.9}))
    assert "febrile_neutropenia" in [x.id for x in b.alerts] and not [w for w in b.warnings if said in w]


def test_a_new_drug_in_its_onset_window_is_weighed_and_named_first_beside_an_old_one_of_its_class(engine):
    """Carbimazole on day 35 beside carbamazepine for 5 years (both on Andersohn's list; onset typically 19-60
    days): the class's window had been judged on the 5 years alone (weight 4, 'outside the window'), and the
    agents listed alphabetically, the anticonvulsant first."""
    a = engine.assess(base_case(labs=[lab("wbc", 2.1), lab("anc", 0.3)], medications=[
        {"name": "carbamazepine", "start": "2020-01-10"}, {"name": "carbimazole", "start": "2025-02-03"}]))
    [cause] = [c for c in a.causes if c.id == "idiosyncratic_drug_agranulocytosis"]
    rules = {e.rule for e in cause.evidence}
    assert "drug_induced.idiosyncratic_in_window" in rules and "drug_induced.idiosyncratic_outside_window" not in rules
    assert cause.agents == ["carbimazole", "carbamazepine"]


def test_the_drug_within_its_onset_window_is_named_first(engine):
    """Methimazole stopped after 51 days and propylthiouracil started 10 days ago in its place, ANC 0.2: the agents
    had read "propylthiouracil, methimazole" (newest first), although the onset window (19-60 days) fits methimazole."""
    meds = [{"name": "methimazole", "status": "stopped", "start": "2025-01-08", "end": "2025-02-28"},
            {"name": "propylthiouracil", "status": "active", "start": "2025-02-28"}]
    a = engine.assess(base_case(labs=[lab("wbc", 1.4), lab("anc", 0.2)], medications=meds))
    cause = next(c for c in a.causes if c.id == "idiosyncratic_drug_agranulocytosis")
    assert cause.agents == ["methimazole", "propylthiouracil"]
    both_out = [{**m, "start": "2024-01-08"} for m in meds[:1]] + meds[1:]     # methimazole for a year: newest first
    cause = next(c for c in engine.assess(base_case(labs=[lab("wbc", 1.4), lab("anc", 0.2)], medications=both_out)).causes
                 if c.id == "idiosyncratic_drug_agranulocytosis")
    assert cause.agents == ["propylthiouracil", "methimazole"]


def test_a_normal_copper_ranks_copper_deficiency_after_every_cause_with_evidence_left(engine):
    """After gastric bypass with anaemia and neutropenia, a measured normal copper had left copper deficiency third,
    above aplastic anaemia: the normal level outweighs the setting. A low copper makes it the leading cause."""
    labs = [lab("wbc", 2.5), lab("anc", 0.8), lab("hemoglobin", 9.6, "g/dL"), lab("platelets", 185), lab("mcv", 93, "fL")]
    case = base_case(patient={"sex": "female", "age_years": 58}, history={"conditions": ["gastric bypass"]})
    normal = engine.assess({**case, "labs": labs + [lab("copper", 96, "ug/dL")]})
    copper = next(c for c in normal.causes if c.id == "copper_deficiency")
    assert copper.score <= 0 and copper.rank == len(normal.causes) and copper.likelihood == "less_likely"
    low = engine.assess({**case, "labs": labs + [lab("copper", 30, "ug/dL")]})
    assert low.causes[0].id == "copper_deficiency"
