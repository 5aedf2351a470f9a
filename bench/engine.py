"""Engine latency over the case library: durable-rules vs the plain-Python evaluator of the same
compiled rules, and the split of one assessment's time by stage. Prints a table, or JSON with --json.

    python bench/engine.py [--rounds 20] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from leukodx.engine import Engine
from leukodx.engine.derive import derive
from leukodx.engine.explain import build_assessment
from leukodx.engine.normalize import normalize
from leukodx.engine.parse import load_document, parse_case
from leukodx.engine.pipeline import ENGINE_VERSION
from leukodx.engine.rank import rank_causes
from leukodx.engine.reason import run_stages
from leukodx.engine.render import to_json

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("parse", "normalize", "derive", "reason", "rank", "explain", "serialize")


def library() -> list[dict]:
    docs = [load_document(p.read_bytes()) for p in sorted((ROOT / "cases").rglob("*.yaml"))]
    return [d for d in docs if isinstance(d, dict) and "error" not in (d.get("expect") or {})
            and (d.get("expect") or {}).get("mode", "strict") == "strict"]   # cases a person's case path accepts


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def interleaved(engines: dict[str, Engine], cases: list[dict], rounds: int) -> dict[str, dict[str, float]]:
    """Latency of each engine, A and B alternated case by case (so drift and load hit both alike), in
    wall time and in this thread's CPU time (what a busy, shared machine does not distort)."""
    for e in engines.values():
        for c in cases:
            e.assess(c)
    wall: dict[str, list[float]] = {k: [] for k in engines}
    cpu: dict[str, list[float]] = {k: [] for k in engines}
    order = list(engines)
    for r in range(rounds):
        for c in cases:
            for name in (order if r % 2 == 0 else order[::-1]):
                t, ct = time.perf_counter(), time.thread_time()
                engines[name].assess(c)
                cpu[name].append((time.thread_time() - ct) * 1e6)
                wall[name].append((time.perf_counter() - t) * 1e6)
    return {name: {"median_us": round(statistics.median(wall[name])), "p95_us": round(pct(wall[name], 0.95)),
                   "p99_us": round(pct(wall[name], 0.99)), "cpu_median_us": round(statistics.median(cpu[name])),
                   "cpu_p99_us": round(pct(cpu[name], 0.99)), "n": len(wall[name])} for name in engines}


def stage_split(engine: Engine, cases: list[dict], rounds: int) -> dict[str, float]:
    totals = dict.fromkeys(STAGES, 0.0)
    n = 0
    for _ in range(rounds):
        for raw in cases:
            marks = [time.perf_counter()]
            case = parse_case(raw); marks.append(time.perf_counter())
            nc = normalize(engine.kb, case, engine.drugs); marks.append(time.perf_counter())
            d = derive(engine.kb, nc); marks.append(time.perf_counter())
            firings, _ = run_stages(engine.kb, engine.reasoner, d.facts); marks.append(time.perf_counter())
            causes = rank_causes(engine.kb, firings, nc.meds); marks.append(time.perf_counter())
            a = build_assessment(engine.kb, nc, d, firings, causes, ENGINE_VERSION); marks.append(time.perf_counter())
            to_json(a); marks.append(time.perf_counter())
            for stage, (a0, a1) in zip(STAGES, zip(marks, marks[1:])):
                totals[stage] += (a1 - a0) * 1e6
            n += 1
    return {stage: round(total / n, 1) for stage, total in totals.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cases = library()
    durable, plain = Engine(), Engine(backend="plain")
    result = {"cases": len(cases), "load_average": [round(x, 2) for x in os.getloadavg()],
              **interleaved({"durable": durable, "plain": plain}, cases, args.rounds)}
    result["ratio_median"] = round(result["durable"]["median_us"] / result["plain"]["median_us"], 2)
    result["ratio_p99"] = round(result["durable"]["p99_us"] / result["plain"]["p99_us"], 2)
    result["ratio_cpu_median"] = round(result["durable"]["cpu_median_us"] / result["plain"]["cpu_median_us"], 2)
    result["stages_us_durable"] = stage_split(durable, cases, max(1, args.rounds // 4))
    result["stages_us_plain"] = stage_split(plain, cases, max(1, args.rounds // 4))
    fired = [len(durable.assess(c).trace) for c in cases]
    result["rules_fired_per_case"] = {"median": statistics.median(fired), "max": max(fired)}
    result["rulesets"] = len(durable.kb.rulesets)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"engine latency over {len(cases)} cases x {args.rounds} rounds, durable and plain interleaved case by case "
          f"(microseconds; load average {result['load_average']})")
    print(f"{'backend':<10}{'median':>10}{'p95':>10}{'p99':>10}{'cpu med':>10}{'cpu p99':>10}")
    for b in ("durable", "plain"):
        r = result[b]
        print(f"{b:<10}{r['median_us']:>10}{r['p95_us']:>10}{r['p99_us']:>10}{r['cpu_median_us']:>10}{r['cpu_p99_us']:>10}")
    print(f"durable/plain: median {result['ratio_median']}x, p99 {result['ratio_p99']}x, "
          f"CPU median {result['ratio_cpu_median']}x")
    print("stage split, mean us per case:  " + "  ".join(STAGES))
    for b in ("durable", "plain"):
        print(f"  {b:<8}" + "".join(f"{result[f'stages_us_{b}'][s]:>10}" for s in STAGES))
    print(f"rules fired per case: median {result['rules_fired_per_case']['median']}, "
          f"max {result['rules_fired_per_case']['max']}; rulesets {result['rulesets']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
