"""Lab Observations -> ``case.labs``.

An Observation is a lab value when its code has a LOINC coding (system ``http://loinc.org`` or no
system) that the knowledge base knows (``rules/labs.yaml``) and its status is final, amended,
corrected or preliminary. The case gets the code (``loinc``, not the test), the value and the unit
as the Observation gives them: the engine resolves the code to its test and converts the value.
The mapping reads the knowledge base's LOINC table only to choose the Observations, to name their
test in warnings and to keep one value per test and time; the engine's factors only to choose
which spelling of the unit to send. What it decides is format:

* the unit is ``valueQuantity.code`` when its system is UCUM (however spelled), else ``valueQuantity.unit``
  (else a code with no system); when unit and code both exist and mean different units for the test, the
  value is left out, never read in either (:mod:`.lab_units`);
* a ``comparator`` (``<0.5``) is sent with the bound: the engine judges a count below ``<`` 0.5 as below
  it (severe, not moderate), and one above ``>`` a bound as the bound; a warning says so;
* the time is ``effectiveDateTime``, ``effectiveInstant``, ``effectivePeriod.start``, ``effectivePeriod.end`` or
  ``issued``, else the time of the DiagnosticReport (``result``) or panel Observation (``hasMember``) listing it;
* the first normal ``referenceRange``'s ``low`` (one for the patient's age first) -> ``lln``, with ``lln_unit``
  when its unit is not the value's (the engine converts it); left out with a warning when the engine does not
  read that unit;
* the draw (``specimen``) is the Observation's specimen, else its report or panel; the values of
  reports and panels (and of none) collected at one time are one draw, whatever report holds them;
* of two values of one test at the same time one is kept: the corrected/amended over the final over
  the preliminary, else the later ``issued``, else the later ``meta.lastUpdated``, else the first
  (:mod:`.duplicates`; the warning says which and why, and whether the two values conflict).

Observations of other codes are counted in one warning (body weight and temperature are read by
:mod:`.vitals`); a known test with an unusable status, no value or no unit is skipped with a
warning and a problem naming the Observation.
"""
from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Optional

from leukodx.engine.errors import Problem
from leukodx.engine.kb import KnowledgeBase
from leukodx.engine.timeutil import utc_date, utc_naive

from .components import lab_components
from .datatypes import (DECIMAL_TEXT, When, as_dict, as_list, as_str, code_label, codes, concept_text, fmt,
                        is_number, not_a_result, partial_first_day, quantity_unit)
from .lab_values import LabValue, keep_one
from .lab_units import UnitConflict, factor_to_test_unit, readable_unit, value_unit
from .unread import UNNAMED_COUNT, absent_value_reason, has_value, named_count_left_out, not_the_anc
from .patient import holds_age
from . import panels
from .resources import Index, Item, other_focus, unreadable_time
from .vitals import Weight, body_weight, is_temperature_observation, vital_codes

__all__ = ["LabValue", "map_observations"]

COMPARATORS = ("<", "<=", ">", ">=")


