"""Assessment -> CDS Hooks cards. Presentation only: every judgement comes from the engine.

* the assessment card: the risk tier, alerts, ranked causes with their evidence, next steps with
  urgency and the sources, with an indicator from the assessment (critical for febrile
  neutropenia, severe or profound neutropenia, or a thiopurine for a poor metabolizer; warning for
  moderate; info for mild or other findings); nothing when there is nothing to say;
* for order-select/order-sign, a card per ordered thiopurine with the CPIC recommendation and
  actions (update the draft order to the CPIC-adjusted dose, delete it, or order genotyping), and
  a card for an ordered clozapine against its ANC thresholds.
"""
from __future__ import annotations

import copy
import re
import uuid
from datetime import datetime
from typing import Any, Optional

from leukodx.engine.assessment import Assessment, CpicRecommendation, GeneStatus

__all__ = ["assessment_cards", "thiopurine_card", "clozapine_card", "stale_card", "unassessed_card", "checked_card",
           "note_left_out",
           "OVERRIDE_REASONS", "card_id"]

_NS = uuid.UUID("6f1c2b7e-4d0a-4f59-9a59-1f7b3d6a8c21")
TOPIC_SYSTEM = "urn:leukodx:cds-topic"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
OVERRIDE_REASONS = [  # HL7 non-adherence reason codes, with their displays (../shared/cds-hooks/hl7-logical-models)
    {"system": NON_ADHERENCE, "code": "cds-not-applicable", "display": "PC CDS does not apply to patient"},
    {"system": NON_ADHERENCE, "code": "recipient-disagrees-evidence",
     "display": "Recipient disagrees with recommendation because of issues with the evidence"},
    {"system": NON_ADHERENCE, "code": "recipient-concerns-outcomes",
     "display": "Recipient has concerns regarding potential health outcomes"},
    {"system": NON_ADHERENCE, "code": "does-not-align-preferences",
     "display": "Recommendation does not align with patient preferences or values"},
]
CBC_WITH_DIFFERENTIAL = {"system": "http://loinc.org", "code": "57021-8",
                         "display": "CBC W Auto Differential panel - Blood"}
TIER_WORDS = {"mild": "Mild neutropenia", "moderate": "Moderate neutropenia", "severe": "Severe neutropenia",
              "profound": "Profound neutropenia"}


def card_id(hook_instance: str, *parts: str) -> str:
    """Stable uuid for a card or suggestion of one hook call (the same call gives the same ids)."""
    return str(uuid.uuid5(_NS, "|".join((hook_instance, *parts))))


def _summary(text: str) -> str:
    return text if len(text) < 140 else text[:136].rstrip() + "..."


def _source(a: Assessment, source_ids: list[str], topic: tuple[str, str]) -> dict[str, Any]:
    url = next((a.sources[s].url or (f"https://pubmed.ncbi.nlm.nih.gov/{a.sources[s].pmid}/"
                                      if a.sources[s].pmid else None)
                for s in source_ids if s in a.sources and (a.sources[s].url or a.sources[s].pmid)), None)
    out: dict[str, Any] = {"label": f"leukodx knowledge base {a.kb_version}",
                           "topic": {"system": TOPIC_SYSTEM, "code": topic[0], "display": topic[1]}}
    if url:
        out["url"] = url
    return out


def _indicator(a: Assessment) -> str:
    alerts = {x.id for x in a.alerts}
    if alerts & {"febrile_neutropenia", "thiopurine_high_risk_genotype", "circulating_blasts"} or \
            a.risk_tier.tier in ("severe", "profound"):
        return "critical"
    if a.risk_tier.tier == "moderate" or alerts:
        return "warning"
    return "info"


