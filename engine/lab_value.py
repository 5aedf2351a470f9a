"""One lab value read and converted (:func:`normalize_lab`): its test (by name or LOINC), its unit to the test's
unit through pint, its plausible range (rules/labs.yaml), its lower limit of normal and a bound's comparator."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from .errors import Problem
from .kb import KnowledgeBase
from .timeutil import utc_naive
from .units import UnitProblem, conversion_factor

__all__ = ["NormLab", "Doubt", "normalize_lab"]


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(slots=True)
class NormLab:
    """One lab value, read and converted. Not frozen (nothing changes it after :func:`normalize`): a frozen
    dataclass sets each field through ``object.__setattr__``, 3x the cost, and an EHR's case has hundreds."""
    index: int
    test: str
    value: float              # in the test's normalised unit
    unit: str
    time: Optional[datetime]  # UTC, naive; None = untimed (taken as current)
    lln: Optional[float]
    original_value: float
    original_unit: str
    original_test: Optional[str]
    loinc: Optional[str]
    specimen: Optional[str] = None
    ref: Optional[str] = None
    comparator: Optional[str] = None  # the value was a bound ("<0.5"); below a "<" bound, value is just under it
    day_only: bool = False            # dated by its day alone (a date, no time of day)


@dataclass(frozen=True)
class Doubt:
    """A count read as profound that another unit would make plausible, or one so high that only its draw's WBC can
    show it is not a unit slip (``high``): decided by its draw's WBC."""
    other: float          # the value in the test's unit if its unit were the one probably meant
    refused: Problem      # what the case is told when that reading is possible
    accepted: str         # the warning when it is not
    high: bool = False    # read only beside a WBC of its draw (which it cannot exceed: normalize.py)