def map_observations(kb: KnowledgeBase, items: list[Item], mine: list[Item], index: Index, warnings: list[str],
                     born: Optional[date] = None) -> tuple[list[LabValue], list[Weight], list[Problem]]:
    """(lab values, body weights, skipped lab Observations) of the patient's Observations ``mine``;
    ``items`` (all resources) give the times and draws of reports and panels; ``born`` (the patient's birth
    date) chooses an age-specific reference range."""
    inherited = panels.inherited_times(items, index)
    withdrawn = panels.withdrawn(items, index)
    draws, specimens = panels.draws(items, index)
    labs: list[LabValue] = []
    weights: list[Weight] = []
    skipped: list[Problem] = []
    ignored: dict[str, int] = {}
    ignored_parts: dict[str, int] = {}       # the codes of components beside a lab component
    first_at: dict[tuple[str, Optional[datetime]], int] = {}    # (test, time) -> its value's place in labs
    borrowed: list[Item] = []
    vitals = vital_codes(kb)
    for item in mine:
        if item.type != "Observation":
            continue
        res = item.resource
        if id(res) in withdrawn:
            gone = withdrawn[id(res)]
            why = (f"another version of it ({gone.label}) was entered in error" if gone.resource.get("id") ==
                   res.get("id") and gone.type == "Observation" else f"it is part of {gone.label}, which was "
                   f"{'cancelled' if as_str(gone.resource.get('status')) == 'cancelled' else 'entered in error'}")
            warnings.append(f"{item.label}: {why}; skipped.")
            skipped.append(Problem(item.loc, why))
            continue
        loinc = item.loinc
        code = _code_for_unit(kb, res, [c for c in loinc if c in kb.loinc])
        parts = lab_components(kb, item, ignored_parts, skipped) if "component" in res else []
        if code is None and not parts:
            if any(c in vitals.weight for c in loinc):
                body_weight(item, weights, warnings)
            # a genotype or a temperature is read elsewhere; any other code is named as not used
            elif not any(c in kb.pgx_codes for c in loinc) and not is_temperature_observation(res, vitals, loinc):
                key = code_label(res.get("code"), loinc)
                ignored[key] = ignored.get(key, 0) + 1
                left_out = named_count_left_out(item.loc, res, key) or _unnamed_count(kb, item, loinc, key)
                if left_out is not None:                     # a count coded otherwise, or coded only otherwise
                    skipped.append(left_out)
            continue
        if code is not None and (not parts or has_value(res)):   # (a value only in components: read those)
            parts.insert(0, (item, code))
        time = item.own_time(warnings)
        if time is None and id(res) in inherited:
            time, parent = inherited[id(res)]
            borrowed.append(parent)
        time = time if time is not None else partial_first_day(res, item.label, warnings)
        why = other_focus(item) or (unreadable_time(item) if time is None else None)
        if why:                # someone else's value (a newborn's ANC), or a time sent that cannot be read
            skipped += [Problem(part.loc, f"{kb.loinc[c]} (LOINC {c}): {why}") for part, c in parts]
            continue
        for part, part_code in parts:
            test = kb.loinc[part_code]
            lab = _lab_value(part, test, part_code, kb.tests[test], time, warnings, skipped, born)
            if lab is None:
                continue
            lab.specimen = draws.get(id(res))
            lab.utc = utc_naive(time) if time is not None else None
            keep_one(lab, first_at, labs, warnings, skipped, kb.tests[test])
    _one_draw_per_time(labs, specimens, warnings)
    if borrowed:
        parents = ", ".join(dict.fromkeys(p.label for p in borrowed))
        n = len(borrowed)
        warnings.append(f"{n} lab value{'s' if n != 1 else ''} had no time of {'their' if n != 1 else 'its'} own and "
                        f"took the time of the report or panel listing {'them' if n != 1 else 'it'}: {parents}.")
    for counts, what in ((ignored, "Observation"), (ignored_parts, "component")):
        if counts:
            n = sum(counts.values())
            shown = ", ".join(list(counts)[:8]) + (", ..." if len(counts) > 8 else "")
            warnings.append(f"{n} {what}{'s' if n != 1 else ''} of codes leukodx does not use "
                            f"{'were' if n != 1 else 'was'} ignored ({shown}).")
    return labs, weights, skipped


def _code_for_unit(kb: KnowledgeBase, res: dict[str, Any], known: list[str]) -> Optional[str]:
    """Of the LOINC codes leukodx reads, the first whose test the value's unit fits (an Observation coded both 770-8,
    neutrophils %, and 751-8, the ANC, with 0.3 10*9/L had been read as a percentage and refused); the first, when
    none or one is known or the unit fits none."""
    if len(known) < 2:
        return known[0] if known else None
    unit = quantity_unit(as_dict(res.get("valueQuantity")))
    fits = [c for c in known if unit and factor_to_test_unit(unit, kb.tests[kb.loinc[c]]) is not None]
    return (fits or known)[0]


def _unnamed_count(kb: KnowledgeBase, item: Item, loinc: list[str], key: str) -> Optional[Problem]:
    """A value in a blood-cell-count unit (10*9/L, /uL ...) coded only in another system (SNOMED CT, a local code) and
    named nowhere: it may be the ANC (an ANC of 0.3 coded SNOMED 30630007 alone, beside a normal WBC, had given no
    card). A LOINC code leukodx does not read is another test's (a CD4 count): not named."""
    res = item.resource
    q = as_dict(res.get("valueQuantity"))
    unit, named = quantity_unit(q), concept_text(res.get("code"))
    if loinc or (named and not_the_anc(named)) or not is_number(q.get("value")) or not unit or "{" in unit \
            or not_a_result(as_str(res.get("status"))) or other_focus(item) \
            or factor_to_test_unit(unit, kb.tests["anc"]) is None:   # ({copies}/mL: a viral load)
        return None
    return Problem(item.loc, f"a blood cell count ({fmt(q['value'])} {unit}) coded only {key}, with no LOINC code or "
                             f"name leukodx reads: {UNNAMED_COUNT}; not used")


