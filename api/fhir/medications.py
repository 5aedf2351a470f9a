"""MedicationRequest, MedicationStatement, MedicationAdministration and MedicationDispense ->
``case.medications`` (an administration or a dispense: see :func:`_given`).

Status active/on-hold -> active, completed -> completed, stopped -> stopped, unknown -> active (warned);
entered-in-error, cancelled (withdrawn before any dose), intended and not-taken are skipped, and so are a request with
``doNotPerform`` true or an intent of proposal, plan or option (not an order); ``draft`` too unless
``include_draft`` (the order being signed in a CDS Hooks call), when it counts as active. The drug
is ``medicationCodeableConcept`` or the Medication that ``medicationReference`` points to (``#id``
in ``contained``, ``Medication/<id>`` or a ``fullUrl``; its first ingredient leukodx knows when its own code names
no drug it knows): ``name`` is its text or display, ``rxnorm`` its RxNorm code (one the knowledge base knows first). ``start``: ``authoredOn``,
``effectivePeriod.start`` or ``effectiveDateTime``; ``end`` (stopped/completed only):
``effectivePeriod.end`` or ``dispenseRequest.validityPeriod.end``; one still active whose period ended (its
``effectivePeriod.end``, or every dosage's ``boundsPeriod.end``) is completed then. ``dose`` (:mod:`.dosage`): the first dose
quantity as ``{value, unit}`` when its unit is a mass per time (mg/d) or per body mass per time
(mg/kg/d), or a mass per take with its timing (``timing.repeat`` frequency per period, ``dayOfWeek``, or a
``timing.code`` such as BID) as a dose per day when taken daily or more often, per week when less often (125 mg
twice a day: 250 mg/d; methotrexate 15 mg once a week: 15 mg/wk, so that a weekly dose stays weekly and a daily
one daily for the engine's frequency check), else the dosage text. ``indication``: ``reasonCode[0]``, else the Condition that
``reasonReference[0]`` points to. A medication that starts after the case date is left out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any, Optional

from leukodx.engine.case import ATC_CODE
from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase
from leukodx.engine.timeutil import utc_date
from leukodx.engine import rxnorm_codes

from .datatypes import (When, after, as_dict, as_list, as_str, codings, concept_text, first_when, is_number,
                        later_warning, parse_when, reference)
from .conditions import reason_read
from .dosage import order_dose
from .resources import Index, Item, walk_readable

__all__ = ["map_medications", "medication_name_and_code", "order_drugs", "order_dose", "OrderDrug", "RXNORM",
           "MED_STATUS"]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RXNORM_OID = "urn:oid:2.16.840.1.113883.6.88"     # RxNorm's HL7 OID, as CDA-derived feeds write the system


def _is_rxnorm(system: object) -> bool:
    return "rxnorm" in str(system or "").lower() or str(system or "").strip() == RXNORM_OID
EVENT_TYPES = ("MedicationAdministration", "MedicationDispense")
EVENT_STATUS = {"MedicationAdministration": {"completed": "completed", "in-progress": "active", "on-hold": "active"},
                "MedicationDispense": {"completed": "completed"}}
NOT_ORDERED_INTENTS = ("proposal", "plan", "option")   # MedicationRequest intents that are not an order
MED_STATUS = {"active": "active", "on-hold": "active", "unknown": "active", "completed": "completed",
              "stopped": "stopped", "draft": "active"}
# Not taken, said why. A MedicationRequest "cancelled" was "withdrawn before any administrations have occurred"
# (FHIR R4 medicationrequest-status); read as stopped, a carbimazole order cancelled unused had been named the
# likely cause of an ANC of 0.3 and the marrow examination dropped.
NOT_TAKEN_WHY = {"cancelled": "withdrawn before any dose was given (FHIR); if it was taken, record it as stopped"}


def map_medications(kb: KnowledgeBase, mine: list[Item], index: Index, ref: Optional[date],
                    include_draft: bool, warnings: list[str], unread: Optional[list[Problem]] = None
                    ) -> list[dict[str, Any]]:
    """``case.medications`` from the patient's MedicationRequests, MedicationStatements, administrations
    and dispenses, in input order (an RxNorm code of a drug in ``kb`` is preferred over other RxNorm codings).
    A medication being taken whose drug cannot be told (a reference to a Medication the data does not hold,
    and no name) is a problem in ``unread``: the drug it hides may be the cause, so it is not left to a warning."""
    known_rxnorm = rxnorm_codes(kb)
    meds: list[dict[str, Any]] = []
    later: list[str] = []
    for item in mine:
        if item.type in EVENT_TYPES:
            mapped = _given(item, index, known_rxnorm, warnings, unread, ref, kb)
        elif item.type in ("MedicationRequest", "MedicationStatement"):
            mapped = _medication(item, index, known_rxnorm, include_draft, warnings, unread, kb)
        else:
            continue
        if mapped is None:
            continue
        med, start = mapped
        if include_draft and as_str(item.resource.get("status")) == "draft" and ref is not None:
            med["start"] = ref.isoformat()     # a draft being signed is not taken yet: it starts now, whatever
            start = ref                        # day it was written (clozapine's starting threshold applies)
            med["_draft"] = True               # (map_bundle takes the mark off: Mapped.drafts)
        if after(start, ref):
            later.append(item.label)
            continue
        _ended_by_its_period(item, med, ref, warnings)
        meds.append(med)
    if later:
        assert ref is not None
        warnings.append(later_warning(len(later), "medication", "started", ref, later))
    _ended_by_prescriber(meds)
    return meds


def _ended_by_its_period(item: Item, med: dict[str, Any], ref: Optional[date], warnings: list[str]) -> None:
    """An order or statement still 'active' whose period ended before ``ref`` (``effectivePeriod.end``, or the
    latest ``timing.repeat.boundsPeriod.end`` when every dosage has one) is taken as completed then: a clozapine
    course whose bounds ended 60 days before had been counted as taken (red-team round 12)."""
    if med.get("status") != "active" or med.get("_draft") or ref is None:
        return
    res = item.resource
    ends = [as_dict(res.get("effectivePeriod")).get("end")]
    dosages = [as_dict(d) for d in as_list(res.get("dosageInstruction") or res.get("dosage"))]
    bounds = [as_dict(as_dict(as_dict(d.get("timing")).get("repeat")).get("boundsPeriod")).get("end") for d in dosages]
    if dosages and all(bounds):
        ends += bounds
    days = [day for e in ends if e and (day := utc_date(parse_when(e)[0])) is not None]
    if days and max(days) < ref:
        med["status"], med["end"] = "completed", max(days).isoformat()
        warnings.append(f"{item.label}: status active, but its period ended on {max(days).isoformat()}; counted as "
                        f"completed then.")


def _ended_by_prescriber(meds: list[dict[str, Any]]) -> None:
    """A dose given or supplied lately (``_given``: taken now) of a drug whose prescription or statement was stopped
    or completed after it was given ends when that one does: a sulfasalazine dispensed for 30 days 20 days ago and
    stopped by its prescriber 10 days ago had been "taken now", and an urgent hold raised again."""
    for med in meds:
        if not med.pop("_event", False) or med["status"] != "active":
            continue
        same = [m for m in meds if m is not med and m["status"] in ("stopped", "completed") and m.get("end")
                and m["end"] >= med["start"] and ((med.get("rxnorm") and m.get("rxnorm") == med.get("rxnorm"))
                                                  or (m.get("name") or "").casefold() == (med.get("name") or "").casefold())]
        if same:
            med["status"], med["end"] = "completed", max(m["end"] for m in same)


def medication_name_and_code(resource: dict[str, Any], known: frozenset[str] = frozenset()
                             ) -> tuple[Optional[str], Optional[str]]:
    """(name, RxNorm code) of a MedicationRequest/MedicationStatement's own medicationCodeableConcept."""
    return _name_and_code(resource.get("medicationCodeableConcept"), known)


