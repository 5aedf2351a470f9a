"""Reason: run the compiled rules over a case's facts, stage by stage, in durable-rules.

Families of rules (rules/logic/<family>.yaml) of one stage are packed, whole, into durable-rules
rulesets of at most 60 rules (kb.rulesets), so a case needs few sessions. Stages run in order; the findings and alerts concluded at one stage become facts (``finding_x``, ``alert_x``)
of the next, so later rules build on earlier ones.

How durable-rules is used, after ../shared/knowledge/durable-rules-notes.md:

* the C core driven directly (no Host, so no background dispatch loops), built after any fork;
  the actions durable-rules starts for a case are taken and completed in the same call;
* one process-wide lock around each case (the C core is not thread-safe; it never releases the
  GIL, so the lock costs nothing);
* one session per ruleset, kept for the life of the engine: each case's fact is asserted, its
  actions taken, and the fact retracted, which leaves the session empty for the next case. (A fresh
  session per case, deleted after it, was the first design: making one zeroes the hash indexes of
  every node of the ruleset, megabytes per case, 22% of a CDS call's instructions.) A case that
  durable-rules reports as already observed (a retract missed: it would fire nothing) is an error.
  After an error the session is left alone and the engine is marked broken, so its owner recycles it;
* every fact carries ``kind: case`` and every rule requires it; values are typed before they
  are asserted; actions take exactly one argument and only record the rule id;
* ``$or`` can fire a rule once per true branch: firings are de-duplicated;
* durable-rules' JSON parser refuses numbers written with an exponent and no decimal point
  (``1e-05``, ``1e+16``: error 204, measured): :func:`typed_facts` maps magnitudes below 1e-4
  (far below any clinical resolution) to 0 and caps them at 1e15, for both backends alike;
* a fact that matches no rule raises ``MessageNotHandledException``, and deleting that session
  afterwards crashed the process (segfault, measured here): every ruleset therefore carries one
  catch-all rule (``kind: case``) whose action does nothing, so every fact is handled;
* an asserted fact holds at most 253 properties: the C core keeps an object's properties in a
  fixed table of 255 slots (``MAX_OBJECT_PROPERTIES``) and adds ``id`` itself, and one more gives
  error 302 (``ERR_EVENT_MAX_PROPERTIES``; measured: 251 properties plus ``kind`` and ``sid``
  pass, 252 fail). A case's facts grow with its drugs (``drug_x_active``, ``_recent``,
  ``_days_on`` ... per drug and per class), so a case with about 71 distinct known drugs went
  over. Each ruleset is therefore sent only the facts its rules read (at most 68 today), and
  :class:`DurableReasoner` refuses, when it is built, a ruleset whose rules read more than
  :data:`MAX_FACTS_PER_ASSERT`.

:class:`PlainEvaluator` runs the same parsed conditions in Python. It is the reference the
differential test compares durable-rules against, and it explains why a rule did not fire.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import durable_rules_engine
from pydantic_core import to_json

from . import conditions as C
from .errors import KnowledgeBaseError, ReasoningError
from .kb import KnowledgeBase, Rule

__all__ = ["Firing", "Reasoner", "DurableReasoner", "PlainEvaluator", "run_stages", "typed_facts"]

_LOCK = threading.Lock()
_CATCH_ALL = "leukodx__catch_all"
_NAMES = itertools.count(1)
#: facts one ruleset may read: durable-rules takes at most 253 properties per asserted fact,
#: ``kind`` and ``sid`` included (error 302 above); a margin is kept.
MAX_FACTS_PER_ASSERT = 240
SESSION = "leukodx"        # the one session (durable-rules' sid) of each ruleset


@dataclass(frozen=True)
class Firing:
    rule: Rule
    facts: dict[str, Any]     # the facts the rule's condition read, as the case had them


_FIRST_KEY = re.compile(r'\s*\{\s*"([A-Za-z0-9_]+)"\s*:')


class Reasoner(Protocol):
    def fire(self, ruleset: str, facts: dict[str, Any]) -> set[str]: ...


class DurableReasoner:
    """The knowledge base compiled into durable-rules rulesets (kb.rulesets), driven through its C core.

    durable-rules decides every firing; leukodx only reads which rules it fired. The Python layer of
    durable-rules (a Host, a Closure and a Promise per firing, the session state written to JSON and
    read back after each action) is not used: each case is asserted with ``assert_fact``, the fired
    actions are taken one by one with ``start_action_for_state`` / ``complete_and_start_action`` (their
    rule names are the rule ids), and the fact is retracted from the ruleset's one session.
    """

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb
        self.broken = False
        self._handles: dict[str, int] = {}
        self._rule_of: dict[str, str] = {}
        self._reads: dict[str, frozenset[str]] = {}
        too_wide = []
        for key, rules in kb.rulesets.items():
            self._reads[key] = frozenset(f for r in rules for f in r.facts)
            if len(self._reads[key]) > MAX_FACTS_PER_ASSERT:
                too_wide.append(f"ruleset {key} reads {len(self._reads[key])} facts; durable-rules takes at most "
                                f"{MAX_FACTS_PER_ASSERT} per assertion: split its families")
            definition = {}
            for r in rules:
                name = r.id.replace(".", "__")
                self._rule_of[name] = r.id
                definition[name] = {"all": [{"m": {"$and": [{"kind": "case"}, r.durable]}}]}
            definition[_CATCH_ALL] = {"all": [{"m": {"kind": "case"}}]}
            name = f"leukodx_{next(_NAMES)}_{key.replace('+', '_')}"[:120]   # a name can be registered only once
            self._handles[key] = durable_rules_engine.create_ruleset(name, json.dumps(definition))
        if too_wide:
            raise KnowledgeBaseError(too_wide)

    def fire(self, ruleset: str, facts: dict[str, Any]) -> set[str]:
        if self.broken:
            raise ReasoningError("the rules engine failed earlier in this process and must be recycled")
        handle = self._handles[ruleset]
        reads = self._reads[ruleset]
        # Only what this ruleset's rules read: a fact's size is bounded by the knowledge base, not by the case.
        fact = {k: v for k, v in facts.items() if k in reads}
        fact.update(kind="case", sid=SESSION)
        text = _json(fact)
        fired: set[str] = set()
        with _LOCK:
            try:
                code, state = durable_rules_engine.assert_fact(handle, text)
                if code == 1:              # not handled: impossible with the catch-all rule
                    raise ReasoningError(f"durable-rules did not handle the case in ruleset {ruleset}")
                if code == 2:              # "observed": the same fact is still in the session, so nothing fires
                    raise ReasoningError(f"durable-rules' session of {ruleset} still holds an earlier case")
                if code != 3:
                    result = durable_rules_engine.start_action_for_state(handle, state)
                    while result:
                        # {rule name: the matched fact}: only the name is wanted (parsing the fact cost more
                        # than durable-rules' own work); rule names are plain identifiers
                        named = _FIRST_KEY.match(result[1])
                        fired.update((named.group(1),) if named else json.loads(result[1]))
                        nxt = durable_rules_engine.complete_and_start_action(handle, state)
                        result = (None, nxt) if nxt else None
            except ReasoningError:
                self.broken = True
                raise
            except BaseException as e:  # the C core reports errors as generic exceptions
                self.broken = True
                raise ReasoningError(f"durable-rules failed in ruleset {ruleset}: {e}") from e
            try:
                code, _ = durable_rules_engine.retract_fact(handle, text)
                if code not in (0, 3):
                    raise RuntimeError(f"code {code}")
            except BaseException as e:
                self.broken = True
                raise ReasoningError(f"durable-rules could not retract a case from {ruleset}: {e}") from e
        fired.discard(_CATCH_ALL)
        return {self._rule_of[name] for name in fired}


def _json(fact: dict[str, Any]) -> str:
    """The fact as durable-rules reads it: pydantic-core's encoder (a quarter of ``json.dumps``'s time; the same
    text for every float :func:`typed_facts` lets through), or ``json.dumps``'s ASCII escapes when a text holds
    another letter, as the rulesets' definitions were written."""
    text = to_json(fact).decode()
    return text if text.isascii() else json.dumps(fact)


