"""Samples: which lab values belong to one blood draw, and which draw is the current CBC.

One draw, one CBC. Values that name the same ``specimen`` (a FHIR Specimen or the DiagnosticReport
that lists them) are one draw. Other timed values are one draw when collected within
``cbc_same_draw_hours`` of the draw's first value and no test repeats in it. Untimed values are one
draw, the current one. A draw's time is the collection time of its first value.

The current CBC is the latest draw with a WBC or an ANC (or counted segmented neutrophils) that is at most
``current_cbc_max_age_days`` old at ``as_of``; older draws are history (trends and review of prior counts only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Collection, Iterable, Optional

from .assessment import CbcStatus
from .normalize import NormLab

__all__ = ["Sample", "group_samples", "age_days", "COUNT_TESTS", "DIFFERENTIAL_TESTS", "DERIVABLE", "derived_count",
           "from_upper_bound", "lower_recount", "unpaired_percentage", "other_differential", "aware_utc", "cbc_status"]

# The counts a neutrophil tier can rest on.
COUNT_TESTS = ("wbc", "anc", "segmented_neutrophils")
# The counts and percentages of one CBC with differential: taken from the current CBC only, so that a tier
# never mixes draws.
DIFFERENTIAL_TESTS = frozenset({"wbc", "anc", "segmented_neutrophils", "bands", "lymphocytes", "monocytes",
                                "eosinophils", "basophils",
                                "neutrophils_pct", "bands_pct", "lymphocytes_pct", "monocytes_pct",
                                "eosinophils_pct", "basophils_pct", "blasts_pct"})
# Counts derived within one draw when it gives none: (count, the percentages of the WBC it is made of).
DERIVABLE = (("anc", ("neutrophils_pct", "bands_pct")), ("lymphocytes", ("lymphocytes_pct",)))
# A manual differential's neutrophils as counts: segmented and band forms apart (rules/labs.yaml).
_ANC_PARTS = ("segmented_neutrophils", "bands")


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


_DAY, _ZONES = timedelta(days=1), timedelta(hours=14)


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
    for lab in sorted((x for x in loose if not x.day_only), key=lambda x: (x.time, x.index)):
        assert lab.time is not None
        if current is None or current.time is None or lab.time - current.time > window or lab.test in current.values:
            current = Sample(f"draw:{lab.time.isoformat()}", lab.time)
            samples.append(current)
        current.values[lab.test] = lab
    # a value dated by its day alone belongs with the one timed draw of that day that lacks its test (a WBC dated
    # 2026-12-03 and neutrophils 15 % at 06:26 had not been paired: an ANC of 0.27 unseen); else with that day's
    # other day-only values
    timed = [s for s in samples if s.key.startswith("draw:")]
    for lab in sorted((x for x in loose if x.day_only), key=lambda x: (x.time, x.index)):
        assert lab.time is not None
        # the day as the laboratory's clock read it: up to 14 hours either side of the UTC day (UTC-12 to UTC+14)
        day = [s for s in timed if s.time is not None and -_ZONES <= s.time - lab.time <= _DAY + _ZONES]
        if len(day) == 1 and lab.test not in day[0].values:
            day[0].values[lab.test] = lab
            continue
        key = f"day:{lab.time.date().isoformat()}"
        own = next((s for s in samples if s.key == key and lab.test not in s.values), None)
        if own is None:
            samples.append(own := Sample(key if not any(s.key == key for s in samples) else f"{key}#{lab.index}",
                                         lab.time))
        own.values[lab.test] = lab
    if untimed.values:
        samples.append(untimed)
    samples.sort(key=_sort_key)
    return samples


def age_days(t: Optional[datetime], as_of: Optional[date]) -> Optional[int]:
    """Whole days from a value's collection date to as_of (None when either is unknown); 0 for a value whose UTC day
    is after an as_of given as a day, drawn on that day where it was drawn (19:30 at UTC-5)."""
    if t is None or as_of is None:
        return None
    return max(0, (as_of - t.date()).days)


def days_text(n: int) -> str:
    """'1 day', '3 days'."""
    return f"{n} day" if n == 1 else f"{n} days"


def derived_count(sample: Sample, target: str, pcts: tuple[str, ...],
                  with_bands: Collection[str] = ()) -> Optional[tuple[float, str]]:
    """A count the draw does not give, with the arithmetic as text: the ANC as segmented + band neutrophils when the
    draw counts them (a band percentage of its WBC when bands are given only as a percentage), else WBC x
    (percentages) / 100. Segmented neutrophils without any band value: the ANC is at least them, and is taken as
    them (the lower side) when the draw reports no ANC; beside a reported one they would only understate it. A
    neutrophil percentage whose LOINC code is in ``with_bands`` counts the bands already: a band percentage is not
    added to it (an automated 65% and a manual band 15% had made 80%)."""
    values = sample.values
    segs, bands = values.get("segmented_neutrophils"), values.get("bands")
    if target == "anc" and segs is not None and (bands is not None or "anc" not in values):
        value, text = segs.value, f"segmented neutrophils {segs.value:g}"
        if bands is not None:
            value, text = value + bands.value, f"{text} + band neutrophils {bands.value:g}"
        elif "wbc" in values and "bands_pct" in values:
            wbc, pct = values["wbc"].value, values["bands_pct"].value
            value, text = value + wbc * pct / 100.0, f"{text} + WBC {wbc:g} x bands {pct:g}% / 100"
        else:
            text += " (no band count in the draw: the ANC is at least this)"
        return float(f"{value:.6g}"), text
    wbc = values.get("wbc")
    if wbc is None or pcts[0] not in values:
        return None
    present = [p for p in pcts if p in values]
    counted = "bands_pct" in present and values[pcts[0]].loinc in with_bands
    if counted:
        present.remove("bands_pct")
    value = float(f"{wbc.value * sum(values[p].value for p in present) / 100.0:.6g}")
    parts = " + ".join(f"{p.replace('_pct', '')} {values[p].value:g}%" for p in present)
    return value, f"WBC {wbc.value:g} x ({parts}) / 100" + (
        f" (LOINC {values[pcts[0]].loinc} counts band neutrophils already: bands {values['bands_pct'].value:g}% not "
        f"added)" if counted else "")


def from_upper_bound(sample: Sample, pcts: tuple[str, ...]) -> bool:
    """A count derived in ``sample`` rests on a WBC, count or percentage reported as below a value (``<``)."""
    return any(lab.comparator in ("<", "<=") for test, lab in sample.values.items()
               if test == "wbc" or test in pcts or test in _ANC_PARTS)


def lower_recount(samples: list[Sample], cbc: Optional[Sample], anc_points: dict[Optional[datetime], float],
                  window_hours: float, tolerance: float) -> Optional[tuple[Sample, float]]:
    """The current draw is an ANC with no WBC (a recount) and the latest earlier draw within ``window_hours`` had
    an ANC lower by more than ``tolerance`` (a fraction of the higher): that draw and its ANC. Two counts that far
    apart that close together cannot both be right, and the lower is the worse side (an ANC of 1.6 ten minutes
    after 0.3 had made the 0.3 history and the card silent)."""
    if cbc is None or cbc.time is None or "wbc" in cbc.values or anc_points.get(cbc.time) is None:
        return None
    current = anc_points[cbc.time]
    for sample in reversed(samples):                       # newest first
        if sample.time is None or sample.time >= cbc.time:
            continue
        if cbc.time - sample.time > timedelta(hours=window_hours):
            return None
        value = anc_points.get(sample.time)
        if value is not None:
            return (sample, value) if current > 0 and (current - value) / current > tolerance else None
    return None


def other_differential(samples: list[Sample], cbc: Optional[Sample], window_hours: float,
                       with_bands: Collection[str] = ()) -> Optional[tuple[Sample, float, str]]:
    """A differential of another draw within ``window_hours`` of the current CBC's, with no count of its own (a
    manual differential resulted after the analyser's, with no specimen in common): the draw and the lowest ANC it
    gives with the CBC's WBC, with its arithmetic (:func:`derived_count`). The manual one, an automated 66% against
    a manual 10%, had been left out unnamed."""
    if cbc is None or cbc.time is None or "wbc" not in cbc.values:
        return None
    found = []
    for s in samples:
        if (s is not cbc and s.time is not None and not s.is_cbc and "neutrophils_pct" in s.values
                and abs(s.time - cbc.time) <= timedelta(hours=window_hours)):
            got = derived_count(Sample(s.key, s.time, {**s.values, "wbc": cbc.values["wbc"]}), "anc",
                                ("neutrophils_pct", "bands_pct"), with_bands)
            if got is not None:
                found.append((s, *got))
    return min(found, key=lambda x: x[1], default=None)


def unpaired_percentage(samples: list[Sample], cbc: Sample) -> str:
    """A neutrophil percentage of another draw within a day of ``cbc`` (which has a WBC and none), said with the ANC it
    would give if the two were one draw; "" when there is none. A WBC dated by the day and a percentage of a day with
    two timed draws cannot be paired (group_samples), and the percentage had gone unmentioned."""
    if cbc.time is None or "wbc" not in cbc.values:
        return ""
    near = [(s, s.values["neutrophils_pct"]) for s in samples if s is not cbc and s.time is not None
            and "neutrophils_pct" in s.values and abs(s.time - cbc.time) <= _DAY + _ZONES]
    if not near:
        return ""
    s, pct = max(near, key=lambda x: x[0].time)
    wbc = cbc.values["wbc"].value
    return (f" A neutrophil percentage of {pct.value:g} % drawn {s.time:%Y-%m-%d %H:%M} UTC could not be tied to this "
            f"WBC's draw; if they are one draw, the ANC is {wbc * pct.value / 100:.2g} x10^9/L.")


def aware_utc(t: Optional[datetime]) -> Optional[datetime]:
    """Sample times are kept as naive UTC inside the engine; the output says so (RFC 3339, with Z). (combine:
    6x faster than ``replace(tzinfo=...)``, and every lab of a case takes it.)"""
    return datetime.combine(t.date(), t.time(), timezone.utc) if t is not None else None


def cbc_status(as_of: Optional[date], cbc: Optional[Sample], latest: Optional[Sample], latest_age: Optional[int],
               max_age: int) -> CbcStatus:
    """Whether the count is current, and how old the latest is, as the Assessment says it."""
    if cbc is not None:
        age = age_days(cbc.time, as_of)
        if cbc.time is None:
            note = "The current CBC has no collection time; it was taken as current."
        else:
            note = (f"Current CBC drawn {cbc.time.date().isoformat()}"
                    + (f", {days_text(age)} before {as_of}" if age is not None and as_of else "") + ".")
        return CbcStatus(current=True, time=aware_utc(cbc.time), age_days=age, max_age_days=max_age,
                         tests=sorted(cbc.values), note=note)
    if latest is not None and latest.time is not None:
        years = f" (over {int(latest_age / 365.25)} years)" if latest_age and latest_age >= 730 else ""
        return CbcStatus(current=False, time=aware_utc(latest.time), age_days=latest_age, max_age_days=max_age,
                         tests=sorted(latest.values),
                         note=f"No current CBC: the latest CBC was drawn {latest.time.date().isoformat()}, "
                              f"{latest_age} days{years} before {as_of}; it is older than {max_age} days and "
                              f"was used for history only.")
    return CbcStatus(current=False, max_age_days=max_age, note="No CBC: no WBC or ANC was given.")