@dataclass
class OrderDrug:
    name: Optional[str]
    rxnorm: Optional[str]
    unread: Optional[str]          # why no drug could be read from the order (None when one was)
    atc: Optional[str] = None      # its WHO ATC code, when it has one
    indication: Optional[str] = None   # every reason the order gives, as text (_indication)


def order_drugs(orders: list[dict[str, Any]], data: Any, known: frozenset[str] = frozenset(),
                kb: Optional[KnowledgeBase] = None) -> list[OrderDrug]:
    """The drug of each draft order (a MedicationRequest being written), as the mapping reads it for
    the assessment: its ``medicationCodeableConcept``, else the Medication its ``medicationReference``
    points to (``#id`` in its ``contained``, or a Medication in ``data``: the prefetch, the draftOrders),
    else the reference's display; of several RxNorm codings, one in ``known`` (the engine's ``rxnorm_codes``)
    first. ``unread`` says why an order's drug could not be told at all. The data is indexed only when an
    order needs it (a prefetch can hold years of labs)."""
    index: Optional[Index] = None
    out: list[OrderDrug] = []
    for order in orders:
        if index is None and (order.get("reasonReference") or not isinstance(order.get("medicationCodeableConcept"),
                                                                             dict)):
            index = Index(walk_readable([*orders, data]))
        indication = _indication(Item(order, "", None, None), index, kb)
        if isinstance(order.get("medicationCodeableConcept"), dict):
            name, code = medication_name_and_code(order, known)
            atc = atc_code(order["medicationCodeableConcept"])
            out.append(OrderDrug(name, code, None if name or code or atc else "its medicationCodeableConcept names "
                                                                              "no drug (no text, display or code)", atc,
                                 indication))
            continue
        assert index is not None
        out.append(replace(_referenced_drug(order, index, known), indication=indication))
    return out


