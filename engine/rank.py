"""Rank: the evidence that fired for and against each cause, summed into a score, ranked.

A cause is listed only when at least one rule supports it (positive weight). Likelihood bands
come from rules/thresholds.yaml (`likelihood`). Equal scores: the cause with the strongest single piece
of supporting evidence first, then the one with less evidence against, then the order of
rules/causes.yaml. One drug exposure is counted once: a drug in two classes (penicillin G is a
beta-lactam and an agranulocytosis drug) supports only the higher-ranked of its causes; the other is
dropped with a note on the kept one. A drug started after the current count was drawn cannot have caused
it: it is not an agent of any cause, and a drug cause whose every agent started after the count is not
listed (derive's warnings say so).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any, Optional

from .assessment import CauseOut, Evidence
from .exposure import started_after
from .kb import KnowledgeBase
from .normalize import NormMed
from .reason import Firing

__all__ = ["rank_causes"]


def _agents(kb: KnowledgeBase, cause_id: str, meds: list[NormMed], interactions: list[dict[str, Any]],
            count_day: Optional[date] = None) -> list[str]:
    entry = kb.causes[cause_id]
    if entry.agents_from == "interactions":      # the combination is the agent, not one drug of it
        return [" + ".join("/".join(side) for side in i["names"]) for i in interactions]
    classes = set(entry.drug_classes)
    # a drug taken within the cause's onset window on the count's day first (methimazole stopped on day 51 before
    # the propylthiouracil of day 10 that replaced it), then the most recently started (a drug started 35 days ago
    # before one taken for 5 years), then by name
    mine = sorted((m for m in meds if m.classes & classes),
                  key=lambda m: (not _in_window(kb, entry.onset_window, m, count_day),
                                 -(m.start.toordinal() if m.start else 0), m.drug_name or m.text))
    return list(dict.fromkeys(m.drug_name or m.text for m in mine))


def _in_window(kb: KnowledgeBase, window: Optional[tuple[str, str]], med: NormMed, count_day: Optional[date]) -> bool:
    """The drug had been taken for a number of days within ``window`` when the count was drawn (or when it stopped,
    if before)."""
    if window is None or med.start is None or count_day is None:
        return False
    last = med.end if med.end is not None and med.end < count_day else count_day
    return kb.value(window[0]) <= (last - med.start).days <= kb.value(window[1])


def rank_causes(kb: KnowledgeBase, firings: list[Firing], meds: list[NormMed],
                interactions: Optional[list[dict[str, Any]]] = None, count_day: Optional[date] = None
                ) -> list[CauseOut]:
    evidence: dict[str, list[Evidence]] = defaultdict(list)
    for f in firings:
        for c in f.rule.then:
            if c.kind != "cause":
                continue
            w = float(c.weight or 0.0)
            evidence[c.cause].append(Evidence(
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
        strongest = max(e.weight for e in items)
        against = sum(e.weight for e in items if e.weight < 0)
        # ties: the strongest single piece of evidence first, then less evidence against, then the order of
        # rules/causes.yaml (the causes a clinician must act on first)
        scored.append((-score, -strongest, -against, order[cid], cid, score, items))
    scored.sort()
    out: list[CauseOut] = []
    counted: dict[frozenset[str], CauseOut] = {}     # one exposure is counted once
    later = {id(m) for m in started_after(meds, count_day)}
    before = [m for m in meds if id(m) not in later]
    for _, _, _, _, cid, score, items in scored:
        entry = kb.causes[cid]
        agents = _agents(kb, cid, before, interactions or [], count_day)
        if entry.drug_classes and not agents and later and _agents(kb, cid, meds, interactions or []):
            continue                                  # every agent started after the count
        key = frozenset(agents)
        if entry.drug_classes and agents and key in counted:
            kept = counted[key]
            kept.evidence.append(Evidence(
                rule="rank.one_exposure_once", weight=0.0, direction="neutral", facts={}, sources=[],
                statement=f"{', '.join(agents)} also belongs to '{entry.title}'; one exposure is counted once, "
                          f"under the cause it supports most."))
            continue
        cause = CauseOut(
            id=cid, title=entry.title, rank=len(out) + 1, score=score,
            likelihood="likely" if score >= likely else "possible" if score >= possible else "less_likely",
            description=entry.description, agents=agents, evidence=items,
            sources=sorted({s for e in items for s in e.sources} | set(entry.sources)))
        if entry.drug_classes and agents:
            counted[key] = cause
        out.append(cause)
    return out