def _drawn(a: Assessment) -> str:
    """When the count the card rests on was drawn, e.g. "2026-11-30, 1 day ago"."""
    if a.cbc.time is None:
        return "undated"
    day = a.cbc.time.date() if isinstance(a.cbc.time, datetime) else a.cbc.time
    n = a.cbc.age_days
    ago = "" if n is None else (", today" if n == 0 else f", {n} day{'s' if n != 1 else ''} ago")
    return f"{day.isoformat()}{ago}"


def _headline(a: Assessment) -> str:
    tier = a.risk_tier
    parts = []
    if tier.tier in TIER_WORDS:
        parts.append(f"{TIER_WORDS[tier.tier]} (ANC {tier.anc:g} x10^9/L, {_drawn(a)})")
    elif tier.tier_at_least:
        parts.append(f"Neutropenia {tier.tier_at_least} or worse (WBC {tier.anc_at_most:g} x10^9/L, no differential, "
                     f"{_drawn(a)})")
    elif any(f.id == "leukopenia" for f in a.findings):
        wbc = a.ctcae.wbc.value if a.ctcae.wbc else None
        parts.append(f"Leukopenia (WBC {wbc:g} x10^9/L)" if wbc is not None else "Leukopenia")
    elif any(f.id == "lymphopenia" for f in a.findings):
        parts.append("Lymphopenia")
    for alert in a.alerts:
        if alert.id == "febrile_neutropenia":
            parts.insert(0, "FEBRILE NEUTROPENIA - emergency")
        elif alert.id not in ("agranulocytosis", "profound_neutropenia"):
            parts.append(alert.title)
    if a.causes:
        parts.append(f"likely cause: {a.causes[0].title.split(' (')[0].lower()}")
    return _summary("; ".join(parts) or "Blood count findings")


def _detail(a: Assessment) -> str:
    t = a.risk_tier
    lines = [f"**Blood count of {_drawn(a)}.** {a.cbc.note}",
             f"**Risk tier:** {t.tier}" + (f" - ANC {t.anc:g} x10^9/L ({(t.anc_source or '').replace('_', ' ')})"
                                           if t.anc is not None else " - no ANC available"),
             t.basis]
    grades = [f"{n} grade {g.grade}" for n, g in (("WBC", a.ctcae.wbc), ("ANC", a.ctcae.anc),
                                                  ("lymphocytes", a.ctcae.lymphocytes)) if g]
    if grades:
        lines.append(f"**CTCAE v{a.ctcae.version}:** " + ", ".join(grades))
    if t.duffy_null_note:
        lines.append(t.duffy_null_note)
    if a.alerts:
        lines += ["", "**Alerts**"] + [f"- **{x.title}**: {x.description}" for x in a.alerts]
    if a.causes:
        lines += ["", "**Causes, ranked**"]
        for c in a.causes[:5]:
            agents = f" - agents: {', '.join(c.agents)}" if c.agents else ""
            lines.append(f"{c.rank}. **{c.title}** ({c.likelihood}, score {c.score:g}){agents}")
            for e in c.evidence[:4]:
                lines.append(f"    - *{e.direction}*: {e.statement} [{', '.join(e.sources)}]")
    if a.steps:
        lines += ["", "**Next steps**"] + [f"- *{s.urgency}*: {s.title}" for s in a.steps]
    if a.steps_not_advised:
        lines += [f"- *not advised*: {b.title} - {b.reason}" for b in a.steps_not_advised]
    if a.missing_data:
        lines += ["", "**Would sharpen the assessment:** " + "; ".join(m.item.split(":")[0] for m in a.missing_data)]
    cited = sorted({s for c in a.causes[:5] for s in c.sources} | {s for x in a.alerts for s in x.sources} |
                   {s for x in a.steps for s in x.sources})
    if cited:
        lines += ["", "**Sources**"]
        for sid in cited:
            s = a.sources[sid]
            link = s.url or (f"https://pubmed.ncbi.nlm.nih.gov/{s.pmid}/" if s.pmid else "")
            lines.append(f"- [{sid}] {s.citation}" + (f" <{link}>" if link else ""))
    lines += ["", f"_{a.disclaimer}_"]
    return "\n".join(lines)


