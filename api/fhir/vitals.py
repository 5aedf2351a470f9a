"""Vital signs the case holds in fixed units: body weight (``patient.weight_kg``) and body
temperature (``history.temperature_c``, with ``history.temperature_site``), read from Observations
and converted with the engine's unit registry (pint). Which codes are a temperature or a weight, and
the site each temperature code or bodySite names, are the knowledge base's (rules/vitals.yaml)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Iterator, NamedTuple, Optional

from leukodx.engine.case import BODY_TEMPERATURE_C, bare_temperature_scale
from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase
from leukodx.engine.timeutil import utc_naive
from leukodx.engine.units import registry, unreadable

from .datatypes import (RESULT_STATUSES, after, as_dict, as_list, as_str, codings, fmt, is_number, is_ucum,
                        loinc_codes, quantity_unit)
from .resources import Item

__all__ = ["Temperature", "VitalCodes", "vital_codes", "body_weight", "latest_weight", "temperature",
           "latest_temperature_day"]

SNOMED = "http://snomed.info/sct"
_WEIGHT_UNITS = {"[lb_av]": "lb", "[oz_av]": "oz", "lbs": "lb", "kgs": "kg"}
# A temperature's unit as EHRs write it, by its letters alone (spaces, dots and case aside; the degree sign in any of
# its look-alikes): UCUM's Cel and [degF], and the free text of the red-team's EHR data ("degrees C", "deg F", "℃").
_TEMPERATURE_UNITS = {**dict.fromkeys(("cel", "°c", "c", "degc", "degreec", "degreesc", "celsius", "degreecelsius",
                                       "degreescelsius", "°celsius", "c°"), "degC"),
                      **dict.fromkeys(("[degf]", "°f", "f", "degf", "degreef", "degreesf", "fahrenheit",
                                       "degreefahrenheit", "degreesfahrenheit", "°fahrenheit", "f°"), "degF")}
_DEGREE_SIGNS = str.maketrans({"º": "°", "˚": "°", "℃": "°c", "℉": "°f"})
# a body temperature written as text: the number (a decimal point or comma, one or two digits after it) and perhaps
# its scale ("38,9", "38.9 °C", "101,2 F")
_TEMPERATURE_TEXT = re.compile(r"^\s*(\d{2,3}(?:[.,]\d{1,2})?)\s*°?\s*"
                               r"(c|f|cel|degc|degf|\[degf\]|celsius|fahrenheit)?\s*$", re.IGNORECASE)


def _temperature_unit(unit: str) -> str:
    """The pint unit of a temperature's unit as written (``unit`` itself when not one of the spellings above)."""
    return _TEMPERATURE_UNITS.get(re.sub(r"[\s.]", "", unit).casefold().translate(_DEGREE_SIGNS), unit)

def _two_scales(q: dict[str, Any]) -> bool:
    """A temperature whose unit text and UCUM code name two different scales (Celsius and Fahrenheit)."""
    unit, code = as_str(q.get("unit")), as_str(q.get("code"))
    if not (is_number(q.get("value")) and unit and code and is_ucum(as_str(q.get("system")))):
        return False
    scales = {_temperature_unit(unit), _temperature_unit(code)}
    return len(scales) == 2 and scales <= {"degC", "degF"}


Weight = tuple[Optional[datetime], float]   # (UTC time or None, kg)


@dataclass(frozen=True)
class VitalCodes:
    """rules/vitals.yaml, as the mapping reads it."""
    temperature: frozenset[str]              # LOINC codes of a body temperature
    weight: frozenset[str]                   # LOINC codes of a body weight
    site_of_loinc: dict[str, str]            # LOINC code -> site
    site_of_body_site: dict[str, str]        # SNOMED CT bodySite code -> site
    site_of_snomed: dict[str, str]           # SNOMED CT observable code of a temperature -> site
    unspecified_snomed: frozenset[str] = frozenset()   # SNOMED CT "body temperature", no site

    def is_temperature(self, concept: Any, loinc: Optional[tuple[str, ...]] = None) -> bool:
        """Whether an Observation's (or component's) ``code`` is a body temperature (LOINC or SNOMED CT);
        ``loinc``: its LOINC codes when already read (an Observation's ``Item.loinc``)."""
        return (not self.temperature.isdisjoint(loinc_codes(concept) if loinc is None else loinc)
                or bool(self.snomed_codes(concept))
                or any(as_str(c.get("system")) == SNOMED and as_str(c.get("code")) in self.unspecified_snomed
                       for c in codings(concept)))

    def snomed_codes(self, concept: Any) -> list[str]:
        """The SNOMED CT temperature codes of ``concept``."""
        return [code for c in codings(concept) if as_str(c.get("system")) == SNOMED
                and (code := as_str(c.get("code")) or "") in self.site_of_snomed]

    @property
    def all(self) -> tuple[str, ...]:
        """Every LOINC code of a temperature or a weight."""
        return tuple(sorted(self.temperature | self.weight))

    @property
    def snomed(self) -> tuple[str, ...]:
        """Every SNOMED CT code of a temperature."""
        return tuple(sorted(set(self.site_of_snomed) | self.unspecified_snomed))


