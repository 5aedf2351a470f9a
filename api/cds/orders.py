"""The order hooks' part of a call (order-select, order-sign): the draft orders the EHR sent, and a card
per ordered drug the engine's order check speaks about (or one saying its drug could not be read)."""
from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import ValidationError

from leukodx.engine import Assessment, Engine, OrderInput, rxnorm_codes

from .. import fhir
from . import cards as C
from .models import Card, HookRequest

__all__ = ["draft_orders", "order_cards", "unmatched_selections"]


def draft_orders(hook: HookRequest, kind: str = "MedicationRequest") -> list[dict[str, Any]]:
    """The draft MedicationRequests of an order hook (the selected ones, for order-select: a selection names a
    draft as ``MedicationRequest/<id>``, its id alone, a URL ending so, or its entry's fullUrl; when no draft
    matches any selection, every draft, so that a misnamed selection never silences the check); with ``kind``
    "Medication", the Medications the draftOrders Bundle holds (a draft may reference one), as a Bundle of them with
    their fullUrls (a reference to ``urn:uuid:...`` had found nothing, and the order went unchecked)."""
    drafts = hook.context.get("draftOrders") if hook.hook in ("order-select", "order-sign") else None
    if not isinstance(drafts, dict):
        return []
    selections = [s for s in hook.context.get("selections") or [] if isinstance(s, str)] \
        if hook.hook == "order-select" and kind == "MedicationRequest" else []
    found = []
    for entry in drafts.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        # an order not to give the drug, or one cancelled or entered in error, is no drug to be taken: not checked (a
        # "do not give azathioprine" had got a critical card recommending its deletion)
        if isinstance(res, dict) and res.get("resourceType") == kind and not (
                kind == "MedicationRequest" and (res.get("doNotPerform") is True
                                                 or res.get("status") in ("cancelled", "entered-in-error"))):
            found.append((res, entry.get("fullUrl")))
    if kind == "Medication":
        return [{"resourceType": "Bundle", "type": "collection",
                 "entry": [{"resource": res, **({"fullUrl": url} if isinstance(url, str) else {})}
                           for res, url in found]}] if found else []
    if not selections:
        return [res for res, _ in found]
    chosen = [res for res, full_url in found if any(_selects(s, res, full_url) for s in selections)]
    return chosen or ([res for res, _ in found] if unmatched_selections(hook) else [])


def unmatched_selections(hook: HookRequest) -> list[str]:
    """The order-select selections that may name a medication order (MedicationRequest/..., or an id alone) and
    name no draft of the call (said on a card; every draft is then checked). A selection of another kind of
    order (NutritionOrder/...) is not leukodx's."""
    if hook.hook != "order-select" or not isinstance(hook.context.get("draftOrders"), dict):
        return []
    found = [(e.get("resource"), e.get("fullUrl")) for e in hook.context["draftOrders"].get("entry") or []
             if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    return [s for s in hook.context.get("selections") or [] if isinstance(s, str)
            and ("MedicationRequest/" in s or "/" not in s) and not any(_selects(s, res, url) for res, url in found)]


def _selects(selection: str, res: dict[str, Any], full_url: Any) -> bool:
    rid = res.get("id")
    ref = f"{res.get('resourceType')}/{rid}"
    return bool(selection == full_url or (rid and (selection in (ref, rid) or selection.endswith(f"/{ref}"))))


def order_cards(eng: Engine, drafts: list[dict[str, Any]], assessment: Optional[Assessment],
                 resources: list[Any], hook: HookRequest, patient_id: str, weight_kg: Optional[float] = None,
                 unhad: frozenset[str] = frozenset()) -> list[Card]:
    """A card per ordered drug the engine's order check speaks about (each order with its daily dose, and
    the patient's weight as the FHIR mapping read it, so that the check can tell the dose in mg/kg/day);
    ``unhad``: what could not be had ("genotypes", "conditions")."""
    if not drafts:
        return []
    orders, by_key, unread, seen = [], {}, [], set()
    for index, (order, drug) in enumerate(zip(drafts, fhir.order_drugs(drafts, resources, rxnorm_codes(eng.kb), eng.kb))):
        key = str(order.get("id") or f"#{index}")     # an order without an id still gets its own card uuid
        if key in seen:
            key = f"{key}#{index}"                      # two drafts with one id: each its own card uuid
        seen.add(key)
        named = (f"Draft order MedicationRequest/{key}" if order.get("id") else f"Draft order {index + 1}")[:100]
        other = _another_patients(order, patient_id)
        if other is not None:      # never checked against this patient's genotype and counts
            unread.append(C.other_patients_order_card(hook.hookInstance, key, named, other[:100], patient_id,
                                                      eng.kb.version))
            continue
        if drug.unread:                                # said on a card, never dropped in silence
            unread.append(C.unread_order_card(hook.hookInstance, key, named, drug.unread, eng.kb.version))
            continue
        indication = drug.indication                   # every reasonCode and reasonReference, as text
        try:
            orders.append(OrderInput(key=key, name=drug.name, rxnorm=drug.rxnorm, atc=drug.atc, indication=indication,
                                     dose=fhir.order_dose(order, kb=eng.kb), weight_kg=weight_kg))
        except ValidationError:                         # a dose or weight it cannot read: checked without them
            orders.append(OrderInput(key=key, name=drug.name, rxnorm=drug.rxnorm, atc=drug.atc,
                                     indication=indication))
        by_key[key] = order
    history = fhir.pgx_results(eng.kb, resources, patient_id) if assessment is None else {}   # never another patient's
    checks = eng.check_orders(orders, assessment, history.get("tpmt"), history.get("nudt15"), unhad)
    return [C.order_card(c, by_key[c.order], hook.hookInstance, patient_id, eng.kb.version) for c in checks] + unread


_PATIENT = re.compile(r"(?:^|/)Patient/([^/]+?)(?:/_history/[^/]*)?$")


def _another_patients(order: dict[str, Any], patient_id: str) -> Optional[str]:
    """The subject of a draft order that is not the call's patient (a draft for Patient/B had been checked against
    Patient/A's TPMT and count: a critical "do not start" with a delete action), or that cannot be told to be (a
    urn:uuid, a Group, an identifier alone: the assessment leaves such a draft out, and the order check had taken it
    as the patient's); None when it names this patient or no subject (the hook's patient: routes.py)."""
    subject = order.get("subject")
    if not subject:
        return None
    ref = subject.get("reference") if isinstance(subject, dict) else None
    m = _PATIENT.search(ref.strip()) if isinstance(ref, str) else None
    if m and m.group(1) == patient_id.strip().removeprefix("Patient/"):
        return None
    return ref.strip() if isinstance(ref, str) and ref.strip() else "a subject with no reference"