def _referenced_drug(order: dict[str, Any], index: Index, known: frozenset[str]) -> OrderDrug:
    ref_obj = as_dict(order.get("medicationReference"))
    ref, display = reference(ref_obj), as_str(ref_obj.get("display"))
    if not ref and not display:
        why = ("its medicationCodeableConcept is not a CodeableConcept (a JSON object)"
               if order.get("medicationCodeableConcept") is not None else "its drug is not given")
        return OrderDrug(None, None, f"{why}, and it has no medicationReference")
    target = index.resolve(ref, Item(order, "", None, None))
    medication = target is not None and target.type == "Medication"
    concept = medication_code(target, index, known) if target is not None and medication else None
    name, code = _name_and_code(concept, known) if concept is not None else (None, None)
    if name or code or atc_code(concept):
        return OrderDrug(name, code, None, atc_code(concept))
    if display:
        return OrderDrug(display, None, None)
    why = "names no drug" if medication else "does not resolve to a Medication in the request"
    return OrderDrug(None, None, f"its medicationReference {ref!r} {why}")


def _name_and_code(concept: Any, known: frozenset[str]) -> tuple[Optional[str], Optional[str]]:
    """(name, RxNorm code): of several RxNorm codings, one leukodx reads first (a thiopurine's product code
    second after an unknown one had hidden the thiopurine)."""
    rx = [code for c in codings(concept) if _is_rxnorm(c.get("system")) and (code := as_str(c.get("code")))]
    return concept_text(concept), next((c for c in rx if c in known), rx[0] if rx else None)


def _medication(item: Item, index: Index, known_rxnorm: frozenset[str], include_draft: bool,
                warnings: list[str], unread: Optional[list[Problem]] = None, kb: Optional[KnowledgeBase] = None
                ) -> Optional[tuple[dict[str, Any], Optional[When]]]:
    res = item.resource
    fhir_status = as_str(res.get("status"))
    if res.get("doNotPerform") is True:
        warnings.append(f"{item.label}: doNotPerform is true (an order not to give it); skipped.")
        return None
    intent = as_str(res.get("intent"))
    if item.type == "MedicationRequest" and intent in NOT_ORDERED_INTENTS and fhir_status != "draft":
        warnings.append(f"{item.label}: intent {intent!r} (proposed or planned, not ordered); skipped.")
        return None
    if fhir_status == "draft" and not include_draft:
        warnings.append(f"{item.label}: a draft, not an order yet; skipped (include_draft=True keeps drafts).")
        return None
    status = MED_STATUS.get(fhir_status or "")
    if status is None:
        why = (f"status {fhir_status!r}: {NOT_TAKEN_WHY.get(fhir_status, 'it is not being taken')}" if fhir_status
               else "no status")
        warnings.append(f"{item.label}: {why}; skipped.")
        return None
    if fhir_status == "unknown":
        warnings.append(f"{item.label}: status 'unknown'; counted as active.")
    drug = _drug(item, index, known_rxnorm, warnings, unread)
    if drug is None:
        return None
    start = first_when([("authoredOn", res.get("authoredOn")),
                        ("effectivePeriod.start", as_dict(res.get("effectivePeriod")).get("start")),
                        ("effectiveDateTime", res.get("effectiveDateTime"))], item.label, warnings)
    end = None
    if status in ("stopped", "completed"):
        end = first_when([("effectivePeriod.end", as_dict(res.get("effectivePeriod")).get("end")),
                          ("dispenseRequest.validityPeriod.end",
                           as_dict(as_dict(res.get("dispenseRequest")).get("validityPeriod")).get("end"))],
                         item.label, warnings)
    med: dict[str, Any] = {**drug, "status": status,
                           "start": start.isoformat() if start else None, "end": end.isoformat() if end else None,
                           "dose": order_dose(res, item.label, warnings, kb),
                           "indication": _indication(item, index, kb)}
    return {k: v for k, v in med.items() if v is not None}, start


