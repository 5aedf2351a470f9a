"""A medication's dose as the dose rules read it: mg/kg/day and mg/day, and whether it is taken daily.

A dose is ``{value, unit}`` with a unit of mass per time (``mg/day``, ``mg/wk``) or of mass per body mass
per time (``mg/kg/day``), or a text as prescriptions write it: "150 mg/day", or a mass per take with how
often it is taken ("75mg OD", "150 mg twice daily", "2 g every 4 hours", "15 mg once weekly"), the mass of one
tablet when the text counts tablets ("50 mg tablets, take 6 daily" is 300 mg a day). Every
conversion goes through pint (engine/units.py); this module only reads how many takes a day a text says
(the sig abbreviations below). A dose that cannot be read is given a reason, never ignored silently.
"""
from __future__ import annotations

import re
from typing import Optional, Union

from .case import Dose
from .units import DoseRate, dose_rate

__all__ = ["dose_mg_kg_day", "dose_mg_m2_day", "dosed_daily", "taken_more_often_than", "takes_per_day"]

_DECIMAL_COMMA = re.compile(r"(\d),(\d{1,2})(?!\d)")
_THOUSANDS = re.compile(r"(\d),(\d{3})(?!\d)")
_DOSE_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Zµμ]+(?:\s*/\s*[a-zA-Z0-9]+)*)")

# How often a dose text says a dose is taken, in takes per day: the frequency written first decides ("15 mg once
# weekly, do not take daily" is weekly; "300 mg daily, FBC every 2 weeks" daily), the table's order where two
# start at one place ("twice weekly" is not "twice daily"; "on Mondays" is once a week, "Mon/Wed/Fri" three times).
# The abbreviations are those prescriptions use: od, qd, mane, nocte, om once daily; bd/bid, tds/tid, qds/qid two
# to four times; qNh and "N-hourly" every N hours; qod every other day; qhs at bedtime. A duration ("for 2 weeks",
# "x 10 days") says how long, not how often. Saturday and Sunday only in full ("avoid sun" is no weekday).
_WEEKDAY = r"(?:(?:mon|tues?|wed(?:nes)?|thu(?:rs?)?|fri)(?:day)?s?|(?:satur|sun)days?)"
_N = r"(\d+(?:\.\d+)?|one|two|three|four|five|six|seven|eight|twelve|twenty-four)"
_DAY_ORDER = ["mo", "tu", "we", "th", "fr", "sa", "su"]
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "twelve": 12,
            "twenty-four": 24}
# How many tablets (capsules ...) a take is, when the mass is the strength of one: "50 mg tablets, take 6 daily",
# "2 tabs of 50 mg bd", "two 50 mg tablets daily", "6 x 50 mg", "2.5 mg x 6 weekly" (six 2.5 mg tablets). A range
# ("1-2 tablets") is no count: the dose is then not read, and says so.
_FORM = r"(?:tablets?|tabs?|capsules?|caps?|pills?)"
_MASS = r"\d+(?:\.\d+)?\s*(?:mg|g|mcg|µg|μg|micrograms?|milligrams?)\b"
_NOT_A_COUNT = (r"(?!\s*(?:mg|g|mcg|µg|μg|micrograms?|milligrams?|ml|x|times|hours?|hrs?|h|days?|d|weeks?|wks?"
                r"|months?|doses?|to|or|-)\b)")
_COUNTS = [re.compile(p, re.I) for p in (
    rf"\b{_N}(?![\d.])\s*(?:x\s*)?(?:{_MASS}\s*)?{_FORM}\b",          # 6 tablets; two 50 mg tablets; 3 x 50 mg tabs
    rf"\b{_N}(?![\d.])\s*[x×]\s*(?={_MASS})",                          # 6 x 50 mg
    rf"(?<=mg|cg| g)\s*(?:{_FORM}\s*)?[x×]\s*{_N}\b{_NOT_A_COUNT}",   # 2.5 mg x 6 (not: x 10 days)
    rf"\btake\s+{_N}\b{_NOT_A_COUNT}",                         # (50 mg tablets,) take 6 daily
)]
_STRENGTH_AFTER = re.compile(rf"\s*(?:{_FORM}\b|each\b|per {_FORM}|/\s*{_FORM}|[x×]\s*{_N})", re.I)
_STRENGTH_BEFORE = re.compile(rf"(?:{_FORM}\s*(?:of|\(|,)?|[x×])\s*$", re.I)
_RANGE = re.compile(rf"\b\d+\s*(?:-|to|or)\s*\d+\s*{_FORM}|\btake\s+\d+\s*(?:-|to|or)\s*\d+\b", re.I)

