"""Compile rules/logic/*.yaml: parse each condition against the fact vocabulary, check each
conclusion against the catalogues, order the families into stages and pack them into durable-rules
rulesets."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pydantic import ValidationError

from . import conditions as C
from .kb_models import CONCLUSION_KINDS, Conclusion, FamilySpec, Rule
from .kb_read import read_yaml

if TYPE_CHECKING:
    from .kb import KnowledgeBase

__all__ = ["compile_rules", "MAX_RULES_PER_RULESET"]


def compile_rules(kb: KnowledgeBase, root: Path, problems: list[str]) -> None:
    numbers = {k: float(v["value"]) for k, v in kb.thresholds.items() if isinstance(v, dict) and "value" in v}
    produced_at: dict[str, int] = {}     # "finding_x" / "alert_x" -> stage that concludes it
    specs: list[tuple[FamilySpec, str]] = []
    for path in sorted((root / "logic").glob("*.yaml")):
        raw = read_yaml(path, problems)
        try:
            specs.append((FamilySpec.model_validate(raw), f"logic/{path.name}"))
        except ValidationError as err:
            for e in err.errors()[:5]:
                problems.append(f"logic/{path.name}: {e['msg']} at {'.'.join(map(str, e['loc']))}")
    labels = _label_family(kb, problems)
    if labels is not None:
        specs.append((labels, "label_thresholds.yaml"))
    specs.sort(key=lambda s: (s[0].stage, s[0].family))
    seen: set[str] = set()
    for fam, _ in specs:
        for r in fam.rules:
            for c in r.then:
                if c.kind in ("finding", "alert"):
                    name = f"{c.kind}_{getattr(c, c.kind)}"
                    produced_at[name] = min(produced_at.get(name, fam.stage), fam.stage)
    order = 0
    for fam, fname in specs:
        if fam.family in kb.families:
            problems.append(f"{fname}: family {fam.family!r} defined twice")
        kb.families[fam.family] = []
        kb.family_titles[fam.family] = fam.title
        for r in fam.rules:
            where = f"{fname}: {r.id}"
            if r.id in seen:
                problems.append(f"{where}: duplicate rule id")
            seen.add(r.id)
            try:
                node = C.parse(r.when, numbers, kb.facts.type_of, kb.facts.check_value)
            except C.ConditionError as e:
                problems.append(f"{where}: condition does not compile: {e}")
                continue
            for name in C.facts_used(node):
                if name.startswith(("finding_", "alert_")):
                    if name not in produced_at:
                        problems.append(f"{where}: reads {name}, which no rule concludes")
                    elif produced_at[name] >= fam.stage:
                        problems.append(f"{where}: reads {name} concluded at stage {produced_at[name]}; "
                                        f"a rule may only read findings and alerts of earlier stages")
            for c in r.then:
                problems.extend(f"{where}: {p}" for p in _check_conclusion(kb, c))
            rule = Rule(id=r.id, family=fam.family, stage=fam.stage, order=order, statement=r.statement,
                        rationale=r.rationale, condition=node, durable=C.to_durable(node), then=tuple(r.then),
                        sources=tuple(r.sources), facts=tuple(C.facts_used(node)), file=fname,
                        test=C.compile_python(node))
            order += 1
            kb.rules.append(rule)
            kb.families[fam.family].append(rule)
    for fam, _ in specs:
        if not kb.stages or kb.stages[-1][0] != fam.stage:
            kb.stages.append((fam.stage, []))
        kb.stages[-1][1].append(fam.family)
    _pack_rulesets(kb)
    kb._by_id = {r.id: r for r in kb.rules}


def _label_family(kb: "KnowledgeBase", problems: list[str]) -> "FamilySpec | None":
    """rules/label_thresholds.yaml as the rule family `labels`: one rule per drug, count and value."""
    if not kb.label_thresholds:
        return None
    names = {"anc_max": "ANC", "wbc": "WBC", "hemoglobin": "haemoglobin", "platelets": "platelet count",
             "lymphocytes": "lymphocyte count"}
    rules = []
    for i, t in enumerate(kb.label_thresholds):
        try:
            test, unit = t["test"], ("g/dL" if t["test"] == "hemoglobin" else "x10^9/L")
            # `below` a value, or `at_or_below` it where the label's range includes the value itself
            op, bound, words = (("le", t["at_or_below"], "at or below") if "at_or_below" in t
                                else ("lt", t["below"], "below"))
            rules.append({
                "id": f"labels.{t['drug']}_{test}_{str(bound).replace('.', '_')}",
                "statement": f"The {t['drug'].replace('_', ' ')} label: {names.get(test, test)} {words} {bound:g} "
                             f"{unit}: {t['action']}.",
                "when": {f"drug_{t['drug']}_active": True, test: {op: bound},
                         **({f"{t['with_class']}_active": True} if t.get("with_class") else {})},
                "then": [{"step": t["step"], "urgency": t["urgency"]}], "sources": t["sources"]})
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"label_thresholds.yaml: labels[{i}]: {e}")
    try:
        # stage 2: a label's rule reads only counts and drugs, no conclusion of another rule, so it need not wait
        # for stage 3, whose rulesets are full (docs/performance.md, the packing cliff)
        return FamilySpec.model_validate({"family": "labels", "stage": 2, "title": "Counts at which a drug's label "
                                          "asks to interrupt or not start it", "rules": rules})
    except ValidationError as e:
        problems.append(f"label_thresholds.yaml: {e.errors()[0]['msg']}")
        return None


MAX_RULES_PER_RULESET = 60


def _pack_rulesets(kb: KnowledgeBase) -> None:
    """Whole families of one stage packed into as few rulesets as durable-rules' limits allow (a family is never
    split). Fewer rulesets, fewer sessions: each costs an assert and a retract per case. First fit had left stage 3's
    179 rules in four rulesets where three hold them (60 + 60 + 59): the fewest are searched for (a dozen families)."""
    for stage, families in kb.stages:
        packs = _fewest_packs({f: len(kb.families[f]) for f in families}, MAX_RULES_PER_RULESET)
        names = ["+".join(sorted(p)) for p in packs]
        for name in names:
            kb.rulesets[name] = [r for f in name.split("+") for r in kb.families[f]]
        kb.stage_rulesets.append((stage, names))


def _fewest_packs(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """``sizes``' keys in the fewest groups whose sizes sum to at most ``limit`` each (largest first, depth first; the
    first packing found with the fewest groups, so the same families always pack the same way)."""
    order = sorted(sizes, key=lambda f: (-sizes[f], f))
    if any(sizes[f] > limit for f in order):
        return [[f] for f in order]       # a family over the limit is a ruleset of its own (the check names it)

    def place(i: int, packs: list[list[str]], loads: list[int], most: int) -> Optional[list[list[str]]]:
        if i == len(order):
            return packs
        f, tried = order[i], set()
        for j, load in enumerate(loads):
            if load + sizes[f] <= limit and load not in tried:     # equal loads are the same choice
                tried.add(load)
                packs[j].append(f)
                loads[j] += sizes[f]
                if (found := place(i + 1, packs, loads, most)) is not None:
                    return found
                packs[j].pop()
                loads[j] -= sizes[f]
        if len(packs) < most:
            found = place(i + 1, packs + [[f]], loads + [sizes[f]], most)
            if found is not None:
                return found
        return None

    least = -(-sum(sizes.values()) // limit)
    for most in range(max(least, 1), len(order) + 1):
        if (found := place(0, [], [], most)) is not None:
            return [list(p) for p in found]
    return [[f] for f in order]


def _check_conclusion(kb: KnowledgeBase, c: Conclusion) -> list[str]:
    set_fields = [k for k in CONCLUSION_KINDS if getattr(c, k) is not None]
    if len(set_fields) != 1:
        return [f"a conclusion needs exactly one of finding/alert/cause/step/block_step/missing/warning, got {set_fields}"]
    kind = set_fields[0]
    value = getattr(c, kind)
    catalogue = {"finding": kb.findings, "alert": kb.alerts, "cause": kb.causes, "step": kb.steps,
                 "block_step": kb.steps}.get(kind)
    out = []
    if catalogue is not None and value not in catalogue:
        out.append(f"unknown {kind} id {value!r}")
    if kind == "cause" and c.weight is None:
        out.append(f"cause {value} needs a weight")
    if kind != "cause" and c.weight is not None:
        out.append("weight only goes with cause")
    if kind == "step" and c.urgency is None:
        out.append(f"step {value} needs an urgency")
    if kind != "step" and c.urgency is not None:
        out.append("urgency only goes with step")
    return out
