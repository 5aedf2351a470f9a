"""durable-rules and the plain-Python evaluator of the same compiled conditions must agree exactly.

Facts are generated around every constant the rules compare against (just below, on, just above),
with facts present, absent and of every value the rules test, so that a rule compiler that drops or
mangles a condition shows up as a disagreement.
"""
from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leukodx.engine import conditions as C
from leukodx.engine.reason import DurableReasoner, PlainEvaluator, run_stages, typed_facts
from leukodx.engine.kb import default

KB = default()


def _constants() -> tuple[dict[str, set], dict[str, type]]:
    consts: dict[str, set] = defaultdict(set)
    types: dict[str, type] = {}

    def walk(n):
        if isinstance(n, (C.All, C.Any_)):
            for i in n.items:
                walk(i)
        elif isinstance(n, C.Cmp):
            types[n.fact] = KB.fact_type(n.fact)
            if isinstance(n.value, C.Ref):
                types[n.value.fact] = KB.fact_type(n.value.fact)
            elif isinstance(n.value, float):
                consts[n.fact].update({n.value, n.value - 0.01, n.value + 0.01, n.value * 0.5, n.value * 2})
            else:
                consts[n.fact].add(n.value)
        else:
            types[n.fact] = KB.fact_type(n.fact)
    for r in KB.rules:
        walk(r.condition)
    return consts, types


CONSTS, TYPES = _constants()


def _value(name: str):
    t = TYPES[name]
    if t is bool:
        return st.booleans()
    if t is float:
        pool = sorted(CONSTS.get(name, set()) | {0.0, 1.0, 100.0})
        return st.one_of(st.sampled_from(pool), st.floats(min_value=0, max_value=500, allow_nan=False))
    return st.sampled_from(sorted(CONSTS.get(name, set()) | {"other", "pöor"}))   # "pöor": not ASCII


facts_strategy = st.fixed_dictionaries({}, optional={name: _value(name) for name in sorted(TYPES)})

DURABLE = DurableReasoner(KB)
PLAIN = PlainEvaluator(KB)


@given(facts_strategy)
@settings(max_examples=2500, deadline=None)
def test_every_family_fires_the_same_rules(facts):
    facts = typed_facts(facts)
    for ruleset in KB.rulesets:
        assert DURABLE.fire(ruleset, facts) == PLAIN.fire(ruleset, facts), ruleset


@given(facts_strategy)
@settings(max_examples=500, deadline=None)
def test_compiled_closures_agree_with_the_condition_tree(facts):
    facts = typed_facts(facts)
    for r in KB.rules:
        assert r.test(facts) == C.evaluate(r.condition, facts), r.id


@given(facts_strategy)
@settings(max_examples=500, deadline=None)
def test_staged_reasoning_agrees(facts):
    base = {k: v for k, v in facts.items() if not k.startswith(("finding_", "alert_"))}
    d, _ = run_stages(KB, DURABLE, base)
    p, _ = run_stages(KB, PLAIN, base)
    assert [f.rule.id for f in d] == [f.rule.id for f in p]


def test_generated_facts_reach_every_rule():
    """The generator is not vacuous: with all-true facts near the cutoffs, rules of every family fire."""
    fired = defaultdict(int)
    import random
    rnd = random.Random(7)
    for _ in range(400):
        facts = {}
        for name in TYPES:
            if rnd.random() < 0.5:
                t = TYPES[name]
                facts[name] = (rnd.random() < 0.7) if t is bool else (
                    rnd.choice(sorted(CONSTS[name] | {0.0})) if t is float else rnd.choice(sorted(CONSTS[name] | {"x"})))
        for ruleset in KB.rulesets:
            for rid in PLAIN.fire(ruleset, facts):
                fired[rid] += 1
    assert len(fired) > 0.8 * len(KB.rules)