_TAKES: list[tuple[re.Pattern[str], Union[float, str]]] = [
    # a weekly dose divided into takes hours apart ("2.5 mg every 12 hours for 3 doses once a week", "q12h x3 weekly"):
    # its takes a week, not every N hours
    (re.compile(rf"\b(?:every|q\.?) ?\d+ ?(?:hours?|hrs?|h)\b[^.;]{{0,30}}?(?:\bx ?|\bfor |\b){_N} ?(?:doses?|times)?"
                rf"[^.;]{{0,30}}?\b(?:weekly|(?:once )?(?:a|per|each|every) week)\b", re.I), "per week"),
    (re.compile(rf"\b{_N} ?(?:x|times) ?(?:/ ?|a |per |each )?week|\btwice (?:a |per |each )?week(?:ly)?\b"
                rf"|\b{_N} days? (?:a|per|each) week\b", re.I), "per week"),      # "4x/week", "5 days a week"
    (re.compile(rf"\b({_WEEKDAY})\s*(?:-|–|to|through|thru)\s*({_WEEKDAY})\b", re.I), "weekday range"),   # Mon-Fri
    (re.compile(r"\bevery other week\b|\bfortnightly\b|\balternate weeks\b", re.I), 1 / 14),
    (re.compile(rf"\bevery {_N} weeks?\b|\bq ?(\d+) ?wks?\b", re.I), "every N weeks"),
    (re.compile(r"\bweekly\b|\b(?:once )?(?:a|per|each|every) week\b|\bq ?wk?\b|/ ?w(?:ee)?k\b|\bevery 7 days\b"
                r"|\bq ?7 ?d\b", re.I), 1 / 7),
    (re.compile(rf"\b{_WEEKDAY}\b(?:\s*(?:[/,&+]|and)\s*{_WEEKDAY}\b)*", re.I), "weekdays"),
    (re.compile(r"\bevery (?:other|second) day\b|\balternate days\b|\bq\.?o\.?d\b|\bevery 48 ?h|\bq ?2 ?d\b", re.I),
     1 / 2),
    (re.compile(rf"\bevery {_N} days\b", re.I), "every N days"),
    (re.compile(rf"\b(?:every|q\.?) ?{_N}\.? ?(?:hours?|hrs?|h)\b\.?|\b{_N}[ -]?hourly\b|/ ?{_N} ?h\b", re.I),
     "every N hours"),
    (re.compile(rf"\b{_N} ?(?:x|times) (?:a |per |each )?(?:day|daily)\b|\b{_N} ?x (?:t[aä]glich|tgl)", re.I),
     "per day"),
    (re.compile(r"\bq\.?i\.?d\b|\bq\.?d\.?s\b", re.I), 4),
    (re.compile(r"\bt\.?i\.?d\b|\bt\.?d\.?s\b", re.I), 3),
    (re.compile(r"\bb\.?i\.?d\b|\bb\.?d\b|\btwice (?:a |per )?day\b|\btwice daily\b", re.I), 2),
    (re.compile(r"\bdaily\b|\b(?:once )?(?:a|per|each|every) day\b|\bo\.?d\b|\bq\.? ?d(?:ay)?\b|\bnightly\b"
                r"|\bq ?(?:am|pm|hs)\b|\b(?:every|each|in the) (?:morning|evening|night)\b|\bat (?:night|bedtime)\b"
                r"|\bmane\b|\bnocte\b|\bo\.?m\b|\b1-0-0\b|\b0-0-1\b|/ ?d(?:ay)?\b", re.I), 1),
]


def _number(text: str) -> float:
    return float(_NUMBERS.get(text.lower(), text))


def _tablets_per_take(text: str) -> Optional[float]:
    """How many tablets (capsules ...) a take is, when the text says (None: it does not)."""
    for pattern in _COUNTS:
        m = pattern.search(text)
        if m:
            return _number(next(g for g in m.groups() if g))
    return None


def _per_take(text: str) -> tuple[Optional[tuple[float, str]], Optional[str]]:
    """The mass a take is: (value, unit), or why it cannot be told. The first mass is the dose, times the tablets a
    take is when the text counts them and that mass is one tablet's ("50 mg tablets", "6 x 50 mg", "6 tablets (50
    mg)", "50 mg each"); a second mass must then be the first over the count ("150 mg (3 x 50 mg)")."""
    if _RANGE.search(text):
        return None, "gives a range of tablets"
    masses = [m for m in _DOSE_TEXT.finditer(text) if not re.fullmatch(rf"{_FORM}|x|times", m.group(2), re.I)]
    if not masses:
        return None, None
    first = masses[0]
    value, unit = float(first.group(1)), first.group(2)
    count = _tablets_per_take(text)
    if count is None or dose_rate(unit) is not None:     # no count, or the dose is already a rate (mg/day)
        return (value, unit), None
    if len(masses) > 1 and masses[1].group(2) == unit:
        if abs(value - count * float(masses[1].group(1))) <= 1e-9 * value:
            return (value, unit), None
        return None, f"gives {value:g} {unit} and {count:g} x {float(masses[1].group(1)):g} {unit}, which disagree"
    if _STRENGTH_AFTER.match(text, first.end()) or _STRENGTH_BEFORE.search(text, 0, first.start()):
        return (value * count, unit), None
    return None, (f"gives {value:g} {unit} and {count:g} tablets; whether {value:g} {unit} is one tablet or the take "
                  f"cannot be told")