def _service_request(patient_id: Optional[str], code: dict[str, Any], text: str, reason: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
                                "code": {"text": text}, "reasonCode": [{"text": reason}]}
    if code:
        resource["code"]["coding"] = [code]
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    return resource


def _has_something_to_say(a: Assessment) -> bool:
    return bool(a.alerts or a.causes or a.risk_tier.tier in TIER_WORDS or a.risk_tier.tier_at_least or
                any(f.id in ("leukopenia", "neutropenia", "lymphopenia") for f in a.findings))


def _info_card(hook_instance: str, key: str, summary: str, detail: str, indicator: str = "info",
               kb_version: Optional[str] = None) -> dict[str, Any]:
    label = f"leukodx knowledge base {kb_version}" if kb_version else "leukodx"
    return {"uuid": card_id(hook_instance, key), "summary": _summary(summary), "indicator": indicator,
            "detail": detail, "source": {"label": label, "topic": {"system": TOPIC_SYSTEM, "code": "data-quality",
                                                                   "display": "Data leukodx could not use"}},
            "overrideReasons": OVERRIDE_REASONS}


def stale_card(a: Assessment, hook_instance: str) -> dict[str, Any]:
    """No current CBC: no acute card; one info card saying how old the latest count is."""
    years = a.cbc.age_days / 365.25 if a.cbc.age_days is not None else None
    age = (f"{int(years)} years" if years is not None and years >= 2 else
           f"{a.cbc.age_days} days" if a.cbc.age_days is not None else "of unknown age")
    summary = (f"No current CBC: the latest is {age} old ({_drawn(a).split(',')[0]}); not assessed"
               if a.cbc.time is not None else "No CBC to assess (no WBC or ANC)")
    return _info_card(hook_instance, "stale", summary,
                      f"{a.cbc.note}\n\nleukodx raises no alert and names no cause from a count this old. "
                      f"Repeat the CBC with a differential if a current assessment is needed.\n\n_{a.disclaimer}_",
                      kb_version=a.kb_version)


def checked_card(a: Assessment, hook_instance: str) -> dict[str, Any]:
    """A current CBC with nothing to flag, shown only when some data could not be read."""
    return _info_card(hook_instance, "checked", f"CBC of {_drawn(a)}: no neutropenia or leukopenia found",
                      f"{a.cbc.note}\n\n{a.risk_tier.basis}\n\n_{a.disclaimer}_", kb_version=a.kb_version)


def unassessed_card(hook_instance: str, reasons: list[str], indicator: str = "info") -> dict[str, Any]:
    """Nothing could be assessed: one card saying what could not be read (never an empty answer)."""
    shown = reasons[:12] + ([f"... and {len(reasons) - 12} more"] if len(reasons) > 12 else [])
    return _info_card(hook_instance, "not-assessed", "leukodx could not assess this patient: " + (reasons[0] if
                      reasons else "no usable blood count"),
                      "**What could not be used**\n" + "\n".join(f"- {r}" for r in shown), indicator)


def note_left_out(cards: list[dict[str, Any]], items: list[str]) -> None:
    """Add a line naming what was left out to the first card."""
    if cards and items:
        shown = "; ".join(items[:8]) + (f"; ... and {len(items) - 8} more" if len(items) > 8 else "")
        cards[0]["detail"] = (cards[0].get("detail") or "") + f"\n\n**Not assessed ({len(items)}):** {shown}"