def _lab_value(item: Item, test: str, code: str, spec: dict[str, Any], time: Optional[When],
               warnings: list[str], skipped: list[Problem], born: Optional[date] = None) -> Optional[LabValue]:
    res = item.resource
    name = f"{item.label}, LOINC {code} ({test})"

    def skip(why: str) -> None:
        warnings.append(f"{name}: {why}; skipped.")
        skipped.append(Problem(item.loc, f"{test} (LOINC {code}): {why}"))

    status = as_str(res.get("status"))
    q = as_dict(res.get("valueQuantity"))
    has_value = q.get("value") is not None
    why = not_a_result(status)
    if why:
        skip(why + ("" if has_value else f" and it has {absent_value_reason(res)}"))
        return None
    if not has_value:
        text_value = _text_value(res, spec)
        if text_value is None:
            skip(absent_value_reason(res))
            return None
        q, why_unit = text_value
        field, text = _value_text(res)
        warnings.append(f"{name}: {field} {text!r} read as "
                        f"{q.get('comparator', '')}{fmt(q['value'])} {q['unit']}, {why_unit}.")
    try:
        unit = value_unit(q, spec, name, warnings)
    except UnitConflict as e:
        skip(str(e))
        return None
    if unit is None:
        skip("valueQuantity has neither a unit nor a UCUM code")
        return None
    value = q["value"]
    if isinstance(value, str) and DECIMAL_TEXT.match(value):     # a decimal sent as a JSON string ("0.4"): FHIR's
        warnings.append(f"{name}: valueQuantity.value {value!r} is text; read as the number it writes.")
        value = float(value)                                  # decimal type forbids it, but the number is plain
    comparator = as_str(q.get("comparator"))
    if comparator:
        shown = fmt(value) if is_number(value) else repr(value)
        if comparator in COMPARATORS:
            judged = "below it" if comparator in ("<", "<=") else "the bound"
            warnings.append(f"{name}: reported as {comparator}{shown} {unit}, a bound and not a measurement; judged as "
                            f"{judged}.")
        else:
            warnings.append(f"{name}: reported as {comparator}{shown} {unit}, with an unknown comparator; {shown} was "
                            f"used as the value.")
    aged = (born, utc_date(time)) if born is not None and time is not None else None
    lab = LabValue(item, test, code, value, unit, time, *_lln(res, unit, spec, name, warnings, aged))
    lab.comparator = comparator if comparator in COMPARATORS else None
    return lab


def _lln(res: dict[str, Any], unit: str, spec: dict[str, Any], where: str, warnings: list[str],
         aged: Optional[tuple[date, date]] = None) -> tuple[Optional[float], Optional[str]]:
    """(the lower limit of the value's normal range, its unit when it is not the value's ``unit``). The range is
    the first ``referenceRange`` that is a normal range for this patient: no ``type`` or type normal, no
    ``appliesTo``, and an ``age`` only when it holds the patient's age on the value's day (``aged``: birth date,
    that day), taken before one for any age (a treatment range, or a newborn's, had been read as the lower limit
    of normal, and a child's own range left out). One that is not for this patient is named in a warning."""
    ranges = [as_dict(r) for r in as_list(res.get("referenceRange"))]
    usable = sorted((r for r in ranges if _normal_range(r) and (not r.get("age") or holds_age(r["age"], aged))),
                    key=lambda r: not r.get("age"))
    if ranges and not usable and any("low" in r for r in ranges):
        warnings.append(f"{where}: referenceRange is not a normal range for this patient (its type, appliesTo, "
                        f"or an age range that {'does not hold' if aged else 'cannot be checked against'} the "
                        f"patient's age); the lower limit of normal was left out.")
    low = as_dict(usable[0].get("low")) if usable else {}
    value = low.get("value")
    if not is_number(value):
        return None, None
    low_unit = quantity_unit(low)
    if low_unit is None or low_unit == unit:
        return value, None
    low_unit = readable_unit(low_unit, spec)
    if factor_to_test_unit(low_unit, spec) is None:
        if factor_to_test_unit(unit, spec) is not None:
            warnings.append(f"{where}: referenceRange[0].low is in {low_unit!r}, which leukodx does not read; "
                            f"the lower limit of normal was left out.")
        return None, None
    return value, low_unit


def _normal_range(r: dict[str, Any]) -> bool:
    """No type or type normal, and no population in ``appliesTo`` (US Core's own examples put the meaning
    "normal" there: that is no population)."""
    kinds = set(codes(r.get("type")))
    populations = {c for concept in as_list(r.get("appliesTo")) for c in codes(concept)} - {"normal"}
    unnamed = any(not codes(concept) for concept in as_list(r.get("appliesTo")))   # a population in text only
    return (not kinds or "normal" in kinds) and not populations and not unnamed


# ---------------------------------------------------------------------------------------------
# Draws: values collected at one time are one draw (reports and panels: panels.py)