def _given(item: Item, index: Index, known_rxnorm: frozenset[str], warnings: list[str],
           unread: Optional[list[Problem]] = None, ref: Optional[date] = None, kb: Optional[KnowledgeBase] = None
           ) -> Optional[tuple[dict[str, Any], Optional[When]]]:
    """A MedicationAdministration (a dose given) or MedicationDispense (a supply handed over) as a course
    whose last known dose is that day: ``completed`` from its time to its end (a dispense's end is the day
    handed over plus its daysSupply), so it counts as recent for ``recent_drug_days`` after it; an
    administration in progress or on hold is active, and so is a course whose last dose was given on the case's
    day ``ref`` or the day before, or whose supply lasts to ``ref`` (clozapine given yesterday had been a course
    ended, and the label's ANC alert for a patient on clozapine was not raised). Other statuses mean nothing was
    given: skipped."""
    res = item.resource
    fhir_status = as_str(res.get("status"))
    status = EVENT_STATUS[item.type].get(fhir_status or "")
    if status is None:
        why = f"status {fhir_status!r}: nothing was given" if fhir_status else "no status"
        warnings.append(f"{item.label}: {why}; skipped.")
        return None
    drug = _drug(item, index, known_rxnorm, warnings, unread)
    if drug is None:
        return None
    period = as_dict(res.get("effectivePeriod"))
    if item.type == "MedicationAdministration":
        start = first_when([("effectiveDateTime", res.get("effectiveDateTime")), ("effectivePeriod.start",
                                                                                  period.get("start"))],
                           item.label, warnings)
        end = first_when([("effectivePeriod.end", period.get("end"))], item.label, warnings) or start
    else:
        start = first_when([("whenHandedOver", res.get("whenHandedOver")),
                            ("whenPrepared", res.get("whenPrepared"))], item.label, warnings)
        supply = as_dict(res.get("daysSupply")).get("value")
        end = start + timedelta(days=float(supply)) if start is not None and is_number(supply) and supply > 0 else start
    if start is None:
        warnings.append(f"{item.label}: no time when it was given; skipped.")
        return None
    lately = status != "active" and ref is not None and (utc_date(end) or ref) >= ref - timedelta(days=1)
    if lately:                                     # given yesterday or today, or supplied to today: still taken
        status = "active"                          # (unless its prescriber stopped it since: _ended_by_prescriber)
    med = {**drug, "status": "active" if status == "active" else "completed",
           "start": start.isoformat(), "indication": _indication(item, index, kb), "_event": lately}
    if status != "active":
        med["end"] = end.isoformat()
    return {k: v for k, v in med.items() if v is not None}, start


def _drug(item: Item, index: Index, known_rxnorm: frozenset[str], warnings: list[str],
          unread: Optional[list[Problem]] = None) -> Optional[dict[str, Optional[str]]]:
    """{name, rxnorm, atc} of the drug of a medication resource; None (with a warning, and a problem in
    ``unread``) when it has none of them."""
    concept, display = _med_concept(item, index, warnings, known_rxnorm)
    rxnorm, rx_display = _rxnorm(concept, known_rxnorm)
    name = as_str(as_dict(concept).get("text")) or rx_display or concept_text(concept) or display
    atc = atc_code(concept)
    if not name and not rxnorm and not atc:
        warnings.append(f"{item.label}: the drug has neither a name nor an RxNorm or ATC code; skipped.")
        if unread is not None:
            unread.append(Problem(item.loc, "a medication whose drug cannot be told (no name, no RxNorm or ATC code, "
                                            "no Medication in the data for its reference): a drug that lowers counts "
                                            "may be missed"))
        return None
    return {"name": name, "rxnorm": rxnorm, "atc": atc}


# WHO's ATC as FHIR names it (http://www.whocc.no/atc) and as feeds converted from CDA name it (its HL7 OID)
_ATC_SYSTEMS = frozenset({"http://www.whocc.no/atc", "https://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"})
_ATC_CODE = re.compile(ATC_CODE)


