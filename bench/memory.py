"""Memory: RSS of one engine before and after N assessments of the case library (default 100,000).
Prints a line, or JSON with --json.

    python bench/memory.py [--assessments 100000] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from leukodx.engine import Engine
from leukodx.engine.parse import load_document

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assessments", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    docs = [load_document(p.read_bytes()) for p in sorted((ROOT / "cases").rglob("*.yaml"))]
    cases = [d for d in docs if isinstance(d, dict) and "error" not in (d.get("expect") or {})
            and (d.get("expect") or {}).get("mode", "strict") == "strict"]   # cases a person's case path accepts
    engine = Engine()
    for c in cases:                       # warm every cache first, so growth means a leak
        engine.assess(c)
    before = rss_mb()
    t = time.perf_counter()
    for i in range(args.assessments):
        engine.assess(cases[i % len(cases)])
    seconds = time.perf_counter() - t
    after = rss_mb()
    result = {"assessments": args.assessments, "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
              "growth_mb": round(after - before, 1), "seconds": round(seconds, 1)}
    print(json.dumps(result) if args.json else
          f"RSS {result['rss_before_mb']} MB -> {result['rss_after_mb']} MB after {args.assessments} assessments "
          f"(growth {result['growth_mb']} MB, {result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
