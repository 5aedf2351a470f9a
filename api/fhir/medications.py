"""MedicationRequest, MedicationStatement, MedicationAdministration and MedicationDispense ->
``case.medications`` (an administration or a dispense: see :func:`_given`).

Status active/on-hold -> active, completed -> completed, stopped/cancelled -> stopped, unknown ->
active (warned); entered-in-error, intended and not-taken are skipped, and so are a request with
``doNotPerform`` true or an intent of proposal, plan or option (not an order); ``draft`` too unless
``include_draft`` (the order being signed in a CDS Hooks call), when it counts as active. The drug
is ``medicationCodeableConcept`` or the Medication that ``medicationReference`` points to (``#id``
in ``contained``, ``Medication/<id>`` or a ``fullUrl``): ``name`` is its text or display,
``rxnorm`` its RxNorm code (one the knowledge base knows first). ``start``: ``authoredOn``,
``effectivePeriod.start`` or ``effectiveDateTime``; ``end`` (stopped/completed only):
``effectivePeriod.end`` or ``dispenseRequest.validityPeriod.end``. ``dose``: the first dose
quantity as ``{value, unit}`` when its unit is a mass per time (mg/d) or per body mass per time
(mg/kg/d), or a mass per take with its timing (``timing.repeat`` frequency per period, ``dayOfWeek``, or a
``timing.code`` such as BID) as a dose per day when taken daily or more often, per week when less often (125 mg
twice a day: 250 mg/d; methotrexate 15 mg once a week: 15 mg/wk, so that a weekly dose stays weekly and a daily
one daily for the engine's frequency check), else the dosage text. ``indication``: ``reasonCode[0]``, else the Condition that
``reasonReference[0]`` points to. A medication that starts after the case date is left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Optional, Union

from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase
from leukodx.engine.timeutil import utc_date
from leukodx.engine.units import dose_rate, registry
from leukodx.engine import rxnorm_codes

from .datatypes import (When, after, as_dict, as_list, as_str, codings, concept_text, first_when, fmt, is_number,
                        later_warning, quantity_unit, reference)
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
              "stopped": "stopped", "cancelled": "stopped", "draft": "active"}


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
            mapped = _given(item, index, known_rxnorm, warnings, unread, ref)
        elif item.type in ("MedicationRequest", "MedicationStatement"):
            mapped = _medication(item, index, known_rxnorm, include_draft, warnings, unread)
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
        meds.append(med)
    if later:
        assert ref is not None
        warnings.append(later_warning(len(later), "medication", "started", ref, later))
    _ended_by_prescriber(meds)
    return meds


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


def order_drugs(orders: list[dict[str, Any]], data: Any, known: frozenset[str] = frozenset()) -> list[OrderDrug]:
    """The drug of each draft order (a MedicationRequest being written), as the mapping reads it for
    the assessment: its ``medicationCodeableConcept``, else the Medication its ``medicationReference``
    points to (``#id`` in its ``contained``, or a Medication in ``data``: the prefetch, the draftOrders),
    else the reference's display; of several RxNorm codings, one in ``known`` (the engine's ``rxnorm_codes``)
    first. ``unread`` says why an order's drug could not be told at all. The data is indexed only when an
    order needs it (a prefetch can hold years of labs)."""
    index: Optional[Index] = None
    out: list[OrderDrug] = []
    for order in orders:
        if isinstance(order.get("medicationCodeableConcept"), dict):
            name, code = medication_name_and_code(order, known)
            out.append(OrderDrug(name, code, None if name or code else "its medicationCodeableConcept names no "
                                                                       "drug (no text, display or RxNorm code)"))
            continue
        if index is None:
            index = Index(walk_readable([*orders, data]))
        out.append(_referenced_drug(order, index, known))
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
    name, code = (_name_and_code(target.resource.get("code"), known) if target is not None and medication
                  else (None, None))
    if name or code:
        return OrderDrug(name, code, None)
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
                warnings: list[str], unread: Optional[list[Problem]] = None
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
        why = f"status {fhir_status!r} means it is not being taken" if fhir_status else "no status"
        warnings.append(f"{item.label}: {why}; skipped.")
        return None
    if fhir_status == "unknown":
        warnings.append(f"{item.label}: status 'unknown'; counted as active.")
    drug = _drug(item, index, known_rxnorm, warnings, unread)
    if drug is None:
        return None
    name, rxnorm = drug
    start = first_when([("authoredOn", res.get("authoredOn")),
                        ("effectivePeriod.start", as_dict(res.get("effectivePeriod")).get("start")),
                        ("effectiveDateTime", res.get("effectiveDateTime"))], item.label, warnings)
    end = None
    if status in ("stopped", "completed"):
        end = first_when([("effectivePeriod.end", as_dict(res.get("effectivePeriod")).get("end")),
                          ("dispenseRequest.validityPeriod.end",
                           as_dict(as_dict(res.get("dispenseRequest")).get("validityPeriod")).get("end"))],
                         item.label, warnings)
    med: dict[str, Any] = {"name": name, "rxnorm": rxnorm, "status": status,
                           "start": start.isoformat() if start else None, "end": end.isoformat() if end else None,
                           "dose": order_dose(res, item.label, warnings),
                           "indication": _indication(item, index)}
    return {k: v for k, v in med.items() if v is not None}, start


def _given(item: Item, index: Index, known_rxnorm: frozenset[str], warnings: list[str],
           unread: Optional[list[Problem]] = None, ref: Optional[date] = None
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
    name, rxnorm = drug
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
    med = {"name": name, "rxnorm": rxnorm, "status": "active" if status == "active" else "completed",
           "start": start.isoformat(), "indication": _indication(item, index), "_event": lately}
    if status != "active":
        med["end"] = end.isoformat()
    return {k: v for k, v in med.items() if v is not None}, start


def _drug(item: Item, index: Index, known_rxnorm: frozenset[str], warnings: list[str],
          unread: Optional[list[Problem]] = None) -> Optional[tuple[Optional[str], Optional[str]]]:
    """(name, RxNorm code) of the drug of a medication resource; None (with a warning, and a problem in
    ``unread``) when it has neither."""
    concept, display = _med_concept(item, index, warnings)
    rxnorm, rx_display = _rxnorm(concept, known_rxnorm)
    name = as_str(as_dict(concept).get("text")) or rx_display or concept_text(concept) or display
    if not name and not rxnorm:
        warnings.append(f"{item.label}: the drug has neither a name nor an RxNorm code; skipped.")
        if unread is not None:
            unread.append(Problem(item.loc, "a medication whose drug cannot be told (no name, no RxNorm code, no "
                                            "Medication in the data for its reference): a drug that lowers counts "
                                            "may be missed"))
        return None
    return name, rxnorm


def _med_concept(item: Item, index: Index, warnings: list[str]) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(CodeableConcept of the drug, fallback display name)."""
    res = item.resource
    if isinstance(res.get("medicationCodeableConcept"), dict):
        return res["medicationCodeableConcept"], None
    ref_obj = as_dict(res.get("medicationReference"))
    ref, display = reference(ref_obj), as_str(ref_obj.get("display"))
    target = index.resolve(ref, item)
    if target is not None and target.type == "Medication":
        return as_dict(target.resource.get("code")), display
    if ref or display:
        used = f"; its display {display!r} was used as the name" if display else ""
        warnings.append(f"{item.label}: medicationReference {ref!r} does not resolve to a Medication in the "
                        f"data{used}.")
    return None, display