def assessment_cards(a: Assessment, hook_instance: str, patient_id: Optional[str]) -> list[dict[str, Any]]:
    """The assessment card, or no card when the counts give nothing to say."""
    if not _has_something_to_say(a):
        return []
    sources = [s for x in a.alerts for s in x.sources] + [s for c in a.causes[:1] for s in c.sources]
    card: dict[str, Any] = {
        "uuid": card_id(hook_instance, "assessment"), "summary": _headline(a), "indicator": _indicator(a),
        "detail": _detail(a), "source": _source(a, sources, ("leukopenia-assessment", "Leukopenia assessment")),
        "overrideReasons": OVERRIDE_REASONS}
    if any(s.id == "repeat_cbc_with_differential" for s in a.steps):
        step = next(s for s in a.steps if s.id == "repeat_cbc_with_differential")
        card["suggestions"] = [{
            "label": f"Order a CBC with differential ({step.urgency})",
            "uuid": card_id(hook_instance, "assessment", "cbc"), "isRecommended": True,
            "actions": [{"type": "create", "description": "Create a ServiceRequest for a CBC with automated differential",
                         "resource": _service_request(patient_id, CBC_WITH_DIFFERENTIAL, "CBC with differential",
                                                      step.reasons[0])}]}]
        card["selectionBehavior"] = "any"
    return [card]


_RANGE = re.compile(r"(\d+)\s*%?\s*[-–]\s*(\d+)\s*%")


def _adjusted_fraction(rec: CpicRecommendation) -> Optional[tuple[float, str]]:
    """The upper end of CPIC's starting-dose range (the smallest change CPIC allows), with its wording.
    None when CPIC advises no reduction or an alternative drug."""
    text = rec.update_2024 or rec.recommendation
    if "10-fold" in rec.recommendation or "drastically reduced" in rec.recommendation:
        return 0.1, "one tenth of the normal dose (CPIC, malignancy)"
    m = _RANGE.search(text)
    if m:
        low, high = int(m.group(1)), int(m.group(2))
        return high / 100.0, f"{high}% of the normal dose (upper end of CPIC's {low}-{high}%)"
    return None


