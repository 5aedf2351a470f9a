"""Numbers in prose against the numbers the rules use (issue 14, item 8).

A rule's condition names its cut-offs as ``$name`` (rules/thresholds.yaml); its ``statement`` (and the
text of a ``warning`` or ``missing`` it concludes) is what a reviewer checks against the sources. The two
drift apart when a threshold is changed and the prose is not, or when a statement quotes a source's
number that the rule does not use ("ANC below 1.5" over a condition on ``$moderate_anc`` = 1.0). This
module finds such pairs; it reads the rule files as written, so that ``$name`` is still visible.

How a number in prose is matched to a threshold:

* Only numbers in a comparison count: ``below 1.0``, ``under``, ``less than``, ``within``, ``up to``,
  ``<``, ``≤`` (an upper bound); ``above``, ``over``, ``more than``, ``at least``, ``from``, ``>``, ``≥``,
  ``X or more`` (a lower bound); a range ``0.5-1.0`` / ``0.5 to 1.0`` gives a lower and an upper bound.
  Small number words (``two weeks``) are read as digits.
* A number must be in the threshold's dimension: a count (10^9/L, or per uL/mm3 divided by 1000) may be
  written without a unit; days may be written as days, weeks (x7), months (x30) or years (x365); every
  other unit (%, g/dL, fL, mg/kg/day, degC, year, ...) must be written with a number of that unit or none.
* A comparison is given to the nearest fact named before it in the same clause (ANC, WBC, Hb, platelets,
  MCV, lymphocytes, temperature, age); a comparison named for another fact is not a candidate.
* A threshold used in a condition is reported when the rule's text has candidate numbers for it in the
  same direction and no number in its dimension anywhere in the text equals its value (rounded to 6
  significant figures). A threshold the text never writes is not reported: prose need not repeat every
  number, and a source's own figures may stand beside the rule's.

The same test is applied to each threshold's own ``meaning`` (comparisons in either direction).

Call :func:`check_numbers` with the rules directory and the thresholds mapping; it returns one line per
finding, in the style of ``leukodx rules check``, and an empty list when prose and numbers agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from .kb_read import read_yaml

__all__ = ["check_numbers", "check_rule_numbers", "check_threshold_meanings", "comparisons", "mentions",
           "Comparison"]

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
_UPPER = ("below", "under", "less than", "lower than", "fewer than", "within", "up to", "at most",
          "no more than", "<=", "<", "≤")
_LOWER = ("above", "over", "more than", "greater than", "longer than", "older than", "later than", "at least",
          "exceeding", "exceeds", "beyond", "from", ">=", ">", "≥")
_LOWER_SUFFIX = ("or more", "or above", "or older", "or longer", "or greater", "and above", "and over")
_UPPER_SUFFIX = ("or less", "or fewer", "or below", "or under", "and below", "and under")

# unit spelling -> (dimension, factor to the dimension's base unit)
_UNITS: list[tuple[str, str, float]] = [
    (r"G/L|x ?10\^9/L|×10\^9/L|10\^9/L|x10\^9 per L|/nL", "count", 1.0),
    (r"(?:cells)?/(?:uL|µL|mm3|mm³|microL)|cells/(?:uL|µL|mm3)|per (?:uL|µL|mm3)", "count", 0.001),
    (r"g/dL", "g/dL", 1.0),
    (r"g/L", "g/dL", 0.1),
    (r"fL", "fL", 1.0),
    (r"%|percent", "%", 1.0),
    (r"mg/kg/day|mg/kg per day|mg/kg", "mg/kg/day", 1.0),
    (r"°C|C\b|degC", "degC", 1.0),
    (r"°F|F\b", "degF", 1.0),
    (r"ug/dL|µg/dL|mcg/dL", "ug/dL", 1.0),
    (r"pg/mL", "pg/mL", 1.0),
    (r"ng/mL", "ng/mL", 1.0),
    (r"hours?|h\b", "hour", 1.0),
    (r"days?", "day", 1.0),
    (r"weeks?", "day", 7.0),
    (r"months?", "day", 30.0),
    (r"years?(?:[- ]old)?", "year", 1.0),
]
_UNIT_RE = "|".join(f"(?:{u})" for u, _, _ in _UNITS)
# a threshold's unit (thresholds.yaml) -> dimension
_THRESHOLD_DIMENSION = {"10^9/L": "count", "day": "day", "year": "year", "%": "%", "g/dL": "g/dL", "fL": "fL",
                        "mg/kg/day": "mg/kg/day", "degC": "degC", "ug/dL": "ug/dL", "pg/mL": "pg/mL",
                        "ng/mL": "ng/mL", "hour": "hour", "1": "1"}
# fact names -> words that name them in prose (the clause a comparison belongs to)
_FACT_WORDS = {
    "anc": ("ANC", "neutrophil", "neutropenia", "agranulocytosis"),
    "wbc": ("WBC", "white count", "white cell", "leukopenia", "leukocytosis", "leucopenia"),
    "hemoglobin": ("Hb", "haemoglobin", "hemoglobin", "anaemia", "anemia"),
    "platelets": ("platelet", "thrombocytopenia"),
    "mcv": ("MCV", "macrocytosis"),
    "lymphocytes": ("lymphocyte", "lymphopenia"),
    "temperature_c": ("temperature", "fever"),
    "age_years": ("age ", "aged", "older adult", "years old", "-year-old"),
}
_FACT_ALIASES = {"anc_max": "anc"}

_NUM = r"(?<![\w.^/])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?![\w.^]|,\d{3})"
_UNIT_AFTER = rf"\s*({_UNIT_RE})?"


@dataclass(frozen=True)
class Comparison:
    """A number written in a comparison: its value in the base unit of its dimension (``None`` when
    written without a unit), whether it is an upper or lower bound, the fact named before it, and the
    text as written."""
    value: float
    dimension: Optional[str]
    bound: str            # "upper" or "lower"
    fact: Optional[str]
    text: str


def _number(s: str) -> float:
    return float(s.replace(",", ""))


def _unit(spelled: Optional[str]) -> tuple[Optional[str], float]:
    if not spelled:
        return None, 1.0
    for pattern, dim, factor in _UNITS:
        if re.fullmatch(pattern, spelled.strip(), flags=re.IGNORECASE if dim in ("day", "year", "hour") else 0):
            return dim, factor
    return None, 1.0


def _words_to_digits(text: str) -> str:
    return re.sub(r"\b(" + "|".join(_WORDS) + r")\b(?=\s+(?:weeks?|days?|months?|years?)\b)",
                  lambda m: str(_WORDS[m.group(1).lower()]), text, flags=re.IGNORECASE)


def _fact_before(text: str, pos: int) -> Optional[str]:
    """The fact named nearest before ``pos`` in the same clause (back to ``;``, ``:``, ``(`` or a full stop
    ending a sentence; the point of a decimal number is not one)."""
    start = max(max(text.rfind(c, 0, pos) for c in ";(:"), text.rfind(". ", 0, pos))
    clause = text[start + 1:pos]
    best, where = None, -1
    for fact, words in _FACT_WORDS.items():
        for w in words:
            i = clause.lower().rfind(w.lower()) if not w.isupper() else clause.rfind(w)
            if i > where:
                best, where = fact, i
    return best


def comparisons(text: str) -> list[Comparison]:
    """Every number written in a comparison in ``text`` (see the module docstring)."""
    text = _words_to_digits(" ".join(text.split()))
    out: list[Comparison] = []
    taken: set[tuple[int, str]] = set()

    def add(m: re.Match[str], num_group: int, unit_group: int, bound: str) -> None:
        pos = m.start(num_group)
        if (pos, bound) in taken:
            return
        taken.add((pos, bound))
        dim, factor = _unit(m.group(unit_group))
        out.append(Comparison(_number(m.group(num_group)) * factor, dim, bound, _fact_before(text, pos),
                              m.group(0).strip()))

    rng = re.compile(rf"{_NUM}{_UNIT_AFTER}\s*(?:-|–|to|and)\s*{_NUM}{_UNIT_AFTER}")
    for m in rng.finditer(text):
        dim, factor = _unit(m.group(2) or m.group(4))   # "19 to 60 days": the unit written once
        hi_dim, hi_factor = _unit(m.group(4))
        fact = _fact_before(text, m.start(1))
        out.append(Comparison(_number(m.group(1)) * factor, dim, "lower", fact, m.group(0).strip()))
        out.append(Comparison(_number(m.group(3)) * hi_factor, hi_dim, "upper", fact, m.group(0).strip()))
        taken.add((m.start(1), "lower"))
        taken.add((m.start(3), "upper"))
    for words, bound in ((_UPPER, "upper"), (_LOWER, "lower")):
        alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        for m in re.finditer(rf"(?:(?<=\W)|^)(?:{alts})\s*(?:an? |the )?{_NUM}{_UNIT_AFTER}", text, flags=re.IGNORECASE):
            add(m, 1, 2, bound)
    for words, bound in ((_LOWER_SUFFIX, "lower"), (_UPPER_SUFFIX, "upper")):
        alts = "|".join(re.escape(w) for w in words)
        for m in re.finditer(rf"{_NUM}{_UNIT_AFTER}\s*\)?\s*(?:{alts})\b", text, flags=re.IGNORECASE):
            add(m, 1, 2, bound)
    return out


def mentions(text: str) -> list[Comparison]:
    """Every number written in ``text`` with its unit, whether or not in a comparison (bound ``""``)."""
    text = _words_to_digits(" ".join(text.split()))
    out = []
    for m in re.finditer(rf"{_NUM}{_UNIT_AFTER}", text):
        dim, factor = _unit(m.group(2))
        out.append(Comparison(_number(m.group(1)) * factor, dim, "", _fact_before(text, m.start(1)),
                              m.group(0).strip()))
    return out


def _equal(a: float, b: float) -> bool:
    return float(f"{a:.6g}") == float(f"{b:.6g}")


def _candidates(comps: Iterable[Comparison], dim: str, value: float, bound: Optional[str],
                fact: Optional[str]) -> list[Comparison]:
    out = []
    for c in comps:
        if bound and c.bound != bound:
            continue
        if fact and c.fact and c.fact != fact:
            continue
        if c.dimension == dim or (c.dimension is None and dim == "count"):
            out.append(c)
        elif c.dimension is None and dim not in ("day", "year", "hour", "%"):
            out.append(c)
    return out


def _matches(c: Comparison, dim: str, value: float) -> bool:
    if _equal(c.value, value):
        return True
    return dim == "count" and c.dimension is None and _equal(c.value, value * 1000)


def _threshold_uses(when: Any) -> Iterator[tuple[str, str, str]]:
    """(fact, operator, threshold name) for every ``$name`` in a condition as written."""
    if isinstance(when, list):
        for item in when:
            yield from _threshold_uses(item)
        return
    if not isinstance(when, dict):
        return
    for key, value in when.items():
        if key in ("all", "any"):
            yield from _threshold_uses(value)
        elif key in ("exists", "missing"):
            continue
        elif isinstance(value, dict):
            for op, arg in value.items():
                if isinstance(arg, str) and arg.startswith("$"):
                    yield key, op, arg[1:]
        elif isinstance(value, str) and value.startswith("$"):
            yield key, "eq", value[1:]


def _texts(rule: dict[str, Any]) -> str:
    parts = [rule.get("statement") or ""]
    for c in rule.get("then") or []:
        if isinstance(c, dict):
            parts += [str(c[k]) for k in ("warning", "missing") if c.get(k)]
    return " ".join(parts)


def check_rule_numbers(rule_files: Iterable[tuple[str, dict[str, Any]]],
                       thresholds: dict[str, dict[str, Any]]) -> list[str]:
    """For each rule of each ``(file name, parsed family)``: every ``$name`` its condition uses whose
    value its text writes only differently (see the module docstring)."""
    problems: list[str] = []
    for fname, doc in rule_files:
        for rule in (doc or {}).get("rules", []) or []:
            if not isinstance(rule, dict):
                continue
            text = _texts(rule)
            comps = comparisons(text)
            said = comps + mentions(text)
            for fact, op, name in dict.fromkeys(_threshold_uses(rule.get("when"))):
                t = thresholds.get(name)
                if t is None or op not in ("lt", "le", "gt", "ge"):
                    continue
                dim = _THRESHOLD_DIMENSION.get(str(t.get("unit")), str(t.get("unit")))
                value = float(t["value"])
                bound = "upper" if op in ("lt", "le") else "lower"
                fact_key = _FACT_ALIASES.get(fact, fact)
                cands = _candidates(comps, dim, value, bound, fact_key if fact_key in _FACT_WORDS else None)
                fact_of = fact_key if fact_key in _FACT_WORDS else None
                if cands and not any(_matches(c, dim, value) for c in _candidates(said, dim, value, None, fact_of)):
                    written = "; ".join(dict.fromkeys(repr(c.text) for c in cands))
                    problems.append(f"{fname}: {rule.get('id')}: ${name} = {t['value']} {t.get('unit')} ({fact} {op}) "
                                    f"but the statement writes {written}")
    return problems


def check_threshold_meanings(thresholds: dict[str, dict[str, Any]]) -> list[str]:
    """Each threshold whose ``meaning`` writes comparison numbers in its dimension, none equal to its value."""
    problems = []
    for name, t in thresholds.items():
        if not isinstance(t, dict) or "value" not in t:
            continue
        dim = _THRESHOLD_DIMENSION.get(str(t.get("unit")), str(t.get("unit")))
        value = float(t["value"])
        meaning = str(t.get("meaning") or "")
        cands = _candidates(comparisons(meaning), dim, value, None, None)
        said = cands + mentions(meaning)
        if cands and not any(_matches(c, dim, value) for c in _candidates(said, dim, value, None, None)):
            written = "; ".join(dict.fromkeys(repr(c.text) for c in cands))
            problems.append(f"thresholds.yaml: {name} = {t['value']} {t.get('unit')} but its meaning writes {written}")
    return problems


def check_numbers(root: Path, thresholds: dict[str, dict[str, Any]]) -> list[str]:
    """Both checks over a rules directory: ``logic/*.yaml`` read as written, and the thresholds'
    meanings. ``thresholds`` is the ``thresholds`` mapping of thresholds.yaml (``KnowledgeBase.thresholds``)."""
    # read_yaml: the documents the loader parsed (from the knowledge-base cache when there is one); a
    # file that cannot be read is reported by the loader
    files = [(f"logic/{path.name}", read_yaml(path, [])) for path in sorted((root / "logic").glob("*.yaml"))]
    return check_rule_numbers(files, thresholds) + check_threshold_meanings(thresholds)