class PlainEvaluator:
    """The same compiled conditions, evaluated in plain Python."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb

    def fire(self, ruleset: str, facts: dict[str, Any]) -> set[str]:
        return {r.id for r in self.kb.rulesets[ruleset] if r.test(facts)}

    def why_not(self, rule_id: str, facts: dict[str, Any]) -> list[str]:
        return C.explain(self.kb.rule(rule_id).condition, facts)


_TINY, _HUGE = 1e-4, 1e15


def typed_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """Facts as durable-rules can take them: bool, str, or float within (1e-4, 1e15) in magnitude."""
    out: dict[str, Any] = {}
    for k, v in facts.items():
        if isinstance(v, bool) or isinstance(v, str):
            out[k] = v
        elif isinstance(v, (int, float)):
            v = float(v)
            if abs(v) < _TINY:
                v = 0.0
            out[k] = max(-_HUGE, min(_HUGE, v))
        else:
            raise TypeError(f"fact {k} has an untyped value {v!r}")
    return out


def run_stages(kb: KnowledgeBase, reasoner: Reasoner, base_facts: dict[str, Any]) -> tuple[list[Firing], dict[str, Any]]:
    """All stages over one case. Returns the firings in knowledge-base order and the final facts."""
    facts = typed_facts(base_facts)
    firings: list[Firing] = []
    for _stage, rulesets in kb.stage_rulesets:
        fired_ids: set[str] = set()
        for ruleset in rulesets:
            fired_ids |= reasoner.fire(ruleset, facts)
        stage_rules = sorted((kb.rule(i) for i in fired_ids), key=lambda r: r.order)
        for r in stage_rules:
            firings.append(Firing(r, {f: facts[f] for f in r.facts if f in facts}))
        for r in stage_rules:   # conclusions feed the next stage only
            for c in r.then:
                if c.kind in ("finding", "alert"):
                    facts[f"{c.kind}_{getattr(c, c.kind)}"] = True
    return firings, facts
