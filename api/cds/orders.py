"""The order hooks' part of a call (order-select, order-sign): the draft orders the EHR sent, and a card
per ordered drug the engine's order check speaks about (or one saying its drug could not be read)."""
from __future__ import annotations

from typing import Any, Optional

from leukodx.engine import Assessment, Engine, OrderInput

from .. import fhir
from . import cards as C
from .models import Card, HookRequest

__all__ = ["draft_orders", "order_cards"]


def draft_orders(hook: HookRequest, kind: str = "MedicationRequest") -> list[dict[str, Any]]:
    """The draft MedicationRequests of an order hook (the selected ones, for order-select); with ``kind``
    "Medication", the Medications the draftOrders Bundle holds (a draft may reference one)."""
    drafts = hook.context.get("draftOrders") if hook.hook in ("order-select", "order-sign") else None
    if not isinstance(drafts, dict):
        return []
    selections = set(hook.context.get("selections") or []) if hook.hook == "order-select" else set()
    out = []
    for entry in drafts.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and res.get("resourceType") == kind:
            if kind == "MedicationRequest" and selections and f"MedicationRequest/{res.get('id')}" not in selections:
                continue
            out.append(res)
    return out


def order_cards(eng: Engine, drafts: list[dict[str, Any]], assessment: Optional[Assessment],
                 resources: list[Any], hook: HookRequest, patient_id: str) -> list[Card]:
    """A card per ordered drug the engine's order check speaks about."""
    if not drafts:
        return []
    orders, by_key, unread, seen = [], {}, [], set()
    for index, (order, drug) in enumerate(zip(drafts, fhir.order_drugs(drafts, resources, fhir.known_rxnorm_codes(eng.kb)))):
        key = str(order.get("id") or f"#{index}")     # an order without an id still gets its own card uuid
        if key in seen:
            key = f"{key}#{index}"                      # two drafts with one id: each its own card uuid
        seen.add(key)
        if drug.unread:                                # said on a card, never dropped in silence
            named = f"Draft order MedicationRequest/{key}" if order.get("id") else f"Draft order {index + 1}"
            unread.append(C.unread_order_card(hook.hookInstance, key, named[:100], drug.unread, eng.kb.version))
            continue
        reason = (order.get("reasonCode") or [{}])[0] if isinstance(order.get("reasonCode"), list) else {}
        indication = reason.get("text") if isinstance(reason, dict) and isinstance(reason.get("text"), str) else None
        orders.append(OrderInput(key=key, name=drug.name, rxnorm=drug.rxnorm, indication=indication))
        by_key[key] = order
    history = fhir.pgx_results(eng.kb, resources, patient_id) if assessment is None else {}   # never another patient's
    checks = eng.check_orders(orders, assessment, history.get("tpmt"), history.get("nudt15"))
    return [C.order_card(c, by_key[c.order], hook.hookInstance, patient_id, eng.kb.version) for c in checks] + unread