def _rxnorm(concept: Optional[dict[str, Any]], known: frozenset[str]) -> tuple[Optional[str], Optional[str]]:
    """(RxNorm code, RxNorm display): a code the knowledge base knows first, else the first RxNorm coding."""
    rx = [c for c in codings(concept) if _is_rxnorm(c.get("system")) and as_str(c.get("code"))]
    if not rx:
        return None, None
    best = next((c for c in rx if as_str(c.get("code")) in known), rx[0])
    return as_str(best.get("code")), as_str(best.get("display"))


def order_dose(res: dict[str, Any], label: str = "", warnings: Optional[list[str]] = None
               ) -> Union[dict[str, Any], str, None]:
    """The daily dose of a medication resource as ``case.medications[].dose`` takes it (the module's
    docstring); None without dosage instructions. Why several could not be added up goes to ``warnings``."""
    dosages = as_list(res.get("dosageInstruction")) or as_list(res.get("dosage"))
    if not dosages:
        return None
    return _total_dose([_dose(as_dict(d)) for d in dosages], label, [] if warnings is None else warnings)


def _dose(dosage: dict[str, Any]) -> Union[dict[str, Any], str, None]:
    """{value, unit} for a mass per time or mass per body mass per time; else the dosage text."""
    text = as_str(dosage.get("text"))
    rate = as_dict(as_list(dosage.get("doseAndRate"))[0] if as_list(dosage.get("doseAndRate")) else {})
    # STU3 kept the quantity on dosage; a range is read at its top, the most that may be given (methotrexate 7.5-10
    # mg daily as a doseRange had gone unread, and the daily-methotrexate check with it)
    q = as_dict(rate.get("doseQuantity")) or as_dict(dosage.get("doseQuantity")) or \
        as_dict(as_dict(rate.get("doseRange")).get("high"))
    value, unit = q.get("value"), quantity_unit(q)
    rate = dose_rate(unit) if is_number(value) and unit else None
    rate_unit = rate.spelling if rate else None
    if rate_unit:
        return {"value": value, "unit": rate_unit}
    per_period = _per_period(value, unit, as_dict(dosage.get("timing")))
    if isinstance(per_period, dict):
        return per_period
    if text:
        return text
    if per_period is not None:
        return per_period
    if is_number(value) and unit:
        return f"{fmt(value)} {unit}"
    return None


