"""Assessment and order checks -> CDS Hooks cards (pydantic :class:`Card` models). Presentation only: the indicator
is the engine's priority, the order advice the engine's order check; this module maps them to card fields,
suggestions and FHIR resources.

* the assessment card (the count's date, risk tier, alerts, ranked causes with their evidence, next steps with
  urgency, sources), none when the counts give nothing to say; data cards (no current CBC, nothing assessable, a
  checked CBC with nothing to flag when something was left out);
* order cards: one per check of an ordered drug, from :class:`leukodx.engine.OrderCheck`, with suggestions (update
  the draft order to the adjusted dose and frequency: dose_update.py; delete it; order genotyping)."""
from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any, Optional

from leukodx.engine import Assessment, OrderCheck
from leukodx.engine.units import count_text

from .dose_update import changed_order
from .markdown import safe_kb_line, safe_markdown, safe_text
from .models import Action, Card, Coding, Link, Source, Suggestion
from .signals import cytopenia_without_white_count, percentage_without_white_count, urgent_steps

__all__ = ["assessment_cards", "order_card", "unread_order_card", "other_patients_order_card", "stale_card",
           "unassessed_card", "checked_card", "note_left_out", "note_cautions", "OVERRIDE_REASONS", "card_id"]

_NS = uuid.UUID("6f1c2b7e-4d0a-4f59-9a59-1f7b3d6a8c21")
TOPIC_SYSTEM = "urn:leukodx:cds-topic"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
OVERRIDE_REASONS = [Coding(system=NON_ADHERENCE, code=code, display=display) for code, display in (
    # HL7 non-adherence reason codes, with their displays (HL7 logical models)
    ("cds-not-applicable", "PC CDS does not apply to patient"),
    ("recipient-disagrees-evidence", "Recipient disagrees with recommendation because of issues with the evidence"),
    ("recipient-concerns-outcomes", "Recipient has concerns regarding potential health outcomes"),
    ("does-not-align-preferences", "Recommendation does not align with patient preferences or values"))]
# the order the step asks for, a manual differential (LOINC's name, as a CMS eCQM value set of 2025-05-08 lists it; the
# automated-differential panel 57021-8 had been ordered under a step that says "manual")
CBC_WITH_DIFFERENTIAL = {"system": "http://loinc.org", "code": "57782-5",
                         "display": "CBC W Ordered Manual Differential panel - Blood"}
# the values an ANC is had from (rules/labs.yaml)
TIER_WORDS = {"mild": "Mild neutropenia", "moderate": "Moderate neutropenia", "severe": "Severe neutropenia",
              "profound": "Profound neutropenia"}
TOPICS = {"assessment": ("leukopenia-assessment", "Leukopenia assessment"),
          "data": ("data-quality", "Data leukodx could not use"),
          "thiopurine_pgx": ("thiopurine-pgx", "Thiopurine pharmacogenomics"),
          "clozapine_anc": ("clozapine-anc", "Clozapine ANC monitoring"),
          "drug_label": ("drug-label", "A drug's label count thresholds"),
          "dmard_monitoring": ("dmard-monitoring", "DMARD blood monitoring"),
          "interaction": ("drug-interaction", "Drug interactions raising marrow toxicity"),
          "dosing_frequency": ("dosing-frequency", "A weekly drug ordered daily"),
          "unknown_drug": ("unknown-drug", "A drug leukodx does not know")}
DISCLAIMER = "_leukodx supports and does not replace clinical judgement._"
ANOTHER_UNREAD = ("**Another WBC or neutrophil value was sent and could not be used** (named under Not assessed): it "
                  "may be lower than the one used; check it before relying on this card.")
ANC_UNREAD = ("**A neutrophil count or percentage was sent and could not be used** (named under Not assessed): the "
              "ANC is unknown, not normal; check that value before relying on this card.")


