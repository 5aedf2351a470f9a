"""Replay throughput: N case files (copies of the case library with unique ids) replayed with 1 and
2 jobs by `leukodx replay`, as a user runs it. Prints a table, or JSON with --json.

    python bench/replay.py [--cases 10000] [--jobs 1 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_cases(dest: Path, n: int) -> None:
    library = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "cases").rglob("*.yaml"))]
    library = [c for c in library if isinstance(c, dict)]
    for i in range(n):
        case = dict(library[i % len(library)])
        case["id"] = f"{case.get('id', 'case')}-{i}"
        (dest / f"{case['id']}.yaml").write_text(yaml.safe_dump(case, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    leukodx = shutil.which("leukodx") or str(Path(sys.executable).with_name("leukodx"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        make_cases(Path(tmp), args.cases)
        for jobs in args.jobs:
            t = time.perf_counter()
            r = subprocess.run([leukodx, "replay", tmp, "--jobs", str(jobs), "--format", "json"],
                               capture_output=True, text=True)
            seconds = time.perf_counter() - t
            doc = json.loads(r.stdout)
            results.append({"jobs": jobs, "cases": doc["total"], "failed": doc["failed"], "seconds": round(seconds, 2),
                            "cases_per_second": round(doc["total"] / seconds, 1)})
    if args.json:
        print(json.dumps({"replay": results}, indent=2))
    else:
        print(f"{'jobs':>4} {'cases':>7} {'failed':>6} {'seconds':>8} {'cases/s':>9}")
        for r in results:
            print(f"{r['jobs']:>4} {r['cases']:>7} {r['failed']:>6} {r['seconds']:>8} {r['cases_per_second']:>9}")
        if len(results) == 2:
            print(f"speed-up with {results[1]['jobs']} jobs: {results[0]['seconds'] / results[1]['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