def takes_per_day(text: str) -> Optional[float]:
    """How many takes a day a dose text says (1/7 for weekly, 2 for twice daily); None when it says none."""
    found = [(m.start(), i, m, takes) for i, (pattern, takes) in enumerate(_TAKES) if (m := pattern.search(text))]
    for _, _, m, takes in sorted(found, key=lambda f: (f[0], f[1]))[:1]:
        if isinstance(takes, (int, float)):
            return takes
        if takes == "weekdays":                    # "on Mondays": once a week; "Mon/Wed/Fri": three times
            return len(re.findall(rf"\b{_WEEKDAY}\b", m.group(0), re.I)) / 7
        if takes == "weekday range":               # "Mon-Fri": five days; "Sat to Mon": three
            first, last = (_DAY_ORDER.index(d[:2].lower()) for d in m.groups())
            return ((last - first) % 7 + 1) / 7
        n = next((_number(g) for g in m.groups() if g), 2.0)     # "twice a week": no number, two
        if n <= 0:
            return None
        return {"per week": n / 7, "every N weeks": 1 / (7 * n), "every N days": 1 / n, "every N hours": 24 / n,
                "per day": n}[takes]
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


def takes_a_week(dose: Union[Dose, str, None]) -> Optional[float]:
    """How many times a week a dose is taken: a text's frequency ("three times a week", "Mon/Wed/Fri"), 7 for a dose
    per day or shorter; None when it says none (a dose per week says how much, not how often)."""
    if isinstance(dose, str):
        takes = takes_per_day(dose)
        return None if takes is None else takes * 7
    return 7.0 if dosed_daily(dose) else None


def taken_more_often_than(dose: Union[Dose, str, None], takes_a_week: float) -> bool:
    """The dose is taken more than ``takes_a_week`` times a week (fewer than 7): a unit per day or shorter (mg/day,
    mg/kg/day, mg/h; not mg/wk, which says nothing of how often), or a text that says how often ("every other day",
    "5 times a week", "daily"). No dose, or one that says neither: False."""
    if dose is None:
        return False
    if isinstance(dose, str):
        takes = takes_per_day(dose)
        return takes is not None and takes * 7 > takes_a_week + 1e-9
    return dosed_daily(dose)


def _daily_rate(dose: Union[Dose, str]) -> tuple[Optional[float], Optional[DoseRate], str, Optional[str]]:
    """(value, rate, the dose as shown, why not): a dose with a unit of mass per time (per body mass or surface
    area or not), or a text giving a mass per take and how often it is taken, read as a value in ``rate``'s
    unit; the reason when it cannot be read."""
    shown = dose if isinstance(dose, str) else f"{dose.value:g} {dose.unit}"
    takes = None
    if isinstance(dose, str):
        dose = _THOUSANDS.sub(r"\1\2", _DECIMAL_COMMA.sub(r"\1.\2", dose))   # "2,5 mg" is 2.5 mg; "1,000 mg" 1000
        mass, problem = _per_take(dose)
        if mass is None:
            return None, None, shown, f"the dose {shown!r} {problem or 'has no number and unit leukodx can read'}"
        value, unit = mass
        takes = takes_per_day(dose)
    else:
        value, unit = dose.value, dose.unit
    rate = dose_rate(unit)
    if rate is None and takes is not None:     # a mass per take, times the takes a day: 75 mg OD is 75 mg/d
        rate, value = dose_rate(f"{unit}/d"), value * takes
    if rate is None:
        return None, None, shown, (
            f"the dose {shown!r} is not a mass per day (mg/day), per kg per day (mg/kg/day) or per take with how "
            f"often it is taken (75 mg twice daily), which the dose rules read (units of activity are not converted)")
    return value, rate, shown, None


def dose_mg_kg_day(dose: Union[Dose, str, None], weight_kg: Optional[float]
                   ) -> tuple[Optional[float], Optional[float], Optional[str]]:
    """(mg/kg/day, mg/day, why not) from a dose with a unit of mass per time (mg/kg/day needs the weight), of
    mass per body mass per time (mg/day then needs it), or a text giving a mass per take and how often it is
    taken. The reason is given when a dose was sent but cannot be read, so that it is never ignored silently;
    a dose per m2 of body surface area is not converted (no height: :func:`dose_mg_m2_day` reads it)."""
    if dose is None:
        return None, None, None
    value, rate, shown, why = _daily_rate(dose)
    if rate is None or value is None:
        return None, None, why
    if rate.per_m2:
        return None, None, (f"the dose {shown!r} is per m2 of body surface area and cannot be converted to mg/kg/day "
                            f"without the patient's height")
    if rate.per_kg:
        return value * rate.factor, (value * rate.factor * weight_kg if weight_kg else None), None
    per_day = value * rate.factor
    if not weight_kg:
        return None, per_day, f"the dose {shown!r} needs the patient's weight to give mg/kg/day"
    return per_day / weight_kg, per_day, None


def dose_mg_m2_day(dose: Union[Dose, str, None]) -> Optional[float]:
    """mg/m2/day from a dose per body surface area (75 mg/m2/day, or 75 mg/m2 once daily); None for any other."""
    if dose is None:
        return None
    value, rate, _, _ = _daily_rate(dose)
    return value * rate.factor if rate is not None and value is not None and rate.per_m2 else None