def _one_draw_per_time(labs: list[LabValue], specimens: set[str], warnings: list[str]) -> None:
    """Values collected at one time whose draw is a report or panel (or nothing) are one draw: the draw
    of the first such report or panel at that time. A CBC report (58410-2) and a differential report
    (57023-4) of one collection are two reports of one blood sample; as two draws the WBC and the
    neutrophil percentage were never paired into an ANC. Values naming a Specimen keep it."""
    first_at: dict[datetime, str] = {}
    for lab in labs:
        if lab.utc is not None and lab.specimen and lab.specimen not in specimens:
            first_at.setdefault(lab.utc, lab.specimen)
    joined: dict[datetime, set[str]] = {}
    for lab in labs:
        key = first_at.get(lab.utc) if lab.utc is not None and lab.specimen not in specimens else None
        if key is not None and lab.specimen != key:
            joined.setdefault(lab.utc, {key}).add(lab.specimen or "values in no report")
            lab.specimen = key
    for utc, keys in joined.items():
        warnings.append(f"Values collected at {utc.isoformat()}Z in {', '.join(sorted(keys))} were taken as one "
                        f"blood draw (the same collection time).")


# a count as text: a comparator, the number, then perhaps its unit ("0.3 K/uL") and the laboratory's flag ("L",
# "(LL)", "*": the flag says low or high, never the unit)
_FLAG = r"(?:\(?(?:L|LL|H|HH|A|AA)\)?|\*)"
# "x 10^9/L", "× 10*9/L", "0.3x10⁹ /L" as printed: the unit's spaces closed up and set apart from the number
# ("0.3 x10^9/L"), which is then read as one
_SPACED_POWER = re.compile(r"(?i)(?<=[\s\d])\s*[x×]\s*10\s*([\^*e])\s*(\d)(?:\s*(/)\s*)?")
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def _closed_up(text: str) -> str:
    text = re.sub(r"10([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "10^" + m.group(1).translate(_SUPERSCRIPT), text)
    return _SPACED_POWER.sub(r" x10\1\2\3", text)
# "0,3", "3,2": a decimal comma (one or two digits after it: never a thousands separator); ".3"; a unit written
# against the number ("300/uL", "0.3K/uL": an ANC of 0.3 sent as "300/uL" had been unread) unless it is a flag ("0.3L")
_TEXT_NUMBER = re.compile(rf"^\s*(<=|>=|<|>)?\s*(\d+(?:\.\d+)?|\.\d+|0,\d+|\d+,\d{{1,2}})(?![\d.,])"
                          rf"(?:\s*{_FLAG}|(?:\s+|(?=[/A-Za-zµμ]))(?!{_FLAG}\s*$)([^\s()]+)(?:\s+{_FLAG})?)?\s*$")


def _value_text(res: dict[str, Any]) -> tuple[str, str]:
    """A value sent as text, and the field it came in: valueString, or a valueCodeableConcept's text ("<0.1" as a
    coded answer's text had gone unread beside a WBC of 0.6)."""
    if as_str(res.get("valueString")):
        return "valueString", res["valueString"]
    text = concept_text(res.get("valueCodeableConcept")) if "valueCodeableConcept" in res else None
    return ("valueCodeableConcept text", text) if text else ("", "")


def _text_value(res: dict[str, Any], spec: dict[str, Any]) -> Optional[tuple[dict[str, Any], str]]:
    """A count sent as text ("<0.1", "0,3"): a valueQuantity, when the number is plausible in exactly one
    of the test's usual units (``suggest``, rules/labs.yaml): "<0.1" is an ANC in 10^9/L, never 0.1 cells
    per uL. A zero is zero in any unit. An upper bound plausible in several ("<100": cells per uL, or
    10^9/L) is read in the unit giving the lowest count: a laboratory reports a bound only at the bottom
    of its analyser's range, and the lower reading is the worse side. With why the unit was chosen; None
    when the text is not a number, or the unit cannot be told."""
    m = _TEXT_NUMBER.match(_closed_up(_value_text(res)[1]))
    if m is None or spec.get("dimension") != "count_per_volume":
        return None
    value = float(m.group(2).replace(",", "."))
    comparator = m.group(1)
    if m.group(3):                      # the unit written after it: read as a valueQuantity's would be
        out: dict[str, Any] = {"value": value, "unit": m.group(3)}
        if comparator:
            out["comparator"] = comparator
        return out, "its unit as written after the number"
    factors = {u: f for u in spec.get("suggest", []) if (f := factor_to_test_unit(u, spec)) is not None}
    units = [u for u, f in factors.items() if spec["plausible"][0] <= value * f <= spec["plausible"][1]]
    if value == 0 and comparator is None and factors and spec.get("zero_allowed"):
        unit, why = next(iter(factors)), "as a zero is the same count in any unit"
    elif len(units) == 1:
        unit, why = units[0], "the only one of its usual units in which that number is a plausible count"
    elif len(units) > 1 and comparator in ("<", "<="):
        unit = min(units, key=lambda u: value * factors[u])
        why = (f"the lowest of its plausible readings (in {' or '.join(units)}): a laboratory reports an upper bound "
               f"at the bottom of its range, and the lower count is the worse side")
    else:
        return None
    out = {"value": value, "unit": unit}
    if comparator:
        out["comparator"] = comparator
    return out, why
