"""Render an Assessment: canonical JSON (byte-identical for the same case) or a text report
for a clinician."""
from __future__ import annotations

import textwrap

from .assessment import Assessment

__all__ = ["to_json", "to_text"]


def to_json(a: Assessment, indent: int | None = 2) -> str:
    """Canonical JSON (pydantic's serializer): field order fixed by the model, so the same case gives
    byte-identical output."""
    return a.model_dump_json(indent=indent) + "\n"


def _wrap(text: str, indent: str = "    ") -> str:
    return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent)


def to_text(a: Assessment) -> str:
    out: list[str] = []
    w = out.append
    w(f"leukodx assessment - case {a.case_id}, as of {a.as_of or 'unknown'} (knowledge base {a.kb_version})")
    w(_wrap(("COUNT: " if a.cbc.current else "NO CURRENT COUNT: ") + a.cbc.note, ""))
    w("")
    if a.unrecognised:
        w(f"NOT RECOGNISED ({len(a.unrecognised)}): not assessed; check the spelling")
        for u in a.unrecognised:
            hint = f" - did you mean {' or '.join(u.suggestions)}?" if u.suggestions else ""
            w(_wrap(f"- {u.field} {u.text!r} ({u.kind}){hint}", "  "))
        w("")
    if a.not_assessed:
        w(f"NOT ASSESSED ({len(a.not_assessed)}): left out because they could not be read")
        for n in a.not_assessed:
            w(_wrap(f"- {n.field}" + (f" ({n.value})" if n.value else "") + f": {n.reason}", "  "))
        w("")
    if a.alerts:
        w("ALERTS")
        for al in a.alerts:
            w(f"  !! {al.title}")
            w(_wrap(al.description))
        w("")
    r = a.risk_tier
    at_least = f" - {r.tier_at_least.upper()} OR WORSE (ANC at most {r.anc_at_most:g}, the WBC)" if r.tier_at_least else ""
    w(f"RISK TIER: {r.tier.upper()}" + (f" (ANC {r.anc:g} x10^9/L)" if r.anc is not None else "") + at_least)
    w(_wrap(r.basis))
    if r.duffy_null_note:
        w(_wrap(r.duffy_null_note))
    grades = [f"{name.upper()} grade {g.grade} ({g.criterion})" for name, g in
              (("wbc", a.ctcae.wbc), ("anc", a.ctcae.anc), ("lymphocytes", a.ctcae.lymphocytes)) if g]
    if grades:
        w(f"  CTCAE v{a.ctcae.version}: " + "; ".join(grades))
    w("")
    if a.findings:
        w("FINDINGS")
        for f in a.findings:
            w(f"  - {f.title}: {f.description}")
        w("")
    w("CAUSES (ranked)")
    if not a.causes:
        w("  none supported by the data given")
    for c in a.causes:
        agents = f" - agents: {', '.join(c.agents)}" if c.agents else ""
        w(f"  {c.rank}. {c.title} [{c.likelihood}, score {c.score:g}]{agents}")
        for e in c.evidence:
            sign = {"for": "+", "against": "-", "neutral": "="}[e.direction]
            w(_wrap(f"{sign} {e.statement} [{', '.join(e.sources)}]", "       "))
    w("")
    w("NEXT STEPS")
    for s in a.steps:
        w(f"  [{s.urgency}] {s.title}")
        w(_wrap(s.rationale, "       "))
    for b in a.steps_not_advised:
        w(f"  [not advised] {b.title}: {b.reason}")
    w("")
    if a.pharmacogenomics.recommendations or a.pharmacogenomics.note or a.pharmacogenomics.tpmt.phenotype != "unknown":
        p = a.pharmacogenomics
        w(f"TPMT {p.tpmt.phenotype} / NUDT15 {p.nudt15.phenotype}")
        for rec in p.recommendations:
            w(f"  CPIC, {rec.drug} ({rec.classification}):")
            if rec.update_2024:            # the 2024 update first; the 2020 text it supersedes after it
                w(_wrap(rec.update_2024, "       "))
                w(_wrap(f"Superseded 2020 text: {rec.recommendation}", "       "))
            else:
                w(_wrap(rec.recommendation, "       "))
        if p.note:
            w(_wrap(p.note, "  "))
        w("")
    if a.missing_data:
        w("MISSING DATA")
        for m in a.missing_data:
            w(f"  - {m.item}")
        w("")
    if a.warnings:
        w("WARNINGS")
        for x in a.warnings:
            w(_wrap(f"- {x}", "  "))
        w("")
    w("SOURCES")
    for s in a.sources.values():
        w(_wrap(f"[{s.id}] {s.citation} {s.link() or ''}".rstrip(), "  "))
    w("")
    w(a.disclaimer)
    return "\n".join(out) + "\n"