def normalize_lab(kb: KnowledgeBase, i: int, lab: Any, problems: list[Problem], warnings: list[str],
                  doubtful: Optional[dict[int, Doubt]] = None) -> Optional[NormLab]:
    """The lab read, or None with its problems. A count below its plausible range that can really be that low
    (labs.yaml ``below_range_may_be_real``) is read as the profound count it says, as a 0 is (refused, an ANC of
    3 /uL had left the tier unknown); when another unit makes it a plausible count, it goes into ``doubtful`` for
    the case to decide by its draw's WBC (normalize.py): an ANC of 3.1 "/uL" beside a WBC of 6.2 is a unit slip
    (it had become a critical profound neutropenia), 3 /uL beside a WBC of 1.2 can only be profound."""
    where = f"labs[{i}]"
    test = None
    if lab.test:
        test = lab.test.strip().lower()
        if test not in kb.tests:
            problems.append(Problem(f"{where}.test", f"unknown test {lab.test!r}; known tests: {', '.join(kb.tests)}"))
            return None
    if lab.loinc:
        by_code = kb.loinc.get(lab.loinc.strip())
        if by_code is None:
            problems.append(Problem(f"{where}.loinc", f"unknown LOINC code {lab.loinc!r} (not a CBC, differential, "
                                                      f"B12, folate or copper code leukodx knows)"))
            return None
        if test and test != by_code:
            problems.append(Problem(where, f"test {test!r} and LOINC {lab.loinc} ({by_code}) disagree"))
            return None
        test = by_code
    spec = kb.tests[test]
    name = f"{where} ({test})"
    value = lab.value + 0.0  # -0.0 -> 0.0
    if value < 0:
        problems.append(Problem(f"{where}.value", f"{test} is negative ({_fmt(value)}); a count or level cannot be"))
        return None
    try:
        conv = conversion_factor(lab.unit, spec["dimension"], spec["unit"], spec.get("molar_mass"))
    except UnitProblem as e:
        problems.append(Problem(f"{where}.unit", f"{test}: {e}"))
        return None
    normalized = float(f"{value * conv.factor:.10g}")
    low, high = spec["plausible"]
    if not (normalized == 0 and spec.get("zero_allowed")) and not (low <= normalized <= high):
        if spec["dimension"] == "fraction":
            problems.append(Problem(f"{where}.value", f"{test} {_fmt(value)}% is not a plausible percentage "
                                                      f"(it must lie between 0 and 100 percent)"))
            return None
        meant = [u for u in spec.get("suggest", []) if u != lab.unit and _plausible(value, u, spec)]
        real = normalized < low and spec.get("below_range_may_be_real")
        refused = Problem(f"{where}.value", f"{test} {_fmt(value)} {lab.unit} is not plausible ({_fmt(normalized)} "
                                            f"{spec['unit']}; plausible range {_fmt(low)}-{_fmt(high)} {spec['unit']})" +
                          (f"; if it is {_fmt(value)} {lab.unit}, the count is profound, below {_fmt(low)} {spec['unit']}: "
                           f"send it with that unit and comparator '<'; if its unit was {meant[0]!r}, send that unit"
                           if meant and real else f"; the unit was probably {meant[0]!r}" if meant else ""))
        if not real:
            problems.append(refused)
            return None
        said = (f"{where}: {test} {_fmt(value)} {lab.unit} ({_fmt(normalized)} {spec['unit']}) is below {_fmt(low)} "
                f"{spec['unit']}: read as the profound count it says")
        if meant and doubtful is not None:
            other = value * conversion_factor(meant[0], spec["dimension"], spec["unit"], spec.get("molar_mass")).factor
            doubtful[i] = Doubt(other, refused, f"{said}; read in {meant[0]!r} it would be {_fmt(other)}, above the "
                                                f"WBC of its draw")
        else:
            warnings.append(said)
    elif spec.get("above_needs_wbc") is not None and normalized > spec["above_needs_wbc"] and doubtful is not None:
        meant = [u for u in spec.get("suggest", []) if u != lab.unit and _plausible(value, u, spec)]
        if meant:
            # an ANC of 300 "10^9/L" alone had been a normal count: as /uL it is 0.3, a severe neutropenia
            other = value * conversion_factor(meant[0], spec["dimension"], spec["unit"], spec.get("molar_mass")).factor
            doubtful[i] = Doubt(other, Problem(
                f"{where}.value", f"{test} {_fmt(value)} {lab.unit} is above {_fmt(spec['above_needs_wbc'])} "
                                  f"{spec['unit']}, a count only a WBC at least as high can show, and its draw has no "
                                  f"WBC: if its unit was {meant[0]!r} it is {_fmt(other)} {spec['unit']}; send the "
                                  f"unit meant, or the draw's WBC"), "", high=True)
    lln = None
    if lab.lln is not None:
        if lab.lln < 0:
            problems.append(Problem(f"{where}.lln", f"{name}: lower limit of normal cannot be negative"))
            return None
        factor = conv.factor
        if lab.lln_unit is not None and lab.lln_unit != lab.unit:
            try:
                factor = conversion_factor(lab.lln_unit, spec["dimension"], spec["unit"], spec.get("molar_mass")).factor
            except UnitProblem as e:
                problems.append(Problem(f"{where}.lln_unit", f"{test}: {e}"))
                return None
        lln = float(f"{lab.lln * factor:.10g}")
        if not (lln == 0 and spec.get("lln_zero_allowed")) and not low <= lln <= high:   # a limit in another unit
            # than the value, say (0 is a real limit where the interval starts at 0): the count itself is still read
            given = f"{_fmt(lab.lln)} {lab.lln_unit or lab.unit}"
            if lln != lab.lln:
                given += f" ({_fmt(lln)} {spec['unit']})"
            warnings.append(f"{where}.lln: {test}'s lower limit of normal {given} is not plausible (plausible range "
                            f"{_fmt(low)}-{_fmt(high)} {spec['unit']}); it was not used, and the value was judged "
                            f"against leukodx's own limits. Give lln_unit when the limit has another unit than the value.")
            lln = None
    if lab.comparator in ("<", "<="):   # a count below the bound: judged as below it (a cutoff's value is milder)
        normalized = math.nextafter(normalized, 0.0)
    return NormLab(index=i, test=test, value=normalized, unit=spec["unit"],
                   time=utc_naive(lab.time) if lab.time else None, lln=lln, original_value=value,
                   original_unit=lab.unit, original_test=lab.test, loinc=lab.loinc, specimen=lab.specimen,
                   ref=lab.ref, comparator=lab.comparator,
                   day_only=lab.time is not None and not isinstance(lab.time, datetime))


def _plausible(value: float, unit: str, spec: dict[str, Any]) -> bool:
    try:
        f = conversion_factor(unit, spec["dimension"], spec["unit"], spec.get("molar_mass")).factor
    except UnitProblem:
        return False
    low, high = spec["plausible"]
    return low <= value * f <= high
