"""Vital signs the case holds in fixed units: body weight (``patient.weight_kg``) and body
temperature (``history.temperature_c``), read from Observations and converted with the engine's
unit registry (pint)."""
from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from typing import Optional

from leukodx.engine.timeutil import utc_naive
from leukodx.engine.units import registry, unreadable

from .datatypes import RESULT_STATUSES, as_dict, as_str, after, is_number, quantity_unit
from .resources import Item

__all__ = ["BODY_WEIGHT_LOINC", "BODY_TEMPERATURE_LOINC", "body_weight", "latest_weight", "temperature"]

BODY_WEIGHT_LOINC = ("29463-7", "3141-9")
BODY_TEMPERATURE_LOINC = ("8310-5", "8331-1")
_TEMPERATURE_CODES = frozenset(BODY_TEMPERATURE_LOINC)
_WEIGHT_UNITS = {"[lb_av]": "lb", "[oz_av]": "oz", "lbs": "lb", "kgs": "kg"}
_TEMPERATURE_UNITS = {"Cel": "degC", "°C": "degC", "C": "degC", "[degF]": "degF", "°F": "degF", "F": "degF"}

Weight = tuple[Optional[datetime], float]   # (UTC time or None, kg)


def body_weight(item: Item, weights: list[Weight], warnings: list[str]) -> None:
    """Add the body weight of a weight Observation with a result status to ``weights`` (or warn why not)."""
    if as_str(item.resource.get("status")) not in RESULT_STATUSES:
        return
    kg, why = _weight_kg(item)
    if kg is None:
        warnings.append(f"{item.label}: body weight not used: {why}.")
        return
    when = item.own_time(warnings)
    weights.append((utc_naive(when) if when is not None else None, kg))


def latest_weight(weights: list[Weight], ref: Optional[date]) -> Optional[float]:
    """The latest timed weight not after ``ref``, else the first untimed one."""
    timed = [(t, kg) for t, kg in weights if t is not None and (ref is None or t.date() <= ref)]
    if timed:
        best = timed[0]
        for t, kg in timed[1:]:
            if t > best[0]:
                best = (t, kg)
        return best[1]
    untimed = [kg for t, kg in weights if t is None]
    return untimed[0] if untimed else None


def temperature(mine: list[Item], ref: Optional[date], warnings: list[str], max_age_days: float,
                lookback_hours: float) -> Optional[float]:
    """The highest body temperature (LOINC 8310-5 or 8331-1), in Celsius, of those not after the case date and
    at most ``max_age_days`` before it (an older one says nothing about fever now; without a case date, before
    the latest reading), and within ``lookback_hours`` of the latest reading; a warning says so when it is not
    the latest."""
    later = old = 0
    readings: list[tuple[datetime, float]] = []
    for item in mine:
        res = item.resource
        if item.type != "Observation" or _TEMPERATURE_CODES.isdisjoint(item.loinc):
            continue
        if as_str(res.get("status")) not in RESULT_STATUSES:
            continue
        q = as_dict(res.get("valueQuantity"))
        unit = quantity_unit(q)
        if not is_number(q.get("value")) or unit is None:
            warnings.append(f"{item.label}: body temperature without a value and unit was not used.")
            continue
        try:
            if unreadable(unit):
                raise ValueError("not a unit")
            ureg = registry()
            celsius = ureg.Quantity(float(q["value"]), _TEMPERATURE_UNITS.get(unit, unit)).to("degC").magnitude
        except Exception:
            warnings.append(f"{item.label}: body temperature unit {unit!r} was not understood.")
            continue
        when = item.own_time(warnings)
        if when is None:
            continue
        if after(when, ref):
            later += 1
            continue
        if ref is not None and (ref - utc_naive(when).date()).days > max_age_days:
            old += 1
            continue
        readings.append((utc_naive(when), round(float(celsius), 1)))
    if later:
        warnings.append(f"{later} body temperature{'s' if later != 1 else ''} measured after the date the case is "
                        f"judged at ({ref}) {'were' if later != 1 else 'was'} left out.")
    if old and not readings:
        warnings.append(f"{old} body temperature{'s' if old != 1 else ''} older than {max_age_days:g} days before "
                        f"{ref} {'were' if old != 1 else 'was'} not used: no current temperature.")
    if ref is None and readings:
        newest = max(readings)[0]
        readings = [r for r in readings if (newest - r[0]).days <= max_age_days]
    if not readings:
        return None
    # the highest of the window: one reading of 38.3 C or more is fever (IDSA), whatever came after it (an
    # antipyretic's 37.1 C four hours after 39.2 C had hidden a febrile neutropenia)
    latest = max(readings)
    recent = [r for r in readings if (latest[0] - r[0]).total_seconds() <= lookback_hours * 3600]
    highest = max(recent, key=lambda r: (r[1], r[0]))
    if highest != latest:
        warnings.append(f"The highest body temperature of the {lookback_hours:g} hours before the latest reading "
                        f"({highest[1]:g} C, {highest[0].isoformat(timespec='minutes')}) was used; the latest was "
                        f"{latest[1]:g} C ({latest[0].isoformat(timespec='minutes')}).")
    return highest[1]


def _weight_kg(item: Item) -> tuple[Optional[float], Optional[str]]:
    q = as_dict(item.resource.get("valueQuantity"))
    value, unit = q.get("value"), quantity_unit(q)
    if not is_number(value):
        return None, "no numeric valueQuantity.value"
    if unit is None:
        return None, "no unit"
    why = unreadable(unit)
    if why:
        return None, why
    factor, problem = _kg_per(unit)
    if factor is None:
        return None, problem
    return float(f"{float(value) * factor:.6g}"), None


@lru_cache(maxsize=256)
def _kg_per(unit: str) -> tuple[Optional[float], Optional[str]]:
    """Kilograms in one ``unit`` (read by pint), or why not; a record holds dozens of weights in a
    handful of spellings."""
    ureg = registry()
    try:
        quantity = ureg.Quantity(1.0, ureg.parse_units(_WEIGHT_UNITS.get(unit, unit)))
        if not quantity.check("[mass]"):
            return None, f"unit {unit!r} is not a mass"
        return float(quantity.to("kilogram").magnitude), None
    except Exception:
        return None, f"unit {unit!r} is not a unit of mass leukodx reads"
