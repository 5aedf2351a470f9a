"""engine/kb_numbers.py: a threshold's number and the numbers a rule's prose writes for it agree."""
from __future__ import annotations

from leukodx.engine.kb import rules_dir
from leukodx.engine.kb_numbers import (check_numbers, check_rule_numbers, check_threshold_meanings, comparisons,
                                      mentions)

TH = {
    "moderate_anc": {"value": 1.0, "unit": "10^9/L", "meaning": "ANC below 1.0 is moderate neutropenia."},
    "severe_anc": {"value": 0.5, "unit": "10^9/L", "meaning": "ANC below 0.5 is severe neutropenia."},
    "wbc_withdraw": {"value": 1.5, "unit": "10^9/L", "meaning": "Withdraw below a WBC of 1.5."},
    "min_days": {"value": 28, "unit": "day", "meaning": "At least 4 weeks after the last dose."},
}


def _check(statement: str, when: dict, then: list | None = None) -> list[str]:
    rule = {"id": "t.rule", "statement": statement, "when": when, "then": then or [{"finding": "x"}]}
    return check_rule_numbers([("logic/t.yaml", {"rules": [rule]})], TH)


def test_a_statement_that_writes_another_number_for_the_threshold_is_reported():
    found = _check("ANC below 1.5 calls for withdrawing the drug.", {"anc_max": {"lt": "$moderate_anc"}})
    assert len(found) == 1
    assert "t.rule: $moderate_anc = 1.0" in found[0] and "below 1.5" in found[0]


def test_the_same_number_in_any_spelling_passes():
    when = {"anc_max": {"lt": "$moderate_anc"}}
    assert _check("ANC below 1.0 calls for withdrawing the drug.", when) == []
    assert _check("An ANC under 1,000/uL calls for withdrawing it.", when) == []
    assert _check("ANC <1000 calls for withdrawing it.", when) == []
    assert _check("An ANC below 500/uL calls for withdrawing it.", when) != []


def test_ranges_give_a_lower_and_an_upper_bound():
    when = {"anc": {"ge": "$severe_anc", "lt": "$moderate_anc"}}
    assert _check("Isolated ANC 0.5-1.0 warrants referral within 90 days.", when) == []
    assert _check("Isolated ANC 0.5 to 1.0 x10^9/L warrants referral.", when) == []
    found = _check("Isolated ANC 0.5-1.5 warrants referral.", when)
    assert len(found) == 1 and "$moderate_anc" in found[0]


def test_days_may_be_written_in_weeks_and_other_dimensions_do_not_count():
    when = {"drug_x_days_since_last_dose": {"ge": "$min_days"}}
    assert _check("Neutropenia 4 weeks or more after the last dose (incidence 3-27%).", when) == []
    assert _check("Neutropenia 28 days or more after the last dose.", when) == []
    assert _check("Neutropenia 3 weeks or more after the last dose.", when) != []
    # a count below 0.5 is not a number of days
    assert _check("Onset after the last dose with an ANC below 0.5.", when) == []


def test_a_comparison_named_for_another_fact_is_not_taken_for_this_one():
    when = {"any": [{"anc_max": {"lt": "$moderate_anc"}}, {"wbc": {"lt": "$wbc_withdraw"}}]}
    assert _check("An ANC below 1.0 or a WBC below 1.5 calls for withdrawing it.", when) == []
    found = _check("An ANC below 1.5 or a WBC below 1.0 calls for withdrawing it.", when)
    assert {f.split(" = ")[0].rsplit("$", 1)[1] for f in found} == {"moderate_anc", "wbc_withdraw"}


def test_warning_text_is_read_and_a_threshold_the_prose_never_writes_is_not_reported():
    when = {"anc_max": {"lt": "$moderate_anc"}}
    assert _check("A low count on the drug.", when) == []
    found = _check("A low count on the drug.", when, [{"warning": "The ANC is below 1.5: stop the drug."}])
    assert len(found) == 1


def test_units_and_exponents_are_not_read_as_numbers():
    text = "ANC below 1.5 x10^9/L (1500/uL); Hb below 13 g/dL"
    assert [(c.value, c.dimension, c.fact) for c in comparisons(text)] == [(1.5, "count", "anc"), (13.0, "g/dL", "hemoglobin")]
    assert [(c.value, c.dimension) for c in mentions(text)] == [(1.5, "count"), (1.5, "count"), (13.0, "g/dL")]


def test_a_threshold_meaning_that_writes_another_value_is_reported():
    assert check_threshold_meanings(TH) == []
    bad = {"moderate_anc": {"value": 1.0, "unit": "10^9/L", "meaning": "ANC below 1.5 is moderate neutropenia."}}
    assert len(check_threshold_meanings(bad)) == 1


def test_the_shipped_knowledge_base_writes_its_numbers_as_it_uses_them(kb):
    assert check_numbers(rules_dir(), kb.thresholds) == []
