"""The update action of an order card: the draft order with the engine's dose change applied (its dose and,
where CPIC says so, its frequency), or none when one dose a day cannot be told or scaled safely. What restates the
old dose (the patient's instructions, the quantity to dispense) is removed, said in the dosage text."""
from __future__ import annotations

import copy
from typing import Any, Optional

from leukodx.engine import OrderCheck

__all__ = ["changed_order"]

_MASS_DOSE_CODES = ("mg", "g", "ug", "mcg", "mg/kg", "mg/m2", "g/m2", "ug/m2")   # doses a factor can scale


def _one_daily_dose(order: dict[str, Any]) -> bool:
    """The order is one dose a day in a unit of mass: one dosage instruction with one dose, and a timing of
    once a day or none (the dose quantity is then the daily dose that CPIC's factors and frequencies apply to)."""
    instructions = order.get("dosageInstruction")
    if not isinstance(instructions, list) or len(instructions) != 1 or not isinstance(instructions[0], dict):
        return False
    rates = instructions[0].get("doseAndRate")
    if not isinstance(rates, list) or len(rates) != 1 or not isinstance(rates[0], dict):
        return False
    dose = rates[0].get("doseQuantity")
    if not isinstance(dose, dict) or dose.get("code", dose.get("unit")) not in _MASS_DOSE_CODES:
        return False       # tablets, ml ...: 80% of 3 tablets is no prescription
    timing = instructions[0].get("timing")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    if timing is None or repeat is None:
        return timing is None or not (timing.get("code") or timing.get("event"))
    if not isinstance(repeat, dict):
        return False
    once_a_day = {"frequency": repeat.get("frequency", 1), "period": repeat.get("period", 1),
                  "periodUnit": repeat.get("periodUnit")} == {"frequency": 1, "period": 1, "periodUnit": "d"}
    return once_a_day and not (set(repeat) - {"frequency", "period", "periodUnit", "boundsPeriod", "boundsDuration"})


def changed_order(order: dict[str, Any], check: OrderCheck) -> Optional[dict[str, Any]]:
    """The draft order with the engine's dose change applied (dose and, where CPIC says so, frequency)."""
    change = check.dose_change
    if change is None or (change.factor is None and change.times is None):
        return None
    if not _one_daily_dose(order):
        return None        # two instructions, two doses a day, every other day ...: scaling one dose would be wrong
    new = copy.deepcopy(order)
    try:
        instruction = new["dosageInstruction"][0]
        dose = instruction["doseAndRate"][0]["doseQuantity"]
        if not 0 < float(dose["value"]) < 1e6:       # a negative, zero or absurd dose is not scaled into another
            return None
        if change.factor is not None:
            dose["value"] = float(f"{float(dose['value']) * change.factor:.3g}")
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return None
    if change.times is not None:                       # the course's bounds (30 days) are kept
        repeat = (instruction.get("timing") or {}).get("repeat", {})
        bounds = {k: v for k, v in repeat.items() if k.startswith("bounds")}
        instruction["timing"] = {"repeat": {**bounds, "frequency": change.times, "period": 1,
                                            "periodUnit": {"day": "d", "week": "wk"}[change.per or "day"]}}
    before = instruction.get("text")
    times = f", {change.times} times a {change.per or 'day'}" if change.times is not None else ""
    # what restates the old dose goes: the patient's instructions (the label: "Take 3 tablets (150 mg) once daily" had
    # stayed beside 15 mg three times a week) and the quantity to dispense; the prescriber writes them again
    restated = [k for k in ("patientInstruction",) if k in instruction]
    for key in restated:
        del instruction[key]
    dispense = new.get("dispenseRequest")
    if isinstance(dispense, dict) and "quantity" in dispense:
        del dispense["quantity"]
        restated.append("dispenseRequest.quantity")
    instruction["text"] = (f"{dose['value']:g} {dose.get('unit') or dose.get('code') or ''}{times}: {change.wording} "
                           f"(leukodx order check; check that the product ordered can give this dose"
                           + (f"; {' and '.join(restated)} removed: written for the old dose" if restated else "")
                           + ")" + (f". Before: {before}" if isinstance(before, str) else ""))
    return new