def _scaled_order(order: dict[str, Any], fraction: float, note: str) -> Optional[dict[str, Any]]:
    new = copy.deepcopy(order)
    try:
        dose = new["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
        dose["value"] = float(f"{float(dose['value']) * fraction:.3g}")
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    new["dosageInstruction"][0]["text"] = note
    return new


def thiopurine_card(order: dict[str, Any], key: str, drug: str, rec: Optional[CpicRecommendation],
                    tpmt: GeneStatus, nudt15: GeneStatus, hook_instance: str, patient_id: Optional[str],
                    sources: list[str], kb_version: str) -> dict[str, Any]:
    """A card for one ordered thiopurine: the CPIC recommendation for the patient's phenotypes."""
    order_ref = f"MedicationRequest/{order['id']}" if order.get("id") else None
    poor = "poor" in (tpmt.phenotype, nudt15.phenotype)
    unknown = "unknown" in (tpmt.phenotype, nudt15.phenotype)
    pheno = f"TPMT {tpmt.phenotype.replace('_', ' ')}, NUDT15 {nudt15.phenotype.replace('_', ' ')}"
    cid = card_id(hook_instance, "thiopurine", key)
    suggestions: list[dict[str, Any]] = []
    if unknown:
        indicator = "warning"
        summary = f"{drug.capitalize()} ordered with unknown TPMT/NUDT15 status: genotype before dosing (CPIC)"
        detail = (f"**{pheno}.** CPIC recommends dosing {drug} by TPMT and NUDT15 phenotype; genotype both before "
                  f"starting, and monitor the CBC closely meanwhile.")
        suggestions.append({"label": "Order TPMT and NUDT15 genotyping", "uuid": card_id(cid, "genotype"),
                            "isRecommended": True, "actions": [{"type": "create", "description": "Create a ServiceRequest for TPMT and NUDT15 genotyping",
                                         "resource": _service_request(patient_id, {}, "TPMT and NUDT15 genotype",
                                                                      f"{drug} ordered; CPIC dosing needs the phenotypes")}]})
    else:
        assert rec is not None
        adjust = {tpmt.phenotype, nudt15.phenotype} & {"intermediate", "possible_intermediate", "indeterminate"}
        indicator = "critical" if poor else "warning" if adjust else "info"
        summary = _summary(f"{drug.capitalize()} for a {pheno}: " +
                           ("drastically reduce or use an alternative (CPIC)" if poor else
                            "start at a reduced dose (CPIC)" if indicator == "warning" else "normal starting dose (CPIC)"))
        detail = f"**{pheno}** ({rec.classification} recommendation)\n\n{rec.recommendation}"
        if rec.update_2024:
            detail += f"\n\n**Update:** {rec.update_2024}"
        if rec.comments:
            detail += f"\n\n{rec.comments}"
        fraction = _adjusted_fraction(rec) if indicator != "info" else None
        if fraction and order_ref:
            scaled = _scaled_order(order, fraction[0], f"Dose adjusted to {fraction[1]} for {pheno}")
            if scaled:
                suggestions.append({"label": f"Change the dose to {fraction[1]}", "uuid": card_id(cid, "update"),
                                    "isRecommended": not poor,
                                    "actions": [{"type": "update", "description": f"Update the draft {drug} order to "
                                                 f"{fraction[1]}", "resource": scaled}]})
        if poor and order_ref:
            suggestions.append({"label": f"Cancel the {drug} order (non-malignant use: choose a non-thiopurine)",
                                "uuid": card_id(cid, "delete"), "isRecommended": True,
                                "actions": [{"type": "delete", "description": f"Delete the draft {drug} order",
                                             "resourceId": order_ref}]})
    detail += f"\n\n_Sources: {', '.join(sources)}_\n\n_leukodx supports and does not replace clinical judgement._"
    card: dict[str, Any] = {
        "uuid": cid, "summary": _summary(summary), "indicator": indicator, "detail": detail,
        "source": {"label": f"CPIC thiopurine guideline (leukodx knowledge base {kb_version})",
                   "url": "https://cpicpgx.org/guidelines/guideline-for-thiopurines-and-tpmt/",
                   "topic": {"system": TOPIC_SYSTEM, "code": "thiopurine-pgx", "display": "Thiopurine pharmacogenomics"}},
        "overrideReasons": OVERRIDE_REASONS}
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    return card


def clozapine_card(a: Optional[Assessment], hook_instance: str, order_id: str) -> dict[str, Any]:
    """A card for an ordered clozapine against the label's ANC thresholds."""
    cid = card_id(hook_instance, "clozapine", order_id)
    source = {"label": "Clozapine prescribing information (ANC monitoring)", "url": "https://dailymed.nlm.nih.gov/",
              "topic": {"system": TOPIC_SYSTEM, "code": "clozapine-anc", "display": "Clozapine ANC monitoring"}}
    if a is None or a.risk_tier.anc is None:
        return {"uuid": cid, "indicator": "warning", "source": source, "overrideReasons": OVERRIDE_REASONS,
                "summary": "Clozapine ordered without a recent ANC: obtain a baseline ANC before starting",
                "detail": "The clozapine label requires a baseline ANC (>= 1.5 x10^9/L, or >= 1.0 for benign ethnic "
                          "neutropenia) and regular ANC monitoring."}
    alert = next((x for x in a.alerts if x.id == "clozapine_neutropenia"), None)
    anc = a.risk_tier.anc
    if alert:
        return {"uuid": cid, "indicator": "critical", "source": source, "overrideReasons": OVERRIDE_REASONS,
                "summary": _summary(f"ANC {anc:g} x10^9/L is below the clozapine threshold: do not start; interrupt"),
                "detail": alert.description}
    return {"uuid": cid, "indicator": "info", "source": source, "overrideReasons": OVERRIDE_REASONS,
            "summary": _summary(f"Latest ANC {anc:g} x10^9/L: clozapine may proceed with label ANC monitoring"),
            "detail": "Monitor the ANC weekly for 6 months, every 2 weeks for months 6-12, then monthly."}
