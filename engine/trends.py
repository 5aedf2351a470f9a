"""Trends over the count series: one point per draw (samples.py), ending at the current CBC.

* ``count_drop_pct``: the fall of the current count from the highest of the previous
  ``trend_lookback_days``; ``count_rise_pct``: its rise from the count before it, when it rose;
* ``low_span_days``: how long the count has been low; ``low_run_drop_pct``: the current count's fall from the
  highest count of that low run; ``wbc_low_span_days``: how long the WBC has been below its LLN, when the
  series is the ANC's (a leukopenia can persist while the ANC has only just fallen);
* ``steady_fall_pct``: the fall of the current count from the first of three or more counts each lower than the
  one before (a steady fall, however slow);
* ``cyclic_intervals``: nadir-to-nadir intervals of cyclic length with recovery between.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from .kb import KnowledgeBase
from .normalize import NormCase
from .samples import Sample

__all__ = ["series_facts", "anc_by_draw", "cyclic_intervals"]


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def series_facts(kb: KnowledgeBase, nc: NormCase, samples: list[Sample], cbc: Sample,
                  anc_points: dict[Optional[datetime], float], facts: dict[str, Any]) -> None:
    """Trend facts over the ANC series (``anc_points``: :func:`anc_by_draw`; the WBC series when the current
    CBC has no ANC), one point per draw, ending at the current CBC."""
    wbc_points = {sample.time: sample.values["wbc"].value for sample in samples if "wbc" in sample.values}
    # the ANC series where it has at least two points and reaches the current CBC, else the WBC series
    use_anc = cbc.time in anc_points and (len(anc_points) >= 2 or len(wbc_points) < 2)
    basis, points = ("anc", anc_points) if use_anc else ("wbc", wbc_points)
    if not points:
        return
    as_of_dt = datetime.combine(nc.as_of, datetime.min.time()) if nc.as_of else None
    series = _in_time(points, as_of_dt)
    facts["series_points"] = float(len(series)) if series else 1.0
    if len(series) < 2:
        return
    low = kb.value("neutropenia_anc") if basis == "anc" else facts.get("wbc_lln")   # a child may have no WBC limit
    latest_t, latest_v = series[-1]
    window = kb.value("trend_lookback_days")
    prior = [v for t, v in series[:-1] if (latest_t - t).days <= window]
    if prior and max(prior) > 0:
        facts["count_drop_pct"] = _r(max(0.0, (max(prior) - latest_v) / max(prior) * 100.0))
    tail = 1                     # the points of the strictly falling run that ends the series
    while tail < len(series) and series[-tail - 1][1] > series[-tail][1]:
        tail += 1
    if tail >= 3 and series[-tail][1] > 0:     # a steady fall, however slow (2.2, 1.8, 1.5, 1.3, 1.1 over two years)
        facts["steady_fall_pct"] = _r((series[-tail][1] - latest_v) / series[-tail][1] * 100.0)
    before = series[-2][1]
    if before > 0 and latest_v > before:        # rising again from the count before: recovery from a nadir
        facts["count_rise_pct"] = _r((latest_v - before) / before * 100.0)
    if basis == "anc":
        wbc_low = facts.get("wbc_lln")
        if wbc_low is not None and len(wbc_points) >= 2 and cbc.time in wbc_points:
            facts["wbc_low_span_days"] = float(_low_run(_in_time(wbc_points, as_of_dt), wbc_low)[0])
    if low is None:
        return
    span, run = _low_run(series, low)
    facts["low_span_days"] = float(span)
    if len(run) >= 2 and max(run) > 0:          # however long ago the run began (a lookback would miss it)
        facts["low_run_drop_pct"] = _r(max(0.0, (max(run) - latest_v) / max(run) * 100.0))
    if basis == "anc":
        facts["cyclic_intervals"] = float(cyclic_intervals(kb, series))


def _in_time(points: dict[Optional[datetime], float], as_of_dt: Optional[datetime]) -> list[tuple[datetime, float]]:
    """The points oldest first, an untimed one at the case's date (none without one)."""
    return sorted(((t or as_of_dt, v) for t, v in points.items() if (t or as_of_dt) is not None), key=lambda p: p[0])


def _low_run(series: list[tuple[datetime, float]], low: float) -> tuple[int, list[float]]:
    """The days since the run of counts below ``low`` that ends the series began (0 when the last is not low),
    and the run's counts."""
    run_start = None
    for t, v in reversed(series):
        if v < low:
            run_start = t
        else:
            break
    if run_start is None:
        return 0, []
    return (series[-1][0] - run_start).days, [v for t, v in series if t >= run_start]


def anc_by_draw(samples: list[Sample], derived_anc: dict[str, tuple[Optional[datetime], float, str]]
                ) -> dict[Optional[datetime], float]:
    """The ANC of each draw that has one: reported, derived from its WBC and differential, or the lower of
    the two when both are there (the safer side, as for the tier)."""
    out: dict[Optional[datetime], float] = {}
    for sample in samples:
        reported = sample.values.get("anc")
        derived = derived_anc.get(sample.key)
        if reported is not None and derived is not None:
            out[sample.time] = min(reported.value, derived[1])
        elif reported is not None or derived is not None:
            out[sample.time] = reported.value if reported is not None else derived[1]   # type: ignore[index]
    return out


def cyclic_intervals(kb: KnowledgeBase, series: list[tuple[datetime, float]]) -> int:
    """Nadir-to-nadir intervals of cyclic length (14-35 days) with a recovery between the nadirs.

    A nadir episode is a run of consecutive values below the nadir level; its time is that of its
    lowest value. Two episodes count as one interval when a value at or above the neutropenia
    cutoff lies between them.
    """
    nadir_level, recovery = kb.value("cyclic_nadir_anc"), kb.value("neutropenia_anc")
    lo, hi = kb.value("cyclic_min_days"), kb.value("cyclic_max_days")
    episodes: list[tuple[datetime, float, bool]] = []   # (time of minimum, minimum, recovered before it)
    current: Optional[list[Any]] = None
    recovered = False
    for t, v in series:
        if v < nadir_level:
            if current is None:
                current, recovered = [t, v, recovered], False
            elif v < current[1]:
                current[0], current[1] = t, v
        else:
            if current is not None:
                episodes.append((current[0], current[1], current[2]))
                current = None
            recovered = recovered or v >= recovery
    if current is not None:
        episodes.append((current[0], current[1], current[2]))
    return sum(1 for a, b in zip(episodes, episodes[1:]) if b[2] and lo <= (b[0] - a[0]).days <= hi)