def vital_codes(kb: KnowledgeBase) -> VitalCodes:
    """The vital-sign codes of ``kb`` (worked out once per knowledge base)."""
    found = kb.derived.get("vital_codes")
    if found is None:
        temp = kb.vitals["body_temperature"]
        sites = temp["sites"]
        by_loinc = {c: name for name, site in sites.items() for c in site.get("loinc", [])}
        found = kb.derived["vital_codes"] = VitalCodes(
            temperature=frozenset(temp.get("unspecified_loinc", [])) | frozenset(by_loinc),
            weight=frozenset(kb.vitals["body_weight"]["loinc"]), site_of_loinc=by_loinc,
            site_of_body_site={c: name for name, site in sites.items() for c in site.get("body_site", [])},
            site_of_snomed={c: name for name, site in sites.items() for c in site.get("snomed", [])},
            unspecified_snomed=frozenset(temp.get("unspecified_snomed", [])))
    return found


def _site(concept: Any, body_site: Any, codes: VitalCodes) -> Optional[str]:
    """Where a temperature was taken: from its code (LOINC, SNOMED CT), else from its bodySite."""
    for code in loinc_codes(concept):
        if code in codes.site_of_loinc:
            return codes.site_of_loinc[code]
    for code in codes.snomed_codes(concept):
        return codes.site_of_snomed[code]
    for c in codings(body_site):
        if as_str(c.get("system")) == SNOMED and as_str(c.get("code")) in codes.site_of_body_site:
            return codes.site_of_body_site[as_str(c.get("code")) or ""]
    return None


def is_temperature_observation(res: dict[str, Any], codes: VitalCodes, loinc: Optional[tuple[str, ...]] = None) -> bool:
    """A temperature Observation, or one with a temperature among its components (read by :func:`temperature`)."""
    return codes.is_temperature(res.get("code"), loinc) or any(codes.is_temperature(as_dict(c).get("code"))
                                                       for c in as_list(res.get("component")))


def _temperature_parts(mine: list[Item], codes: VitalCodes) -> Iterator[tuple[Item, dict[str, Any], Optional[str]]]:
    """(Observation, what holds the reading, site) of each temperature: an Observation coded as one, or a
    component of one (a vital-signs panel sent with its readings as components: status, time and
    bodySite are the Observation's)."""
    for item in mine:
        if item.type != "Observation":
            continue
        res = item.resource
        if codes.is_temperature(res.get("code"), item.loinc):
            yield item, res, _site(res.get("code"), res.get("bodySite"), codes)
            continue
        for component in as_list(res.get("component")):
            part = as_dict(component)
            if codes.is_temperature(part.get("code")):
                yield item, part, _site(part.get("code"), res.get("bodySite"), codes)


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


class Temperature(NamedTuple):
    celsius: Optional[float]
    site: Optional[str]                      # None: not said
    sustained: bool                          # a fever sustained over fever_sustained_hours (see _sustained)


def latest_temperature_day(mine: list[Item], kb: KnowledgeBase) -> Optional[date]:
    """The day of the latest body temperature with a result status (UTC), or None."""
    days = [utc_naive(when).date() for item, _, _ in _temperature_parts(mine, vital_codes(kb))
            if as_str(item.resource.get("status")) in RESULT_STATUSES and (when := item.own_time([])) is not None]
    return max(days, default=None)


def _to_celsius(value: float, unit: str) -> float:
    return registry().Quantity(value, _temperature_unit(unit)).to("degC").magnitude


