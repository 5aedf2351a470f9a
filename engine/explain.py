"""Explain: turn firings into the Assessment's findings, alerts, steps, missing data and warnings,
and gather the full citation of every source cited anywhere in it."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional, Sequence

from . import pgx
from .assessment import (AlertOut, Assessment, BlockedStep, CauseOut, FindingOut, InteractionOut, MissingItem,
                         NotAssessed, Pharmacogenomics, SourceOut, StepOut, TraceItem)
from .derive import Derived
from .kb import URGENCY_ORDER, KnowledgeBase
from .normalize import NormCase
from .reason import Firing

__all__ = ["build_assessment"]


def _by_conclusion(firings: list[Firing], kind: str) -> dict[str, list[Firing]]:
    out: dict[str, list[Firing]] = defaultdict(list)
    for f in firings:
        for c in f.rule.then:
            if c.kind == kind:
                out[getattr(c, kind)].append(f)
    return out


def _source_out(kb: KnowledgeBase, sid: str) -> SourceOut:
    """The catalogue entry as it appears in an assessment (built once per knowledge base)."""
    cache: dict[str, SourceOut] = kb.derived.setdefault("source_out", {})
    if sid not in cache:
        cache[sid] = SourceOut(**kb.sources[sid].model_dump(include={"id", "citation", "year", "kind", "pmid",
                                                                       "doi", "url"}))
    return cache[sid]


def _sources(firings: list[Firing], extra: list[str]) -> list[str]:
    return sorted({s for f in firings for s in f.rule.sources} | set(extra))


def _steps(kb: KnowledgeBase, firings: list[Firing]) -> tuple[list[StepOut], list[BlockedStep]]:
    raised: dict[str, list[tuple[Firing, str]]] = defaultdict(list)
    for f in firings:
        for c in f.rule.then:
            if c.kind == "step":
                raised[c.step].append((f, c.urgency or "routine"))
    blocked = _by_conclusion(firings, "block_step")
    # A step's entry depends only on the knowledge base and the rules that raised or blocked it: each one
    # is built once per knowledge base and reused (frozen), a third of the explanation's time otherwise.
    made: dict[Any, Any] = kb.derived.setdefault("step_out", {})
    if len(made) > _MADE_MAX:
        made.clear()
    steps, not_advised = [], []
    for sid, items in raised.items():
        if sid in blocked:
            key: Any = ("blocked", sid, tuple(f.rule.id for f in blocked[sid]))
            if (out := made.get(key)) is None:
                out = made[key] = _blocked_step(kb, sid, blocked[sid])
            not_advised.append(out)
            continue
        key = (sid, tuple((f.rule.id, u) for f, u in items))
        if (out := made.get(key)) is None:
            out = made[key] = _step(kb, sid, items)
        steps.append(out)
    order = _step_order(kb)
    steps.sort(key=lambda s: (URGENCY_ORDER[s.urgency], order[s.id]))
    not_advised.sort(key=lambda s: order[s.id])
    return steps, not_advised


_MADE_MAX = 10_000     # combinations of rules per step met so far; far more than a knowledge base yields


def _step(kb: KnowledgeBase, sid: str, items: list[tuple[Firing, str]]) -> StepOut:
    entry = kb.steps[sid]
    urgency = min((u for _, u in items), key=URGENCY_ORDER.__getitem__)
    fs = [f for f, _ in items]
    return StepOut(id=sid, title=entry.title, urgency=urgency, rationale=entry.description,
                   reasons=list(dict.fromkeys(f.rule.statement for f in fs)),
                   rules=list(dict.fromkeys(f.rule.id for f in fs)), sources=_sources(fs, []))


def _blocked_step(kb: KnowledgeBase, sid: str, fs: list[Firing]) -> BlockedStep:
    return BlockedStep(id=sid, title=kb.steps[sid].title, reason=" ".join(f.rule.statement for f in fs),
                       rules=[f.rule.id for f in fs], sources=_sources(fs, []))


def _step_order(kb: KnowledgeBase) -> dict[str, int]:
    order: Optional[dict[str, int]] = kb.derived.get("step_order")
    if order is None:
        order = kb.derived["step_order"] = {sid: i for i, sid in enumerate(kb.steps)}
    return order


def _pharmacogenomics(kb: KnowledgeBase, nc: NormCase, d: Derived) -> Pharmacogenomics:
    """TPMT/NUDT15 status and the CPIC row for each thiopurine taken, but only where CPIC's row applies:
    never for a TPMT activity measured too soon after a transfusion (unreliable), and only when both genes
    are known (the note says what is missing instead)."""
    thiopurines = sorted({m.drug_id for m in nc.meds if "thiopurine" in m.classes and m.drug_id})
    reasons = _unreliable_tpmt(kb, d.facts)
    reliable = not reasons
    recs, note = [], None
    if thiopurines and not reliable:
        note = (f"The TPMT result is unreliable: {'; '.join(reasons)}. No CPIC dose is given from it. Genotype TPMT "
                f"and NUDT15" + (" on a pre-transplant DNA sample." if d.facts.get("tpmt_after_allogeneic_hsct")
                                 else "."))
    elif thiopurines:
        unknown = [g.gene for g in (nc.tpmt, nc.nudt15) if g.phenotype == "unknown"]
        recs = [rec for drug in thiopurines if (rec := pgx.one_gene_recommendation(kb, drug, nc.tpmt, nc.nudt15))]
        if recs:
            note = (f"{unknown[0]} not tested: CPIC's dose for the other gene's result alone is given (its alert for "
                    f"no {unknown[0]} result on file); genotype {unknown[0]} as well.")
        elif unknown:
            undetermined = [g.gene for g in (nc.tpmt, nc.nudt15) if g.phenotype == "indeterminate"]
            note = (f"{' and '.join(unknown)} not tested: CPIC's recommendation needs both TPMT and NUDT15; genotype "
                    f"{' and '.join(unknown)} before dosing." + (f" {undetermined[0]} is indeterminate: its result gives "
                                                                 f"no phenotype either." if undetermined else ""))
        else:
            recs = [rec for drug in thiopurines if (rec := pgx.recommendation(kb, drug, nc.tpmt, nc.nudt15))]
    return Pharmacogenomics(tpmt=nc.tpmt, nudt15=nc.nudt15, tpmt_reliable=reliable,
                            nudt15_reliable=not d.facts.get("tpmt_after_allogeneic_hsct"), recommendations=recs,
                            note=note)


def _unreliable_tpmt(kb: KnowledgeBase, facts: dict[str, Any]) -> list[str]:
    """Why the TPMT result cannot be relied on (the facts of rules thiopurine.*: CPIC's caveats), if at all."""
    reasons = []
    days = facts.get("tpmt_activity_days_after_transfusion")
    if days is not None and 0 <= days <= kb.value("tpmt_activity_transfusion_days"):
        what = "activity" if facts.get("tpmt_method") == "activity" else "result (method not given)"
        reasons.append(f"the {what} was obtained {days:g} days after a red cell transfusion (donor cells)")
    if facts.get("tpmt_after_allogeneic_hsct"):
        reasons.append("it may come from after the allogeneic HSCT (the donor's cells and DNA)")
    if facts.get("tpmt_activity_on_thiopurine"):
        reasons.append("the activity was measured on a thiopurine, which raises it")
    if facts.get("tpmt_activity_with_acute_leukemia"):
        reasons.append("an activity in acute leukaemia may be falsely low")
    return reasons


def build_assessment(kb: KnowledgeBase, nc: NormCase, d: Derived, firings: list[Firing], causes: list[CauseOut],
                     engine_version: str, not_assessed: Sequence[NotAssessed] = (),
                     interactions: Sequence[dict[str, Any]] = ()) -> Assessment:
    findings = []
    fired_findings = _by_conclusion(firings, "finding")
    for fid in kb.findings:           # catalogue order
        if fid in fired_findings:
            fs = fired_findings[fid]
            e = kb.findings[fid]
            facts: dict[str, Any] = {}
            for f in fs:
                facts.update({k: v for k, v in f.facts.items() if not k.startswith(("finding_", "alert_"))})
            findings.append(FindingOut(id=fid, title=e.title, description=e.description,
                                       rules=[f.rule.id for f in fs], facts=facts, sources=_sources(fs, e.sources)))
    alerts = []
    fired_alerts = _by_conclusion(firings, "alert")
    for aid in kb.alerts:
        if aid in fired_alerts:
            fs = fired_alerts[aid]
            e = kb.alerts[aid]
            alerts.append(AlertOut(id=aid, title=e.title, severity=e.severity or "warning", description=e.description,
                                   rules=[f.rule.id for f in fs], sources=_sources(fs, e.sources)))
    steps, not_advised = _steps(kb, firings)

    missing: dict[str, list[str]] = {}
    for item, fs in _by_conclusion(firings, "missing").items():
        missing[item] = [f.rule.id for f in fs]
    warnings = list(nc.warnings) + list(d.warnings)
    for text in _by_conclusion(firings, "warning"):
        warnings.append(text)

    pharmacogenomics = _pharmacogenomics(kb, nc, d)

    interaction_out = [InteractionOut(id=i["id"], title=i["title"], drugs=i["names"], effect=" ".join(i["effect"].split()),
                                      action=" ".join(i["action"].split()), sources=list(i["sources"])) for i in interactions]
    cited: set[str] = {s for i in interaction_out for s in i.sources} | set(d.risk_tier.sources) | set(d.ctcae.sources) | {s for r in d.reference_limits for s in r.sources}
    for group in (findings, alerts, causes, steps, not_advised, pharmacogenomics.recommendations):
        for item in group:
            cited.update(item.sources)
    for c in causes:
        for e in c.evidence:
            cited.update(e.sources)
    for f in firings:
        cited.update(f.rule.sources)
    sources = {sid: _source_out(kb, sid) for sid in sorted(cited)}
    trace = [TraceItem(rule=f.rule.id, family=f.rule.family, stage=f.rule.stage, facts=f.facts) for f in firings]
    order = ("critical", "warning", "info")
    levels = [a.severity for a in alerts] + [kb.tier_priority.get(d.risk_tier.tier, "info")]
    if d.risk_tier.tier_at_least:
        at_least = d.risk_tier.tier_at_least
        levels.append(kb.tier_at_least_priority.get(at_least) or kb.tier_priority.get(at_least, "info"))
    levels += [kb.step_priority[s.id] for s in steps
               if s.id in kb.step_priority and s.urgency in ("immediate", "urgent")]
    levels += [kb.grade_priority[g.grade] for g in (d.ctcae.wbc, d.ctcae.anc, d.ctcae.lymphocytes)
               if g is not None and g.grade in kb.grade_priority]
    priority = min(levels, key=order.index)
    return Assessment(
        case_id=nc.case.id, priority=priority, unrecognised=nc.unrecognised, as_of=nc.as_of, kb_version=kb.version, engine_version=engine_version,
        risk_tier=d.risk_tier, cbc=d.cbc, ctcae=d.ctcae, alerts=alerts, findings=findings, causes=causes, steps=steps,
        steps_not_advised=not_advised, pharmacogenomics=pharmacogenomics,
        missing_data=[MissingItem(item=k, rules=v) for k, v in missing.items()], not_assessed=list(not_assessed),
        conditions=sorted(nc.conditions), cancer_current=nc.cancer_current, reference_limits=d.reference_limits, interactions=interaction_out,
        warnings=warnings, labs=d.labs_out, sources=sources, trace=trace)
