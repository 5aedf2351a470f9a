"""Parse (engine/parse.py): text, bytes or a mapping into a Case, or a CaseError whose problems name
the field and the reason. Each case here is refused by ``parse_case`` itself, before normalize runs;
refusals that need the knowledge base (units, codes, plausibility, dates) are in test_normalize.py."""
from __future__ import annotations

import pytest

from leukodx.engine import CaseError
from leukodx.engine.parse import parse_case

from conftest import base_case, lab


def parse_problems(raw) -> list[str]:
    with pytest.raises(CaseError) as e:
        parse_case(raw)
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize("raw,where,words", [
    ({}, "", "empty"),
    ("", "", "empty"),
    ("{\"labs\": [", "", "not valid JSON"),
    ("labs: [\n  - {test: wbc", "", "not valid YAML"),
    ("[1, 2]", "", "JSON object"),
    ({"labs": []}, "labs", "no lab values"),
    ({"patient": {"sex": "female"}}, "labs", "no lab values"),
    (base_case(labs=[lab("wbc", "3.2")]), "labs[0].value", "must be a number"),
    (base_case(labs=[lab("wbc", True)]), "labs[0].value", "valid number"),
    (base_case(labs=[lab("wbc", float("nan"))]), "labs[0].value", "finite"),
    (base_case(labs=[lab("wbc", float("inf"))]), "labs[0].value", "finite"),
    ('{"labs": [{"test": "wbc", "value": NaN, "unit": "10^9/L"}]}', "", "NaN"),
    ('{"labs": [{"test": "wbc", "value": 1e309, "unit": "10^9/L"}]}', "labs[0].value", "finite"),
    ('{"id": "a", "id": "b", "labs": []}', "", "duplicated key"),
    ("id: a\nid: b\nlabs: []\n", "", "duplicated key"),
    (base_case(labs=[{"value": 3, "unit": "10^9/L"}]), "labs[0]", "give `test` or `loinc`"),
    (base_case(labs=[{"test": "wbc", "value": 3}]), "labs[0].unit", "required"),
    (base_case(medications=[{"status": "active"}]), "medications[0]", "give `name` or `rxnorm`"),
    (base_case(patient={"sex": "f"}), "patient.sex", "female"),
    (base_case(surprise=1), "surprise", "unknown field"),
    (base_case(as_of="0000-01-01"), "as_of", ""),
    (base_case(history={"temperature_c": 52}), "history.temperature_c", "45"),
])
def test_bad_input_is_refused_with_field_and_reason(raw, where, words):
    found = parse_problems(raw)
    assert any(p.startswith(where) and words.lower() in p.lower() for p in found), found


def test_deep_nesting_is_refused_cleanly():
    deep = "[" * 100000 + "]" * 100000
    assert parse_problems('{"labs": ' + deep + "}")


def test_yaml_aliases_are_refused():
    text = "a: &x [1, 2]\nb: *x\nlabs: []\n"
    assert any("alias" in p for p in parse_problems(text))


def test_the_engine_reports_parse_problems_unchanged(engine):
    """The pipeline raises parse's own CaseError: same problems, nothing added or lost."""
    raw = base_case(labs=[lab("wbc", "3.2"), {"value": 3, "unit": "10^9/L"}], surprise=1)
    with pytest.raises(CaseError) as e:
        engine.assess(raw)
    assert [str(p) for p in e.value.problems] == parse_problems(raw)