def temperature(mine: list[Item], ref: Optional[date], warnings: list[str], kb: KnowledgeBase,
                unread: Optional[list[Problem]] = None, grace_days: int = 0) -> Temperature:
    """The highest body temperature (a code of rules/vitals.yaml), in Celsius, where it was taken, and
    whether a fever was sustained, of those not after the case date (``grace_days`` after it at most) and at most
    ``current_temperature_max_age_days``
    before it (an older one says nothing about fever now; without a case date, before the latest
    reading), and within ``fever_lookback_hours`` of the latest reading; a warning says so when it is not
    the latest."""
    max_age_days, lookback_hours = kb.value("current_temperature_max_age_days"), kb.value("fever_lookback_hours")
    codes = vital_codes(kb)
    later = old = 0
    readings: list[tuple[datetime, float, str]] = []
    for item, res, site in _temperature_parts(mine, codes):
        if as_str(item.resource.get("status")) not in RESULT_STATUSES:
            continue
        q = as_dict(res.get("valueQuantity"))
        value, unit = q.get("value"), quantity_unit(q)
        if _two_scales(q):       # 38.6 'Cel' coded [degF] had been 3.7 C, and the case refused naming its own field
            said = f"{as_str(q.get('unit'))!r} and its UCUM code {as_str(q.get('code'))!r}"
            warnings.append(f"{item.label}: body temperature {fmt(float(value))} has the unit {said}, two scales; "
                            f"not used.")
            if unread is not None:
                unread.append(Problem(item.loc, f"a body temperature of {fmt(float(value))} with the unit {said}, two "
                                                f"different scales: which one it is in cannot be told; not assessed"))
            continue
        text = as_str(res.get("valueString")) or ""
        if not is_number(value) and not q and (m := _TEMPERATURE_TEXT.match(text.translate(_DEGREE_SIGNS))):
            value = float(m.group(1).replace(",", "."))        # "38.9", "38,9", "38,9 °C", "101.2 F" sent as text
            unit = m.group(2)                                  # its scale read as a valueQuantity's unit is
        if is_number(value) and unit is None and (unit := bare_temperature_scale(float(value))) is not None:
            warnings.append(f"{item.label}: body temperature {fmt(float(value))} sent without a unit was read in "
                            f"{'Celsius' if unit == 'Cel' else 'Fahrenheit'}, the only scale a body temperature of "
                            f"{fmt(float(value))} can be on.")
        if not is_number(value) or unit is None:
            warnings.append(f"{item.label}: body temperature without a value and unit was not used.")
            if unread is not None:
                unread.append(Problem(item.loc, "a body temperature with no number or unit leukodx can read: not "
                                                "assessed (fever not judged from it)"))
            continue
        try:
            if unreadable(unit):
                raise ValueError("not a unit")
            ureg = registry()
            celsius = ureg.Quantity(float(value), _temperature_unit(unit)).to("degC").magnitude
        except Exception:
            warnings.append(f"{item.label}: body temperature unit {unit!r} was not understood.")
            if unread is not None:
                unread.append(Problem(item.loc, f"a body temperature in {unit!r}, a unit leukodx does not read: not "
                                                f"assessed (fever not judged from it)"))
            continue
        if not BODY_TEMPERATURE_C[0] <= celsius <= BODY_TEMPERATURE_C[1]:
            # set aside alone, before the highest is chosen: a Fahrenheit 101.5 charted as Celsius two hours after a
            # 38.6 C had been the highest, refused by the engine with every temperature, and the fever lost
            scale = bare_temperature_scale(float(value))
            other = (f"; if it was in {'Celsius' if scale == 'Cel' else 'Fahrenheit'} it would be "
                     f"{fmt(round(_to_celsius(float(value), scale), 1))} C" if scale and scale != unit else "")
            said = (f"a body temperature of {fmt(float(value))} {unit} ({fmt(round(float(celsius), 1))} C) is not a body "
                    f"temperature ({fmt(BODY_TEMPERATURE_C[0])}-{fmt(BODY_TEMPERATURE_C[1])} C){other}: not used")
            warnings.append(f"{item.label}: {said}.")
            if unread is not None:
                unread.append(Problem(item.loc, said))
            continue
        when = item.own_time(warnings)
        if when is None:
            continue
        if after(when, ref + timedelta(days=grace_days) if ref is not None else None):
            later += 1
            continue
        if ref is not None and (ref - utc_naive(when).date()).days > max_age_days:
            old += 1
            continue
        readings.append((utc_naive(when), round(float(celsius), 1), site or ""))
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
        return Temperature(None, None, False)
    # the highest of the window: one reading of 38.3 C or more is fever (IDSA), whatever came after it (an
    # antipyretic's 37.1 C four hours after 39.2 C had hidden a febrile neutropenia)
    latest = max(readings)
    recent = [r for r in readings if (latest[0] - r[0]).total_seconds() <= lookback_hours * 3600]
    highest = max(recent, key=lambda r: (r[1], r[0]))
    if highest != latest:
        warnings.append(f"The highest body temperature of the {lookback_hours:g} hours before the latest reading "
                        f"({highest[1]:g} C, {highest[0].isoformat(timespec='minutes')}) was used; the latest was "
                        f"{latest[1]:g} C ({latest[0].isoformat(timespec='minutes')}).")
    return Temperature(highest[1], highest[2] or None, _sustained(sorted(recent), kb, warnings))


def _sustained(readings: list[tuple[datetime, float, str]], kb: KnowledgeBase, warnings: list[str]) -> bool:
    """Whether readings of ``fever_sustained_c`` or more, with none below it between them, span
    ``fever_sustained_hours`` (IDSA: 38.0 C sustained over one hour is fever); said in a warning when so."""
    floor, hours = kb.value("fever_sustained_c"), kb.value("fever_sustained_hours")
    run_start: Optional[datetime] = None
    for when, celsius, _ in readings:
        if celsius < floor:
            run_start = None
            continue
        run_start = run_start or when
        if (when - run_start).total_seconds() >= hours * 3600:
            warnings.append(f"Body temperatures of {floor:g} C or more from {run_start.isoformat(timespec='minutes')} "
                            f"to {when.isoformat(timespec='minutes')}: a fever sustained over {hours:g} hour"
                            f"{'s' if hours != 1 else ''}.")
            return True
    return False


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
