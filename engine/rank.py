"""Rank: the evidence that fired for and against each cause, summed into a score, ranked.

A cause is listed only when at least one rule supports it (positive weight). Likelihood bands
come from rules/thresholds.yaml (`likelihood`); ties keep the order of rules/causes.yaml.
"""
from __future__ import annotations

from collections import defaultdict

from .assessment import CauseOut, Evidence
from .kb import KnowledgeBase
from .normalize import NormMed
from .reason import Firing

__all__ = ["rank_causes"]


def _agents(kb: KnowledgeBase, cause_id: str, meds: list[NormMed]) -> list[str]:
    classes = set(kb.causes[cause_id].drug_classes)
    return sorted({m.drug_name or m.text for m in meds if m.classes & classes})


def rank_causes(kb: KnowledgeBase, firings: list[Firing], meds: list[NormMed]) -> list[CauseOut]:
    evidence: dict[str, list[Evidence]] = defaultdict(list)
    for f in firings:
        for c in f.rule.then:
            if c.kind != "cause":
                continue
            w = float(c.weight or 0.0)
            evidence[c.cause].append(Evidence.model_construct(
                rule=f.rule.id, statement=f.rule.statement, weight=w,
                direction="for" if w > 0 else "against" if w < 0 else "neutral",
                facts=f.facts, sources=list(f.rule.sources)))
    order = {cid: i for i, cid in enumerate(kb.causes)}
    likely, possible = kb.likelihood["likely_min_score"], kb.likelihood["possible_min_score"]
    scored = []
    for cid, items in evidence.items():
        if not any(e.weight > 0 for e in items):
            continue
        score = sum(e.weight for e in items)
        scored.append((-score, order[cid], cid, score, items))
    scored.sort()
    out = []
    for rank, (_, _, cid, score, items) in enumerate(scored, start=1):
        entry = kb.causes[cid]
        out.append(CauseOut(
            id=cid, title=entry.title, rank=rank, score=score,
            likelihood="likely" if score >= likely else "possible" if score >= possible else "less_likely",
            description=entry.description, agents=_agents(kb, cid, meds), evidence=items,
            sources=sorted({s for e in items for s in e.sources} | set(entry.sources))))
    return out