def _total_dose(doses: list[Union[dict[str, Any], str, None]], label: str,
                warnings: list[str]) -> Union[dict[str, Any], str, None]:
    """The dose of all the dosage instructions: their sum when each is a dose per day in one unit (100 mg in
    the morning and 100 mg in the evening: 200 mg/d; the first alone had hidden a split dose). Instructions
    that cannot be added up give no dose, with a warning: one part is never taken for the whole."""
    given = [d for d in doses if d is not None]
    if len(given) <= 1:
        return given[0] if given else None
    rates = [d for d in given if isinstance(d, dict)]
    if len(rates) == len(given) and len({d["unit"] for d in rates}) == 1:
        return {"value": float(f"{sum(float(d['value']) for d in rates):.6g}"), "unit": rates[0]["unit"]}
    read = [dose_rate(d["unit"]) for d in rates]
    if len(rates) == len(given) and all(read) and len({(r.per_kg, r.per_m2) for r in read if r}) == 1:   # mg/d, mg/wk
        total = sum(float(d["value"]) * r.factor for d, r in zip(rates, read) if r)
        first = read[0]
        return {"value": float(f"{total:.6g}"),
                "unit": "mg/kg/d" if first and first.per_kg else "mg/m2/d" if first and first.per_m2 else "mg/d"}
    shown = "; ".join(d if isinstance(d, str) else f"{fmt(d['value'])} {d['unit']}" for d in given)[:200]
    warnings.append(f"{label}: its {len(given)} dosage instructions ({shown}) could not be added up into a dose per "
                    f"day; dose-based rules were not applied to it.")
    return None


_PERIOD_UNITS = frozenset({"s", "min", "h", "d", "wk", "mo", "a"})     # FHIR's UnitsOfTime (UCUM codes)
# HL7's timing abbreviations (GTSAbbreviation, ``timing.code``) as takes per week, for a timing sent without repeat
_TIMING_CODES = {"QD": 7, "AM": 7, "PM": 7, "BED": 7, "BID": 14, "TID": 21, "QID": 28, "QOD": 3.5, "WK": 1,
                 "Q1H": 168, "Q2H": 84, "Q3H": 56, "Q4H": 42, "Q6H": 28, "Q8H": 21}


def _takes_per_week(timing: dict[str, Any]) -> Optional[float]:
    """How many takes a week a timing gives: ``frequency`` per ``period`` ``periodUnit`` (pint converts the
    period), on each ``dayOfWeek`` when named (1 per 1 d on Monday is once a week), else its ``code``."""
    repeat = as_dict(timing.get("repeat"))
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), as_str(repeat.get("periodUnit"))
    days = [d for d in as_list(repeat.get("dayOfWeek")) if isinstance(d, str)]
    if is_number(frequency) and is_number(period) and period > 0 and frequency > 0 and unit in _PERIOD_UNITS:
        span = registry().Quantity(float(period), unit).to("day").magnitude
        return float(frequency) * len(days) if days and span <= 1 else float(frequency) * 7 / span
    if days:
        return float(len(days))
    when = {w for w in as_list(repeat.get("when")) if isinstance(w, str)}
    if when and not is_number(frequency) and not is_number(period) and not unit:   # "every morning": each day, at each
        return 7.0 * len(when)
    code = next((as_str(c.get("code")) for c in codings(timing.get("code")) if as_str(c.get("code"))), None)
    return _TIMING_CODES.get((code or "").upper())


def _per_period(value: Any, unit: Optional[str], timing: dict[str, Any]) -> Union[dict[str, Any], str, None]:
    """A dose per take (``doseQuantity`` 50 mg) with its timing as a dose per day when it is taken daily or more
    often (2 per 1 d: {value: 100, unit: mg/d}) and per week when less often (1 per 7 d, or 1 per 1 wk: {value: 15,
    unit: mg/wk}), for the dose rules (pint converts it to mg/day) and the engine's check of how often a weekly
    drug is taken; a dose per take that is not a mass (4 tablets) as a text that says how often ("4 {tbl} 1 time a
    day"); None without a value, a unit or a timing."""
    per_week = _takes_per_week(timing)
    said = concept_text(timing.get("code"))
    if is_number(value) and unit and not per_week and said:     # a timing only in words ("Daily"): said with the dose
        return f"{fmt(value)} {unit} {said[:60]}"
    if not (is_number(value) and unit and per_week):
        return None
    daily = per_week >= 7
    rate = dose_rate(f"{unit}/{'d' if daily else 'wk'}")
    if rate is None:
        return f"{fmt(value)} {unit} {fmt(per_week / 7 if daily else per_week)} times a {'day' if daily else 'week'}"
    return {"value": float(f"{float(value) * (per_week / 7 if daily else per_week):.6g}"), "unit": rate.spelling}


def _indication(item: Item, index: Index) -> Optional[str]:
    res = item.resource
    reason = concept_text(as_list(res.get("reasonCode"))[0] if as_list(res.get("reasonCode")) else None)
    if reason:
        return reason
    refs = as_list(res.get("reasonReference"))
    if not refs:
        return None
    target = index.resolve(reference(refs[0]), item)
    if target is not None and target.type == "Condition":
        text = concept_text(target.resource.get("code"))
        if text:
            return text
    return as_str(as_dict(refs[0]).get("display"))