def card_id(hook_instance: str, *parts: str) -> str:
    """Stable uuid for a card or suggestion of one hook call (the same call gives the same ids): the
    RFC 4122 name-based (SHA-1, version 5) uuid of the parts in leukodx's namespace, as ``uuid.uuid5``
    makes it, without its UUID object (a third of a card's cost)."""
    b = bytearray(hashlib.sha1(_NS.bytes + "|".join((hook_instance, *parts)).encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50         # version 5
    b[8] = (b[8] & 0x3F) | 0x80         # the RFC 4122 variant
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_n = count_text     # a count as the engine shows it


def _summary(text: str) -> str:
    """The card's plain-text summary under 140 characters, with no URL or e-mail address an EHR could link."""
    text = safe_text(text)
    return text if len(text) < 140 else text[:136].rstrip() + "..."


def _source(label: str, topic: str, url: Optional[str] = None) -> Source:
    code, display = TOPICS[topic]
    return Source(label=label, url=url, topic=Coding(system=TOPIC_SYSTEM, code=code, display=display))


def _card(hook_instance: str, key: str, summary: str, indicator: str, detail: str, source: Source,
          suggestions: Optional[list[Suggestion]] = None, selection: Optional[str] = None, safe_tail: str = "") -> Card:
    """``detail`` made safe (:func:`safe_markdown`), then ``safe_tail``, markdown made safe already."""
    return Card(uuid=card_id(hook_instance, *key.split("|")), summary=_summary(summary), indicator=indicator,
                detail=safe_markdown(detail) + safe_tail, source=source, suggestions=suggestions or None,
                selectionBehavior=selection if suggestions else None, overrideReasons=OVERRIDE_REASONS)


def _drawn(a: Assessment, anc: bool = False) -> str:
    """When the count the card rests on was drawn, e.g. "2026-11-30, 1 day ago"; with ``anc``, when the tier's ANC
    was (an earlier draw's, carried over a WBC with no differential, is not today's)."""
    tier = a.risk_tier
    t, n = (tier.anc_time, tier.anc_age_days) if anc and tier.anc_time else (a.cbc.time, a.cbc.age_days)
    if t is None:
        return "undated"
    day = t.date() if isinstance(t, datetime) else t
    ago = "" if n is None else (", today" if n == 0 else f", {n} day{'s' if n != 1 else ''} ago")
    return f"{day.isoformat()}{ago}"


def _headline(a: Assessment) -> str:
    tier = a.risk_tier
    parts = []
    if tier.tier in TIER_WORDS:
        worse = " or worse" if tier.tier_at_least else ""       # an ANC reported as a bound ("<1.5"), shown as one
        parts.append(f"{TIER_WORDS[tier.tier]}{worse} (ANC {tier.anc_comparator or ''}{tier.anc_text or _n(tier.anc)} x10^9/L, "
                     f"{_drawn(a, anc=True)})")
    elif tier.tier_at_least:
        parts.append(f"Neutropenia {tier.tier_at_least} or worse (WBC {_n(tier.anc_at_most)} x10^9/L, no differential, "
                     f"{_drawn(a)})")
    elif any(f.id == "leukopenia" for f in a.findings):
        wbc = a.ctcae.wbc.value if a.ctcae.wbc else None
        parts.append(f"Leukopenia (WBC {_n(wbc)} x10^9/L, {_drawn(a)})" if wbc is not None else "Leukopenia")
    elif any(f.id == "lymphopenia" for f in a.findings):
        count = f"lymphocytes {_n(a.ctcae.lymphocytes.value)} x10^9/L, " if a.ctcae.lymphocytes else ""
        parts.append(f"Lymphopenia ({count}{_drawn(a)})")
    for alert in a.alerts:
        if alert.id == "febrile_neutropenia":
            parts.insert(0, "FEBRILE NEUTROPENIA - emergency")
        elif alert.id not in ("agranulocytosis", "profound_neutropenia"):
            parts.append(alert.title)
    if a.causes:                       # the engine's own word for it: a cause it ranks less likely is not "likely"
        word = {"likely": "likely cause", "possible": "possible cause"}.get(a.causes[0].likelihood, "cause to consider")
        parts.append(f"{word}: {a.causes[0].title.split(' (')[0].lower()}")
    step = next((s for s in a.steps if s.urgency in ("immediate", "urgent")), None)
    if not parts and step is not None:   # a label's haemoglobin or platelet threshold, or an interaction: the step and
        rests = [" with ".join(", ".join(side) for side in i.drugs) for i in a.interactions[:1]] or \
            [", ".join(f.title for f in a.findings[:3])] * bool(a.findings)       # what it rests on (the drugs first)
        parts = [f"{step.title} ({step.urgency})"] + rests
    elif not parts and cytopenia_without_white_count(a):
        parts = [", ".join(f.title for f in a.findings[:3]) + " with no WBC or ANC: CBC with differential needed"]
    elif not parts and percentage_without_white_count(a):
        parts = ["Neutrophil percentage with no WBC: the ANC cannot be derived; CBC with differential needed"]
    return "; ".join(parts) or f"Blood count findings ({_drawn(a)})"


def _detail(a: Assessment, basis_note: str = "") -> tuple[str, str]:
    """The assessment card's detail: what the case gave (to be made safe), and its sources and disclaimer, the
    knowledge base's text only, made safe already."""
    t = a.risk_tier
    lines = [(f"**Blood count of {_drawn(a)}.** " if a.cbc.tests else "**No blood count.** ") + a.cbc.note,
             f"**Risk tier:** {t.tier}" + (f" - ANC {t.anc_text or _n(t.anc)} x10^9/L ({(t.anc_source or '').replace('_', ' ')})"
                                           if t.anc is not None else " - no ANC available"),
             f"{t.basis} {basis_note}".rstrip()]
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
        lines += ["", "**Next steps**"] + [f"- *{s.urgency}*: {s.title}" + (
            f" - {' '.join(s.reasons[:2])}" if s.urgency in ("immediate", "urgent") and s.reasons else "")
            for s in a.steps]      # why an urgent step is urgent: the drug and the value its label names
    if a.steps_not_advised:
        lines += [f"- *not advised*: {b.title} - {b.reason}" for b in a.steps_not_advised]
    if a.missing_data:
        lines += ["", "**Would sharpen the assessment:** " + "; ".join(m.item.split(":")[0] for m in a.missing_data)]
    cited = sorted({s for c in a.causes[:5] for s in c.sources} | {s for x in a.alerts for s in x.sources} |
                   {s for x in a.steps for s in x.sources})
    sources = [(sid, a.sources[sid].citation, a.sources[sid].link()) for sid in cited]
    tail = ["", "**Sources**"] + [safe_kb_line(f"- [{sid}] {text}" + (f" <{link}>" if link else ""))
                                  for sid, text, link in sources] if cited else []
    return "\n".join(lines), "\n".join(["", *tail, "", safe_kb_line(f"_{a.disclaimer}_")])


def _service_request(patient_id: Optional[str], code: Optional[dict[str, Any]], text: str, reason: str
                     ) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
                                "code": {"text": text}, "reasonCode": [{"text": reason}]}
    if code:
        resource["code"]["coding"] = [code]
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    return resource


def _has_something_to_say(a: Assessment) -> bool:
    """An alert, a cause, a low count, an immediate or urgent step, or cytopenias with no white count."""
    return bool(a.alerts or a.causes or a.risk_tier.tier in TIER_WORDS or a.risk_tier.tier_at_least or
                any(f.id in ("leukopenia", "neutropenia", "lymphopenia") for f in a.findings) or urgent_steps(a)
                or cytopenia_without_white_count(a) or percentage_without_white_count(a))


def assessment_cards(a: Assessment, hook_instance: str, patient_id: Optional[str],
                     anc_unread: bool = False) -> list[Card]:
    """The assessment card, or no card when the counts give nothing to say. With a neutrophil count sent but unread
    (``anc_unread``), at least a warning: an unread ANC is not a normal one (an ANC of 0.3 sent as "0.3 LL" had left
    a WBC of 1.8 an information card)."""
    if not _has_something_to_say(a):
        return []
    priority = a.priority
    if anc_unread and priority == "info":    # an ANC of 0.2 dated after today, set aside beside an older normal one,
        priority = "warning"                  # had been an information card saying no neutropenia was found
    cited = [s for x in a.alerts for s in x.sources] + [s for c in a.causes[:1] for s in c.sources] + \
        list(a.risk_tier.sources)         # the tier's guidelines when alerts and causes cite no primary source
    primary = [s for s in cited if s in a.sources and a.sources[s].kind in ("guideline", "label", "study")]
    url = next((link for s in primary if (link := a.sources[s].link())), None)
    suggestions = None
    step = next((s for s in a.steps if s.id == "repeat_cbc_with_differential"), None)
    if step is not None:
        suggestions = [Suggestion(
            label=f"Order a CBC with differential ({step.urgency})", uuid=card_id(hook_instance, "assessment", "cbc"),
            isRecommended=True, actions=[Action(
                type="create", description=f"Create a ServiceRequest: {step.title}",
                resource=_service_request(patient_id, CBC_WITH_DIFFERENTIAL, step.title, step.reasons[0]))])]
    # an ANC sent and not read is not "no neutrophil count in the draw"; beside the one used it may be lower (0.3
    # beside 2.5 had been quiet)
    lead, note = (("ANC sent but not readable; ", ANC_UNREAD) if a.risk_tier.anc is None else
                  ("A WBC or neutrophil value not readable; ", ANOTHER_UNREAD)) if anc_unread else ("", "")
    body, tail = _detail(a, note)
    headline = lead + _headline(a)
    return [_card(hook_instance, "assessment", headline, priority, body,
                  _source(f"leukodx knowledge base {a.kb_version}", "assessment", url), suggestions, "any", tail)]


def _data_card(hook_instance: str, key: str, summary: str, detail: str, indicator: str = "info",
               kb_version: Optional[str] = None) -> Card:
    label = f"leukodx knowledge base {kb_version}" if kb_version else "leukodx"
    return _card(hook_instance, key, summary, indicator, detail, _source(label, "data"))


def stale_card(a: Assessment, hook_instance: str, first_page_only: bool = False) -> Card:
    """No current CBC: no acute card; one info card saying how old the latest count is. A warning when the counts
    sent were only the first page of the EHR's search (a current count may be on a later one: a 2-year-old count on
    page 1 had been an information card)."""
    years = a.cbc.age_days / 365.25 if a.cbc.age_days is not None else None
    age = (f"{int(years)} years" if years is not None and years >= 2 else
           f"{a.cbc.age_days} days" if a.cbc.age_days is not None else "of unknown age")
    summary = (f"No current CBC in the data sent: the latest is {age} old ({_drawn(a).split(',')[0]}); not assessed"
               if a.cbc.time is not None else "No CBC to assess (no WBC or ANC)")
    # what that count was, so that a profound count never repeated is seen (the card judges nothing of it)
    last = [f"{lab.name} {_n(lab.value)} {lab.unit}" for lab in a.labs
            if lab.time == a.cbc.time and lab.test in ("wbc", "anc") and a.cbc.time is not None]
    shown = f"**Latest count ({_drawn(a).split(',')[0]}):** {', '.join(last)}.\n\n" if last else ""
    day = str(a.cbc.time)[:10] if a.cbc.time is not None else None
    later = [f"{lab.name} {_n(lab.value)} {lab.unit} ({str(lab.time)[:10]})" for lab in a.labs   # other tests of
             if lab.time is not None and day is not None and str(lab.time)[:10] > day]     # a later day: shown
    shown += f"**Since then:** {', '.join(later[:8])}.\n\n" if later else ""
    if first_page_only:
        summary = summary.replace("in the data sent", "in the first page of counts sent")
        shown += ("**Only the first page of the counts was had:** a current count may be on a later page; check the "
                  "EHR before taking this as the latest.\n\n")
    return _data_card(hook_instance, "stale", summary,
                      f"{a.cbc.note}\n\n{shown}leukodx raises no alert and names no cause from a count this old. "
                      f"Repeat the CBC with a differential if a current assessment is needed.\n\n_{a.disclaimer}_",
                      "warning" if first_page_only else "info", a.kb_version)


def checked_card(a: Assessment, hook_instance: str, counts_unread: bool = True, anc_unread: bool = False) -> Card:
    """A current CBC with nothing to flag, shown only when some data could not be read. With no neutrophil count
    to be had, it says so: as a warning when a count that could give the ANC was left unread (an ANC in a unit or
    a text that could not be read: an unread ANC is not a normal one, and it had said "no neutropenia found" beside
    an unread ANC of 0.3), as information when only other values were (a WBC with no differential). With a
    neutrophil count known and another unread (``anc_unread``), a warning too."""
    if a.risk_tier.tier == "unknown" and not counts_unread:
        return _data_card(hook_instance, "checked", f"CBC of {_drawn(a)}: no ANC (no differential); some other "
                          f"values could not be read", f"{a.cbc.note}\n\n{a.risk_tier.basis}\n\n_{a.disclaimer}_",
                          kb_version=a.kb_version)
    if a.risk_tier.tier == "unknown":           # the basis says none was in the draw: one may have been, unread
        basis = f"{a.risk_tier.basis} {ANC_UNREAD}" if anc_unread else a.risk_tier.basis
        return _data_card(hook_instance, "checked", f"CBC of {_drawn(a)}: neutrophil count unknown; some values "
                          f"could not be read", f"{a.cbc.note}\n\n{basis}\n\nNeutropenia is not ruled out: "
                          f"check the values below in the EHR, or repeat the CBC with a differential.\n\n"
                          f"_{a.disclaimer}_", "warning", a.kb_version)
    if anc_unread:     # an ANC of 0.2 dated after today, set aside beside an older normal one: never "none found"
        return _data_card(hook_instance, "checked", f"CBC of {_drawn(a)}: no neutropenia in the counts read; a "
                          f"neutrophil count, or a count that may be one, could not be used",
                          f"{a.cbc.note}\n\n{a.risk_tier.basis}\n\nCheck the count named below in the EHR.\n\n"
                          f"_{a.disclaimer}_", "warning", a.kb_version)
    return _data_card(hook_instance, "checked", f"CBC of {_drawn(a)}: no neutropenia or leukopenia found",
                      f"{a.cbc.note}\n\n{a.risk_tier.basis}\n\n_{a.disclaimer}_", kb_version=a.kb_version)


def unassessed_card(hook_instance: str, reasons: list[str], indicator: str = "info") -> Card:
    """Nothing could be assessed: one card saying what could not be read (never an empty answer)."""
    shown = reasons[:12] + ([f"... and {len(reasons) - 12} more"] if len(reasons) > 12 else [])
    return _data_card(hook_instance, "not-assessed", "leukodx could not assess this patient: " + (
        reasons[0] if reasons else "no usable blood count"),
        "**What could not be used**\n" + "\n".join(f"- {r}" for r in shown), indicator)


def unmatched_selection_card(hook_instance: str, selections: list[str], kb_version: str) -> Card:
    """order-select named selections that are no draft order of the call: every draft order was checked instead."""
    shown = ", ".join(repr(s[:100]) for s in selections[:5]) + (", ..." if len(selections) > 5 else "")
    return _data_card(hook_instance, "selection-unmatched", "The selected order was not found among the draft orders; "
                      "all drafts were checked", f"The selections {shown} name no draft order of this call (by "
                      f"MedicationRequest/id, id, URL or fullUrl), so every draft order was checked.\n\n{DISCLAIMER}",
                      "warning", kb_version)


def unread_order_card(hook_instance: str, key: str, order: str, why: str, kb_version: str) -> Card:
    """A draft order whose drug could not be read: the order check did not run, and the card says so
    (an unreadable thiopurine order must not pass as one leukodx had nothing to say about)."""
    return _data_card(hook_instance, f"order-unread|{key}", f"{order}: leukodx could not tell which drug is ordered; "
                      f"not checked", f"{order}: {why}.\n\nleukodx checks thiopurine orders against TPMT/NUDT15 and "
                      f"clozapine orders against the ANC; this order was not checked. Check it yourself, or send "
                      f"its drug as a medicationCodeableConcept or a Medication the order references.\n\n{DISCLAIMER}",
                      kb_version=kb_version)


def other_patients_order_card(hook_instance: str, key: str, order: str, subject: str, patient_id: str,
                              kb_version: str) -> Card:
    """A draft order whose subject is another patient, or one that cannot be told to be this one: not checked against
    this one's data, and said (a warning: the EHR may be about to sign an order on the wrong record)."""
    return _data_card(hook_instance, f"order-other-patient|{key}", f"{order} is for {subject}, not for this patient: "
                      f"not checked", f"{order} names {subject} as its subject, not this patient; this call is about "
                      f"Patient/{patient_id[:64]}. leukodx checks an order only against its own patient's genotypes "
                      f"and counts, so this one was not checked. Make sure the order is on the right record before "
                      f"signing.\n\n{DISCLAIMER}", "warning", kb_version)


def add_report_link(card: Card, url: str, minutes: float) -> None:
    """The card's link to the full assessment in leukodx's page (an absolute, short-lived URL)."""
    card.links = [*(card.links or []), Link(
        label=f"Open the full assessment in leukodx (for {minutes:g} minutes)", url=url, type="absolute",
        autolaunchable=False, autoLaunchable=False)]


def note_cautions(cards: list[Card], cautions: list[str], heading: str = "Check first") -> None:
    """Put what must be checked before acting (the patient recorded as deceased, data the EHR could not give) first."""
    if cards and cautions:
        cards[0].detail = f"**{heading}:** " + safe_markdown(" ".join(cautions)) + "\n\n" + (cards[0].detail or "")


def note_left_out(cards: list[Card], items: list[str]) -> None:
    """Add a line naming what was left out to the first card."""
    if cards and items:
        shown = "; ".join(items[:8]) + (f"; ... and {len(items) - 8} more" if len(items) > 8 else "")
        cards[0].detail = (cards[0].detail or "") + f"\n\n**Not assessed ({len(items)}):** {safe_markdown(shown)}"


def order_card(check: OrderCheck, order: dict[str, Any], hook_instance: str, patient_id: Optional[str],
               kb_version: str) -> Card:
    """The card of one order check, with the suggestions it allows."""
    cid = card_id(hook_instance, check.topic, check.order)
    order_ref = f"MedicationRequest/{order['id']}" if order.get("id") else None
    suggestions: list[Suggestion] = []
    if check.genotype != "no":     # only the genes not known (TPMT known: NUDT15 alone had been re-ordered with it)
        genes = " and ".join(check.genes_to_test or ("TPMT", "NUDT15"))
        suggestions.append(Suggestion(
            label=f"Order {genes} genotyping", uuid=card_id(cid, "genotype"),
            isRecommended=check.genotype == "recommended", actions=[Action(
                type="create", description=f"Create a ServiceRequest for {genes} genotyping",
                resource=_service_request(patient_id, None, f"{genes} genotype",
                                          f"{check.drug_name} ordered; CPIC dosing needs the phenotypes"))]))
    changed = changed_order(order, check) if check.adjust != "no" and order_ref else None
    if changed is not None and check.dose_change is not None:
        suggestions.append(Suggestion(
            label=f"Change the dose to {check.dose_change.wording}", uuid=card_id(cid, "update"),
            isRecommended=check.adjust == "recommended", actions=[Action(
                type="update", description=f"Update the draft {check.drug_name} order to {check.dose_change.wording}",
                resource=changed)]))
    if check.cancel != "no" and order_ref:
        label = (f"Cancel the {check.drug_name} order (non-malignant use: choose a non-thiopurine)"
                 if check.topic == "thiopurine_pgx" else f"Cancel the {check.drug_name} order")
        suggestions.append(Suggestion(label=label, uuid=card_id(cid, "delete"),
                                      isRecommended=check.cancel == "recommended", actions=[Action(
                                          type="delete", description=f"Delete the draft {check.drug_name} order",
                                          resourceId=order_ref)]))
    cited = f"_Sources: {', '.join(check.sources)}_\n\n" if check.sources else ""
    detail = f"{check.detail}\n\n{cited}{DISCLAIMER}"
    if check.topic == "thiopurine_pgx":
        source = _source(f"CPIC thiopurine guideline (leukodx knowledge base {kb_version})", check.topic,
                         "https://cpicpgx.org/guidelines/guideline-for-thiopurines-and-tpmt/")
    elif check.topic == "clozapine_anc":
        source = _source("Clozapine prescribing information (ANC monitoring)", check.topic,
                         "https://dailymed.nlm.nih.gov/")
    else:
        source = _source(f"leukodx knowledge base {kb_version}", check.topic)
    # at most one suggestion is recommended; the EHR offers one choice of them
    return Card(uuid=cid, summary=_summary(check.summary), indicator=check.priority, detail=safe_markdown(detail),
                source=source,
                suggestions=suggestions or None, selectionBehavior="at-most-one" if suggestions else None,
                overrideReasons=OVERRIDE_REASONS)
