"""Reason: run the compiled rules over a case's facts, stage by stage, in durable-rules.

Families of rules (rules/logic/<family>.yaml) of one stage are packed, whole, into durable-rules
rulesets of at most 60 rules (kb.rulesets), so a case needs few sessions. Stages run in order; the findings and alerts concluded at one stage become facts (``finding_x``, ``alert_x``)
of the next, so later rules build on earlier ones.

How durable-rules is used, after ../shared/knowledge/durable-rules-notes.md:

* one Host per process, built after any fork, whose background dispatch loops never start
  (``_run`` does nothing); actions run synchronously inside ``assert_fact``;
* one process-wide lock around each case (the C core is not thread-safe; it never releases the
  GIL, so the lock costs nothing);
* a fresh session id per case and ruleset, deleted after a clean evaluation; after an error
  the state is left alone and the engine is marked broken, so its owner recycles it;
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
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from durable import engine as durable_engine

from . import conditions as C
from .errors import KnowledgeBaseError, ReasoningError
from .kb import KnowledgeBase, Rule

__all__ = ["Firing", "Reasoner", "DurableReasoner", "PlainEvaluator", "run_stages", "typed_facts"]

_LOCK = threading.Lock()
_NAMES = itertools.count(1)
#: facts one ruleset may read: durable-rules takes at most 253 properties per asserted fact,
#: ``kind`` and ``sid`` included (error 302 above); a margin is kept.
MAX_FACTS_PER_ASSERT = 240


@dataclass(frozen=True)
class Firing:
    rule: Rule
    facts: dict[str, Any]     # the facts the rule's condition read, as the case had them


class Reasoner(Protocol):
    def fire(self, ruleset: str, facts: dict[str, Any]) -> set[str]: ...


class _QuietHost(durable_engine.Host):
    """A Host whose timer-driven dispatch loops never start (they race with synchronous use)."""

    def _run(self) -> None:  # noqa: D401 - durable-rules hook
        return None


def _ignore(c: Any) -> None:
    return None


class DurableReasoner:
    """The knowledge base compiled into durable-rules rulesets (kb.rulesets)."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb
        self.broken = False
        self._sink: list[str] = []
        self._host = _QuietHost()
        self._names: dict[str, str] = {}
        self._reads: dict[str, frozenset[str]] = {}
        self._sid = itertools.count(1)
        rulesets: dict[str, dict[str, Any]] = {}
        too_wide = []
        for key, rules in kb.rulesets.items():
            self._reads[key] = frozenset(f for r in rules for f in r.facts)
            if len(self._reads[key]) > MAX_FACTS_PER_ASSERT:
                too_wide.append(f"ruleset {key} reads {len(self._reads[key])} facts; durable-rules takes at most "
                                f"{MAX_FACTS_PER_ASSERT} per assertion: split its families")
            name = f"leukodx_{next(_NAMES)}_{key.replace('+', '_')}"[:120]   # a name can be registered only once
            self._names[key] = name
            rulesets[name] = {
                r.id.replace(".", "__"): {"all": [{"m": {"$and": [{"kind": "case"}, r.durable]}}],
                                          "run": self._action(r.id)}
                for r in rules}
            rulesets[name]["leukodx__catch_all"] = {"all": [{"m": {"kind": "case"}}], "run": _ignore}
        if too_wide:
            raise KnowledgeBaseError(too_wide)
        self._host.set_rulesets(rulesets)

    def _action(self, rule_id: str) -> Callable[[Any], None]:
        sink = self._sink

        def act(c: Any) -> None:   # exactly one parameter, or durable-rules makes it asynchronous
            sink.append(rule_id)
        return act

    def fire(self, ruleset: str, facts: dict[str, Any]) -> set[str]:
        if self.broken:
            raise ReasoningError("the rules engine failed earlier in this process and must be recycled")
        name = self._names[ruleset]
        sid = str(next(self._sid))
        reads = self._reads[ruleset]
        # Only what this ruleset's rules read: a fact's size is bounded by the knowledge base, not by the case.
        fact = {k: v for k, v in facts.items() if k in reads}
        with _LOCK:
            self._sink.clear()
            try:
                self._host.assert_fact(name, {**fact, "kind": "case", "sid": sid})
            except BaseException as e:  # the C core reports errors as generic exceptions
                self.broken = True
                raise ReasoningError(f"durable-rules failed in ruleset {ruleset}: {e}") from e
            fired = set(self._sink)
            self._sink.clear()
            try:
                self._host.delete_state(name, sid)
            except BaseException as e:
                self.broken = True
                raise ReasoningError(f"durable-rules could not delete a session of {ruleset}: {e}") from e
        return fired


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
