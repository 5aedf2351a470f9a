"""A medication's dose as the dose rules read it: mg/kg/day and mg/day, and whether it is taken daily.

A dose is ``{value, unit}`` with a unit of mass per time (``mg/day``, ``mg/wk``) or of mass per body mass
per time (``mg/kg/day``), or a text as prescriptions write it: "150 mg/day", or a mass per take with how
often it is taken ("75mg OD", "150 mg twice daily", "2 g every 4 hours", "15 mg once weekly"). Every
conversion goes through pint (engine/units.py); this module only reads how many takes a day a text says
(the sig abbreviations below). A dose that cannot be read is given a reason, never ignored silently.
"""
from __future__ import annotations

import re
from typing import Optional, Union

from .case import Dose
from .units import dose_rate

__all__ = ["dose_mg_kg_day", "dosed_daily", "takes_per_day"]

_DOSE_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Zµμ]+(?:\s*/\s*[a-zA-Z0-9]+)*)")

# How often a dose text says a dose is taken, in takes per day; the first that matches decides, so a week is
# read before a day ("15 mg once weekly, do not take daily" is weekly; "twice weekly" is not "twice daily").
# The abbreviations are the Latin ones prescriptions use (od/qd once daily, bid/tid/qid two to four times
# daily, qNh every N hours, qod every other day, qhs at bedtime).
# A duration ("for 2 weeks", "x 10 days") says how long, not how often: only "every N weeks" and the words of a
# frequency count.
_TAKES: list[tuple[re.Pattern[str], Optional[float]]] = [
    (re.compile(r"\b(?:twice|two times|2 ?x) (?:a |per |each )?week|\btwice weekly\b", re.I), 2 / 7),
    (re.compile(r"\bevery (\d+) weeks?\b|\bq ?(\d+) ?wks?\b", re.I), None),                    # 1 / (7 N)
    (re.compile(r"\bweekly\b|\b(?:once )?(?:a|per|each|every) week\b|\bq ?wk\b|/ ?w(?:ee)?k\b", re.I), 1 / 7),
    (re.compile(r"\bevery other day\b|\balternate days\b|\bq\.?o\.?d\b", re.I), 1 / 2),
    (re.compile(r"\b(?:every|q) ?(\d+(?:\.\d+)?) ?(?:hours?|hrs?|h)\b", re.I), None),      # 24 / N
    (re.compile(r"\bq\.?i\.?d\b|\bfour times (?:a |per )?day\b|\bfour times daily\b", re.I), 4),
    (re.compile(r"\bt\.?i\.?d\b|\bthree times (?:a |per )?day\b|\bthree times daily\b", re.I), 3),
    (re.compile(r"\bb\.?i\.?d\b|\b(?:twice|two times) (?:a |per )?day\b|\btwice daily\b", re.I), 2),
    (re.compile(r"\bdaily\b|\b(?:once )?(?:a|per|each|every) day\b|\bo\.?d\b|\bq\.?d\b|\bnightly\b|\bq ?(?:am|pm|hs)\b"
                r"|\bevery (?:morning|evening|night)\b|\bat (?:night|bedtime)\b|/ ?d(?:ay)?\b", re.I), 1),
]


def takes_per_day(text: str) -> Optional[float]:
    """How many takes a day a dose text says (1/7 for weekly, 2 for twice daily); None when it says none."""
    for pattern, takes in _TAKES:
        m = pattern.search(text)
        if m:
            if takes is None:                      # every N weeks, every N hours
                n = float(next(g for g in m.groups() if g))
                return None if n <= 0 else (1 / (7 * n) if "w" in m.group(0).lower() else 24 / n)
            return takes
    return None


def dosed_daily(dose: Union[Dose, str, None]) -> bool:
    """The dose is given every day or more often: a unit per day or shorter (mg/day, mg/kg/day, mg/h; not
    mg/wk), or a text that says once a day or more often. No dose, or one that says neither: False."""
    if dose is None:
        return False
    if isinstance(dose, str):
        takes = takes_per_day(dose)
        return takes is not None and takes >= 1
    rate = dose_rate(dose.unit)
    return rate is not None and rate.period_days <= 1


def dose_mg_kg_day(dose: Union[Dose, str, None], weight_kg: Optional[float]
                   ) -> tuple[Optional[float], Optional[float], Optional[str]]:
    """(mg/kg/day, mg/day, why not) from a dose with a unit of mass per time (mg/kg/day needs the weight), of
    mass per body mass per time (mg/day then needs it), or a text giving a mass per take and how often it is
    taken. The reason is given when a dose was sent but cannot be read, so that it is never ignored silently."""
    if dose is None:
        return None, None, None
    shown = dose if isinstance(dose, str) else f"{dose.value:g} {dose.unit}"
    takes = None
    if isinstance(dose, str):
        m = _DOSE_TEXT.search(dose)
        if not m:
            return None, None, f"the dose {shown!r} has no number and unit leukodx can read"
        value, unit = float(m.group(1)), m.group(2)
        takes = takes_per_day(dose)
    else:
        value, unit = dose.value, dose.unit
    rate = dose_rate(unit)
    if rate is None and takes is not None:     # a mass per take, times the takes a day: 75 mg OD is 75 mg/d
        rate, value = dose_rate(f"{unit}/d"), value * takes
    if rate is None:
        return None, None, (f"the dose {shown!r} is not a mass per day (mg/day), per kg per day (mg/kg/day) or per "
                            f"take with how often it is taken (75 mg twice daily), which the dose rules read (units "
                            f"of activity are not converted)")
    if rate.per_kg:
        return value * rate.factor, (value * rate.factor * weight_kg if weight_kg else None), None
    per_day = value * rate.factor
    if not weight_kg:
        return None, per_day, f"the dose {shown!r} needs the patient's weight to give mg/kg/day"
    return per_day / weight_kg, per_day, None
