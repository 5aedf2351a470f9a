"""A medication resource's dosage instructions -> the daily (or weekly) dose ``case.medications[].dose`` takes: a mass
per time, per body mass or per body surface area per time (pint reads the units, engine/units.py ``dose_rate``), the
takes of a timing (FHIR's repeat, its day names, HL7's timing codes), the sum of split doses, else the dosage text."""
from __future__ import annotations

from typing import Any, Optional, Union

from leukodx.engine.kb import KnowledgeBase, default as default_kb
from leukodx.engine.units import dose_rate, registry

from .datatypes import as_dict, as_list, as_str, codings, concept_text, fmt, is_number, quantity_unit

__all__ = ["order_dose"]


def order_dose(res: dict[str, Any], label: str = "", warnings: Optional[list[str]] = None,
               kb: Optional[KnowledgeBase] = None) -> Union[dict[str, Any], str, None]:
    """The daily dose of a medication resource as ``case.medications[].dose`` takes it (the module's
    docstring); None without dosage instructions. Why several could not be added up goes to ``warnings``. The
    knowledge base (the installed one by default) says which takes a week must be kept as said."""
    dosages = as_list(res.get("dosageInstruction")) or as_list(res.get("dosage"))
    if not dosages:
        return None
    kb = kb or default_kb()
    return _total_dose([_dose(as_dict(d), kb) for d in dosages], label, [] if warnings is None else warnings)


def _dose(dosage: dict[str, Any], kb: KnowledgeBase) -> Union[dict[str, Any], str, None]:
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
    timing = as_dict(dosage.get("timing"))
    per_week = _takes_per_week(timing, kb.value("divided_weekly_dose_max_days"))
    per_m2 = bool(is_number(value) and unit and (per_take := dose_rate(f"{unit}/d")) and per_take.per_m2)
    if is_number(value) and unit and per_week and (1 if per_m2 else kb.value("weekly_drug_max_takes_a_week")) \
            < per_week < 7:
        # every other day, 5 days a week: said with how often, which a dose per week would lose and the dosage's text
        # may not say ("10 mg"): methotrexate every other day had given no card; a dose per m2 twice or three times a
        # week too (mercaptopurine 10 mg/m2 on 3 days a week, CPIC's dose for a TPMT poor metabolizer, is not 30 once)
        return f"{fmt(value)} {unit} {fmt(per_week)} times a week"
    per_period = _per_period(value, unit, timing, per_week)
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
_TIMING_CODES = {"QD": 7, "AM": 7, "PM": 7, "BED": 7, "BID": 14, "TID": 21, "QID": 28, "QOD": 3.5, "Q2D": 3.5, "WK": 1,
                 "Q48H": 3.5,                 # not HL7's, but sent by EHRs for every other day
                 "Q1H": 168, "Q2H": 84, "Q3H": 56, "Q4H": 42, "Q6H": 28, "Q8H": 21}


def _takes_per_week(timing: dict[str, Any], divided_days: float) -> Optional[float]:
    """How many takes a week a timing gives: ``frequency`` per ``period`` ``periodUnit`` (pint converts the
    period), on each ``dayOfWeek`` when named (1 per 1 d on Monday is once a week), else its ``code``; a ``count`` of
    takes all within ``divided_days`` is that many (a weekly dose divided)."""
    repeat = as_dict(timing.get("repeat"))
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), as_str(repeat.get("periodUnit"))
    days = [d for d in as_list(repeat.get("dayOfWeek")) if isinstance(d, str)]
    if is_number(frequency) and is_number(period) and period > 0 and frequency > 0 and unit in _PERIOD_UNITS:
        span = registry().Quantity(float(period), unit).to("day").magnitude
        takes = float(frequency) * len(days) if days and span <= 1 else float(frequency) * 7 / span
        count = repeat.get("count")         # takes in all (2.5 mg every 12 hours, 3 times): a weekly dose divided,
        if is_number(count) and 0 < count <= takes and count * span <= divided_days:     # not a daily one
            return float(count)
        return takes
    if days:
        return float(len(days))
    when = {w for w in as_list(repeat.get("when")) if isinstance(w, str)}
    if when and not is_number(frequency) and not is_number(period) and not unit:   # "every morning": each day, at each
        return 7.0 * len(when)
    code = next((as_str(c.get("code")) for c in codings(timing.get("code")) if as_str(c.get("code"))), None)
    return _TIMING_CODES.get((code or "").upper())


def _per_period(value: Any, unit: Optional[str], timing: dict[str, Any],
                per_week: Optional[float]) -> Union[dict[str, Any], str, None]:
    """A dose per take (``doseQuantity`` 50 mg) with its timing as a dose per day when it is taken daily or more
    often (2 per 1 d: {value: 100, unit: mg/d}) and per week when less often (1 per 7 d, or 1 per 1 wk: {value: 15,
    unit: mg/wk}), for the dose rules (pint converts it to mg/day) and the engine's check of how often a weekly
    drug is taken; a dose per take that is not a mass (4 tablets) as a text that says how often ("4 {tbl} 1 time a
    day"); None without a value, a unit or a timing (``per_week``: its takes a week)."""
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
