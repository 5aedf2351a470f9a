"""One lab value the mapping keeps for the case (:class:`LabValue`), and which of two values of one test at one time
stays (:func:`keep_one`: the later state of a result, else the lower of two counts, else the first; a count in a unit
leukodx does not read beside a readable one is named, not kept)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from leukodx.engine.errors import Problem

from .datatypes import When, as_str, fmt, is_number
from .duplicates import preferred
from .lab_units import factor_to_test_unit
from .resources import Item

__all__ = ["LabValue", "keep_one", "shown"]


@dataclass
class LabValue:
    """One lab value for the case, and the Observation it came from."""
    item: Item
    test: str                  # what the mapping calls it in warnings and de-duplication; not sent to the engine
    loinc: str
    value: Any
    unit: str
    time: Optional[When]
    lln: Optional[float]
    lln_unit: Optional[str]
    specimen: Optional[str] = None
    utc: Optional[datetime] = None     # ``time`` as naive UTC: what values are compared and sorted by
    comparator: Optional[str] = None   # a bound, not a measurement ("<" 0.5)

    def as_dict(self) -> dict[str, Any]:
        """The lab in the case contract: the engine resolves ``loinc`` to its test."""
        out: dict[str, Any] = {"loinc": self.loinc, "value": self.value, "unit": self.unit}
        if self.time is not None:
            out["time"] = self.time.isoformat()
        if self.lln is not None:
            out["lln"] = self.lln
        if self.lln_unit is not None:
            out["lln_unit"] = self.lln_unit
        if self.comparator:
            out["comparator"] = self.comparator
        if self.specimen:
            out["specimen"] = self.specimen[:200]
        rid = as_str(self.item.resource.get("id"))
        out["ref"] = (f"Observation/{rid}" if rid else self.item.loc or "Observation")[:200]
        return out


def keep_one(lab: LabValue, first_at: dict[tuple[str, Optional[datetime]], int], labs: list[LabValue],
             warnings: list[str], skipped: list[Problem], spec: dict[str, Any]) -> None:
    """Add ``lab`` to ``labs`` unless a value of its test and time is there; of two, the one
    :func:`~.duplicates.preferred` prefers stays, and a warning says which and why. Two values that
    conflict (nothing says which is right) are also listed as not assessed, so that a CDS card shows the
    conflict; of two blood counts the lower stays (the worse side: an automated ANC 1.6 and a manual 0.4
    had set the tier by the order of the Bundle), of other tests the first; of a value readable and one in a unit
    leukodx does not read, the readable one, the other named as unread."""
    key = (lab.test, lab.utc)
    at = first_at.get(key)
    if at is None:
        first_at[key] = len(labs)
        labs.append(lab)
        return
    old = labs[at]
    when = f"at {lab.time.isoformat()}" if lab.time is not None else "without a time"
    second = shown(lab)       # one value in two units (1.2 10*9/L, 1200 /uL) is one value, not a conflict
    first = second if _in_test_unit(old, spec) == _in_test_unit(lab, spec) is not None else shown(old)
    replace, warning, conflict = preferred(old.item, first, lab.item, second, f"{lab.test} value {when}")
    impossible = [v for v in (old, lab) if not _possible(v, spec)] if conflict else []
    if len(impossible) == 1:
        # a value no count or percentage can have beside one it can: the other is used (an interface's -1 placeholder
        # beside an ANC of 0.3 had been "the lower count", then refused, and the critical card lost with it: round 33)
        kept, [gone] = (old if impossible[0] is lab else lab), impossible
        warnings.append(f"{gone.item.label}: {lab.test} {shown(gone)} {when} is below zero, no value a {lab.test} can "
                        f"have, beside {shown(kept)} of {kept.item.label}: the other value was used.")
        skipped.append(Problem(gone.item.loc, f"{lab.test} {shown(gone)} {when}: below zero, beside {shown(kept)} of "
                                              f"the same draw, which was used"))
        labs[at] = kept
        return
    lower = _lower_count(old, lab, spec) if conflict else None
    unread = [v for v in (old, lab) if _in_test_unit(v, spec) is None] if conflict and lower is None else []
    if len(unread) == 1:
        # one value readable, the other in a unit leukodx does not read: the readable one is used and the other named
        # as unread, whatever their order (an ANC of 0.3 in bil/L beside 2.5, or neutrophils 10 "Prozent" beside 70 %,
        # had been named only after the sources in one order, and had made the ANC unknown in the other)
        kept, [gone] = (old if unread[0] is lab else lab), unread
        warnings.append(f"{gone.item.label}: {lab.test} {shown(gone)} {when} is in a unit leukodx does not read, "
                        f"beside {shown(kept)} of {kept.item.label}: the readable value was used; check the other, "
                        f"which may be lower.")
        skipped.append(Problem(gone.item.loc, f"{lab.test} {shown(gone)} {when}: a unit leukodx does not read, "
                                              f"beside {shown(kept)} of the same draw, which was used"))
        labs[at] = kept
        return
    lower_one = "the lower count" if spec.get("dimension") == "count_per_volume" else "the lower value"
    if lower is not None:
        replace = lower is lab
        warning = (f"{lab.item.label}: a second {lab.test} value {when}, {shown(lab)}, conflicts with "
                   f"{shown(old)} of {old.item.label}; neither status, issued nor meta.lastUpdated says which is right, so "
                   f"{lower_one}, {shown(lower)}, was used (the worse side): check which result is valid.")
    warnings.append(warning)
    if conflict:
        used = f"{lower_one} was used" if lower is not None else "the first was used"
        skipped.append(Problem(lab.item.loc, f"{lab.test} {shown(lab)} {when} conflicts with {shown(old)} of "
                                             f"{old.item.label}, and nothing says which is right; {used}"))
    if replace:
        labs[at] = lab


def _lower_count(a: LabValue, b: LabValue, spec: dict[str, Any]) -> Optional[LabValue]:
    """The lower of two values of a blood count or of a percentage whose lower value is the worse side (labs.yaml
    ``conflict_keeps_lower``), in the test's unit; None for another test or when a unit cannot be converted."""
    if spec.get("dimension") != "count_per_volume" and not spec.get("conflict_keeps_lower"):
        return None
    x, y = _in_test_unit(a, spec), _in_test_unit(b, spec)
    if x is None or y is None:      # an unreadable unit: the engine names it
        return None
    return b if y < x else a


def _possible(lab: LabValue, spec: dict[str, Any]) -> bool:
    """False for a value below zero (a count, a percentage or a concentration cannot be), True otherwise (a value in a
    unit that cannot be read too: that is another question)."""
    x = _in_test_unit(lab, spec)
    return x is None or x >= 0


def _in_test_unit(lab: LabValue, spec: dict[str, Any]) -> Optional[float]:
    """The value in the test's unit (None when it is no number or its unit cannot be read)."""
    factor = factor_to_test_unit(lab.unit, spec) if is_number(lab.value) else None
    return None if factor is None else round(float(lab.value) * factor, 9)


def shown(lab: LabValue) -> str:
    return f"{fmt(lab.value) if is_number(lab.value) else repr(lab.value)[:40]} {lab.unit}"
