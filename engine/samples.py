"""Samples: which lab values belong to one blood draw, and which draw is the current CBC.

One draw, one CBC. Values that name the same ``specimen`` (a FHIR Specimen or the DiagnosticReport
that lists them) are one draw. Other timed values are one draw when collected within
``cbc_same_draw_hours`` of the draw's first value and no test repeats in it. Untimed values are one
draw, the current one. A draw's time is the collection time of its first value.

The current CBC is the latest draw with a WBC or an ANC that is at most ``current_cbc_max_age_days``
old at ``as_of``; older draws are history (trends and review of prior counts only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Iterable, Optional

from .normalize import NormLab

__all__ = ["Sample", "group_samples", "age_days", "COUNT_TESTS", "DIFFERENTIAL_TESTS"]

# The counts a neutrophil tier can rest on.
COUNT_TESTS = ("wbc", "anc")
# The counts and percentages of one CBC with differential: taken from the current CBC only, so that a tier
# never mixes draws.
DIFFERENTIAL_TESTS = frozenset({"wbc", "anc", "lymphocytes", "monocytes", "eosinophils", "basophils",
                                "neutrophils_pct", "bands_pct", "lymphocytes_pct", "monocytes_pct",
                                "eosinophils_pct", "basophils_pct", "blasts_pct"})


@dataclass
class Sample:
    key: str
    time: Optional[datetime]                 # None: untimed, taken as current
    values: dict[str, NormLab] = field(default_factory=dict)

    @property
    def is_cbc(self) -> bool:
        return any(t in self.values for t in COUNT_TESTS)


def _sort_key(s: Sample) -> tuple[int, datetime]:
    return (1, datetime.max) if s.time is None else (0, s.time)


def group_samples(labs: Iterable[NormLab], window_hours: float) -> list[Sample]:
    """Group values into draws, oldest first (the untimed draw last)."""
    by_specimen: dict[str, Sample] = {}
    untimed = Sample("untimed", None)
    loose: list[NormLab] = []
    for lab in labs:
        if lab.specimen:
            s = by_specimen.setdefault(lab.specimen, Sample(f"specimen:{lab.specimen}", lab.time))
            if lab.time is not None and (s.time is None or lab.time < s.time):
                s.time = lab.time
            prior = s.values.get(lab.test)
            if prior is None or (lab.time or datetime.min) > (prior.time or datetime.min):
                s.values[lab.test] = lab
        elif lab.time is None:
            untimed.values[lab.test] = lab
        else:
            loose.append(lab)
    samples = list(by_specimen.values())
    window = timedelta(hours=window_hours)
    current: Optional[Sample] = None
    for lab in sorted(loose, key=lambda x: (x.time, x.index)):
        assert lab.time is not None
        if current is None or current.time is None or lab.time - current.time > window or lab.test in current.values:
            current = Sample(f"draw:{lab.time.isoformat()}", lab.time)
            samples.append(current)
        current.values[lab.test] = lab
    if untimed.values:
        samples.append(untimed)
    samples.sort(key=_sort_key)
    return samples


def age_days(t: Optional[datetime], as_of: Optional[date]) -> Optional[int]:
    """Whole days from a value's collection date to as_of (None when either is unknown)."""
    if t is None or as_of is None:
        return None
    return (as_of - t.date()).days


def days_text(n: int) -> str:
    """'1 day', '3 days'."""
    return f"{n} day" if n == 1 else f"{n} days"
