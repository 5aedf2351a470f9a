"""Parse (engine/parse.py): text, bytes or a mapping into a Case, or a CaseError whose problems name
the field and the reason. Each case here is refused by ``parse_case`` itself, before normalize runs;
refusals that need the knowledge base (units, codes, plausibility, dates) are in test_normalize.py."""
from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from leukodx.engine import CaseError
from leukodx.engine.parse import build_yaml, load_json_document, parse_case

from conftest import ROOT, base_case, lab


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
    (base_case(medications=[{"status": "active"}]), "medications[0]", "give `name`, `rxnorm` or `atc`"),
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


# ---- YAML built from libyaml's events reads as yaml.safe_load reads it ---------------------------

_YAML_FILES = sorted(p for d in ("cases", "rules", "api/examples") for p in (ROOT / d).rglob("*.yaml"))


def test_every_yaml_file_of_the_project_reads_as_pyyaml_reads_it():
    assert len(_YAML_FILES) > 250
    for path in _YAML_FILES:
        text = path.read_text(encoding="utf-8")
        assert build_yaml(text, path.name) == yaml.safe_load(text), path


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789+-._:eExXoOTZyesnotrufalNuNL~ "), min_size=1, max_size=12))
def test_a_plain_scalar_is_typed_as_pyyaml_types_it(word):
    """Numbers, dates, booleans, nulls and text that looks like them: the same type and value."""
    text = f"v: {word}\n"
    try:
        expected = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):
        with pytest.raises(CaseError):
            build_yaml(text, "case")
        return
    if isinstance(expected, dict) and isinstance(expected.get("v"), float) and expected["v"] != expected["v"]:
        assert build_yaml(text, "case")["v"] != build_yaml(text, "case")["v"]      # NaN
    elif isinstance(expected, dict) and isinstance(expected.get("v"), int) and abs(expected["v"]) > 10 ** 308:
        assert build_yaml(text, "case")["v"] in (float("inf"), float("-inf"))     # beyond the float range
    else:
        assert build_yaml(text, "case") == expected


@pytest.mark.parametrize("text, reason", [
    ("a: 1\na: 2\n", "duplicated key 'a'"),
    ("a: &x 1\nb: *x\n", "aliases are not accepted"),
    ("a: !!python/object:os.system x\n", "tags are not accepted"),
    ("<<: {a: 1}\n", "merge"),
    ("? [1, 2]\n: 3\n", "a mapping key must be a plain value"),
    ("--- 1\n--- 2\n", "more than one YAML document"),
    ("a: [1, 2\n", "line 1"),
])
def test_hostile_or_broken_yaml_is_refused_with_its_reason(text, reason):
    with pytest.raises(CaseError) as e:
        build_yaml(text, "case")
    assert reason in e.value.problems[0].msg


def test_nesting_beyond_the_limit_is_refused_before_it_is_built():
    with pytest.raises(CaseError) as e:
        build_yaml("[" * 100_000 + "]" * 100_000, "case", max_depth=64)
    assert "nested too deeply" in e.value.problems[0].msg


def test_yaml_scalars_are_typed_by_their_text_and_quoting_every_time():
    # the typing of each scalar is kept per text: a quoted and a plain `3` (or date) stay what each is,
    # in any order and on every reading
    from datetime import date
    doc = "a: 3\nb: '3'\nc: 2025-01-02\nd: '2025-01-02'\ne: 3\nf: yes\ng: ~\nh: 0x1F\ni: 1_000\n"
    expected = {"a": 3, "b": "3", "c": date(2025, 1, 2), "d": "2025-01-02", "e": 3, "f": True, "g": None,
                "h": 31, "i": 1000}
    for _ in range(2):
        assert build_yaml(doc) == expected == yaml.safe_load(doc)
        assert build_yaml("b: '3'\na: 3\n") == {"b": "3", "a": 3}


def test_an_impossible_yaml_date_is_refused_on_every_reading():
    for _ in range(2):      # a value that cannot be made is never kept
        with pytest.raises(CaseError, match="not valid YAML: month must be in 1..12"):
            build_yaml("labs: []\nas_of: 2025-13-45\n")


def test_long_yaml_scalars_are_never_kept():
    # a case of long texts and numbers, sent again and again with other values, must not fill memory:
    # only the two short keys may be added to the caches
    from leukodx.engine import parse as parse_module
    resolved, typed = parse_module._resolved.cache_info().currsize, parse_module._typed.cache_info().currsize
    doc = "a: " + "7" * 5000 + "\nb: " + "x" * 5000 + "\nc: 1" + "0" * 100 + "\n"
    assert build_yaml(doc) == {"a": float("inf"), "b": "x" * 5000, "c": 10 ** 100}
    assert parse_module._resolved.cache_info().currsize <= resolved + 3
    assert parse_module._typed.cache_info().currsize == typed


def test_a_fahrenheit_temperature_is_refused_with_its_celsius_value():
    """101.3 as temperature_c had been refused with only "less than or equal to 45"."""
    from leukodx.engine import CaseError, get_engine
    from conftest import base_case
    with pytest.raises(CaseError) as e:
        get_engine().assess(base_case(history={"temperature_c": 101.3}))
    assert [str(p) for p in e.value.problems] == [
        "history.temperature_c: 101.3 is not a body temperature in Celsius (25-45); if it is 101.3 F, send 38.5"]
    with pytest.raises(CaseError, match="less than or equal to 45"):
        get_engine().assess(base_case(history={"temperature_c": 150}))      # not a body temperature either way


@pytest.mark.parametrize("word", ["010", "+010", "-010", "0_10", "01_0", "09", "0", "-0", "1_000"])
def test_a_leading_zero_is_read_as_pyyaml_reads_it(word):
    """'010' is YAML 1.1 octal (8) for PyYAML; the fast path had read it as decimal 10 (found by the property test)."""
    text = f"v: {word}\n"
    assert build_yaml(text, "case") == yaml.safe_load(text)


def test_a_number_too_small_for_a_float_is_not_read_as_zero(engine):
    """An ANC of 1e-400 had been read as 0: profound neutropenia, from a number no laboratory sends."""
    doc = load_json_document(b'{"a": 1e-400, "b": -1E-999, "c": 0.0, "d": 0e5, "e": 2.5e-3}', "case", 1000)
    assert math.isnan(doc["a"]) and math.isnan(doc["b"]) and (doc["c"], doc["d"], doc["e"]) == (0.0, 0.0, 0.0025)
    body = (b'{"id": "t", "as_of": "2025-03-10", "labs": [{"test": "wbc", "value": 1.8, "unit": "10^9/L", '
            b'"time": "2025-03-10T08:00:00Z"}, {"test": "anc", "value": 1e-400, "unit": "10^9/L", '
            b'"time": "2025-03-10T08:00:00Z"}]}')
    a = engine.assess(load_json_document(body, "case", 10_000), partial=True)
    assert a.risk_tier.tier == "unknown" and [n.field for n in a.not_assessed] == ["labs[1]"]