def test_why_not_explains_a_rule_that_did_not_fire():
    facts = {"anc": 0.7, "anc_max": 0.7, "temperature_c": 37.0}
    reasons = PLAIN.why_not("alerts.agranulocytosis", facts)
    assert reasons and "anc" in reasons[0] and "0.7" in reasons[0]
    assert PLAIN.why_not("alerts.agranulocytosis", {"anc": 0.4, "anc_max": 0.4}) == []
    assert "absent" in PLAIN.why_not("alerts.agranulocytosis", {})[0]


def test_a_case_leaves_its_rulesets_session_empty():
    """Each ruleset keeps one durable-rules session; a case's fact is retracted once its firings are
    read, so the next case meets an empty session (a fact left behind would fire its rules again for
    every later case), and the same facts twice in a row fire the same rules twice."""
    import durable_rules_engine
    from leukodx.engine.reason import SESSION
    reasoner = DurableReasoner(KB)
    facts = typed_facts({name: (True if t is bool else (0.1 if t is float else "other")) for name, t in TYPES.items()})
    fired_any = False
    for ruleset in KB.rulesets:
        first = reasoner.fire(ruleset, facts)
        assert reasoner.fire(ruleset, facts) == first == PLAIN.fire(ruleset, facts), ruleset
        fired_any = fired_any or bool(first)
        left = durable_rules_engine.get_facts(reasoner._handles[ruleset], SESSION)
        assert json.loads(left) == [], (ruleset, left)
    assert fired_any


def test_a_text_outside_ascii_reaches_durable_rules_as_its_rulesets_are_written(monkeypatch):
    """durable-rules compares texts as written: a ruleset written with JSON's ASCII escapes does not match
    the same letter sent unescaped (measured: {"x": "p\\u00e9"} in a rule, "p\u00e9" in UTF-8 in a fact, no
    firing). The rulesets are written by ``json.dumps`` (escaped), so a fact holding such a letter must be too."""
    from leukodx.engine import reason
    sent: list[str] = []
    real = reason.durable_rules_engine.assert_fact
    monkeypatch.setattr(reason.durable_rules_engine, "assert_fact",
                        lambda handle, text: (sent.append(text), real(handle, text))[1])
    ruleset = next(k for k, rules in KB.rulesets.items() for r in rules for f in r.facts if TYPES.get(f) is str)
    text_fact = next(f for r in KB.rulesets[ruleset] for f in r.facts if TYPES.get(f) is str)
    facts = typed_facts({text_fact: "pöor"})
    assert DurableReasoner(KB).fire(ruleset, facts) == PLAIN.fire(ruleset, facts)
    assert sent and sent[0].isascii() and json.loads(sent[0])[text_fact] == "pöor"


def test_a_case_left_in_a_session_is_an_error_never_an_empty_answer(monkeypatch):
    """Were a retract ever missed, durable-rules would take the same case again as already observed
    and fire nothing: the reasoner refuses instead (ReasoningError, and the engine is recycled)."""
    import durable_rules_engine
    from leukodx.engine import reason
    from leukodx.engine.errors import ReasoningError
    reasoner = DurableReasoner(KB)
    ruleset = next(iter(KB.rulesets))
    facts = typed_facts({name: (True if t is bool else (0.1 if t is float else "other")) for name, t in TYPES.items()})
    monkeypatch.setattr(reason.durable_rules_engine, "retract_fact", lambda handle, text: (0, 1))
    assert reasoner.fire(ruleset, facts) == PLAIN.fire(ruleset, facts)
    with pytest.raises(ReasoningError, match="still holds an earlier case"):
        reasoner.fire(ruleset, facts)
    assert reasoner.broken
    monkeypatch.setattr(reason.durable_rules_engine, "retract_fact", lambda handle, text: (2, 1))
    other = DurableReasoner(KB)
    with pytest.raises(ReasoningError, match="could not retract"):
        other.fire(ruleset, facts)
    assert other.broken and durable_rules_engine is reason.durable_rules_engine