def atc_code(concept: Any) -> Optional[str]:
    """The first WHO ATC 5th-level code among the concept's codings (a substance: L04AX01 is azathioprine)."""
    for c in codings(concept):
        system, code = (as_str(c.get("system")) or "").lower().rstrip("/"), (as_str(c.get("code")) or "").upper()
        if system in _ATC_SYSTEMS and _ATC_CODE.match(code):
            return code
    return None


def _med_concept(item: Item, index: Index, warnings: list[str], known: frozenset[str] = frozenset()
                 ) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(CodeableConcept of the drug, fallback display name)."""
    res = item.resource
    if isinstance(res.get("medicationCodeableConcept"), dict):
        return res["medicationCodeableConcept"], None
    ref_obj = as_dict(res.get("medicationReference"))
    ref, display = reference(ref_obj), as_str(ref_obj.get("display"))
    target = index.resolve(ref, item)
    if target is not None and target.type == "Medication":
        return medication_code(target, index, known), display
    if ref or display:
        used = f"; its display {display!r} was used as the name" if display else ""
        warnings.append(f"{item.label}: medicationReference {ref!r} does not resolve to a Medication in the "
                        f"data{used}.")
    return None, display


def medication_code(medication: Item, index: Index, known: frozenset[str]) -> dict[str, Any]:
    """A Medication's drug: its ``code``; when that names no drug (no text, display or known RxNorm code), its first
    active ingredient leukodx knows by RxNorm or ATC, else the first one named (``ingredient.itemCodeableConcept``,
    R5's ``item.concept``, or ``itemReference`` to a Medication): a compounded azathioprine coded by NDC alone, its
    ingredient RxNorm 1256, had been 'not in the data'. A named product keeps its name, with its ingredients' names
    after it ("Pharmacy compounded suspension (azathioprine)"): a name is never replaced by an ingredient's (an
    "Imuran" sent with a methotrexate ingredient stays azathioprine, the first name found)."""
    code = as_dict(medication.resource.get("code"))
    if _rxnorm(code, known)[0] in known:
        return code
    concepts = []
    for ingredient in as_list(medication.resource.get("ingredient")):
        ing = as_dict(ingredient)
        if ing.get("isActive") is False:                # an excipient, not the drug
            continue
        item = as_dict(ing.get("item"))
        concept = as_dict(ing.get("itemCodeableConcept")) or as_dict(item.get("concept"))
        ref = reference(ing.get("itemReference")) or reference(item.get("reference"))
        target = index.resolve(ref, medication) if ref and not concept else None
        if target is not None and target.type == "Medication":
            concept = as_dict(target.resource.get("code"))
        if concept:
            concepts.append(concept)
    name = concept_text(code)
    if name:
        parts = [n for c in concepts if (n := concept_text(c) or _rxnorm(c, known)[1])]
        return {**code, "text": f"{name} ({', '.join(parts)})"[:300]} if parts else code
    first_known = next((c for c in concepts if _rxnorm(c, known)[0] in known or atc_code(c)), None)
    return first_known or next((c for c in concepts if concept_text(c) or _rxnorm(c, known)[0]), code)


def _rxnorm(concept: Optional[dict[str, Any]], known: frozenset[str]) -> tuple[Optional[str], Optional[str]]:
    """(RxNorm code, RxNorm display): a code the knowledge base knows first, else the first RxNorm coding."""
    rx = [c for c in codings(concept) if _is_rxnorm(c.get("system")) and as_str(c.get("code"))]
    if not rx:
        return None, None
    best = next((c for c in rx if as_str(c.get("code")) in known), rx[0])
    return as_str(best.get("code")), as_str(best.get("display"))


def _indication(item: Item, index: Optional[Index], kb: Optional[KnowledgeBase] = None) -> Optional[str]:
    """Every reason the request or statement gives, as text: each reasonCode's text or display, each reasonReference's
    Condition (or its display), joined ("Crohn's disease" as the second reasonCode, or only as a reference to the
    Condition, had left a thiopurine order read as a cancer's beside a past breast cancer); one given as a code only
    as :func:`~.conditions.reason_read` reads it with ``kb``. ``index`` resolves the references (None: their displays
    only)."""
    res = item.resource
    said = [t for c in as_list(res.get("reasonCode")) if (t := reason_read(c, kb))]
    for ref in as_list(res.get("reasonReference")):
        target = index.resolve(reference(ref), item) if index is not None else None
        text = reason_read(target.resource.get("code"), kb) if target is not None and target.type == "Condition" else None
        if text := text or as_str(as_dict(ref).get("display")):
            said.append(text)
    return "; ".join(dict.fromkeys(said))[:500] or None
