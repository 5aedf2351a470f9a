"""Paired A/B over HTTP: two servers answer the same call at the same time, each one worker on a CPU of
its own with its own wrk, the CPUs swapped every round. The host's speed drifts (the same code measured
25% to 2x apart in runs minutes apart), so runs of A and B one after the other compare the host as much
as the code; run side by side, both see the same host, and the ratio of the pair holds.

    python bench/http_pair.py --baseline-ref e31d495            # this checkout (A) against a commit (B)
    python bench/http_pair.py --env-b LEUKODX_REPORT_LINK_MINUTES=0   # this checkout, two settings
    python bench/http_pair.py --python-b /opt/venv/bin/python         # two interpreters (their own venvs)

A is this checkout; B is ``--baseline-ref`` (checked out in a temporary git worktree, removed
afterwards) or ``--baseline-path`` (a directory holding a leukodx checkout), else this checkout too.
32 clients a server is one worker's share of the CDS goal's 64 clients on 2 workers. Needs Linux
(CPU affinity), 2 CPUs this process may use (the first two it is allowed) and wrk; says so and
measures nothing otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import CALLS, load_wrk, server_cpu_seconds, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def baseline_code(ref: Optional[str], path: Optional[str]) -> Iterator[Optional[str]]:
    """A PYTHONPATH under which ``import leukodx`` is the baseline's code (None: this checkout's)."""
    if not ref and not path:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="leukodx-pair-") as tmp:
        tree = Path(path).resolve() if path else Path(tmp) / "tree"
        if ref:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
        (Path(tmp) / "import").mkdir()
        (Path(tmp) / "import" / "leukodx").symlink_to(tree, target_is_directory=True)
        try:
            yield str(Path(tmp) / "import")
        finally:
            if ref:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def one_round(call: str, clients: int, duration: float, warmup: float, sides: list[dict[str, Any]],
              cpus: tuple[int, int]) -> list[dict[str, Any]]:
    """Both servers started, warmed up and loaded at the same time; side i on ``cpus[i]``."""
    started = []
    try:
        for side, cpu in zip(sides, cpus):
            db_dir = tempfile.mkdtemp(prefix="leukodx-pair-db-")
            try:
                proc, base, _ = start_server(1, db_dir, side["env"], cpu, side.get("python"))
            except BaseException:
                shutil.rmtree(db_dir, ignore_errors=True)
                raise
            started.append((proc, base, db_dir, cpu))
        with ThreadPoolExecutor(len(started)) as pool:
            if warmup > 0:
                list(pool.map(lambda s: load_wrk(s[1], call, clients, warmup, s[3]), started))
            before = [server_cpu_seconds(s[0].pid) for s in started]
            results = list(pool.map(lambda s: load_wrk(s[1], call, clients, duration, s[3]), started))
        out = []
        for side, (proc, _, _, cpu), r, cpu0 in zip(sides, started, results, before):
            spent = server_cpu_seconds(proc.pid) - cpu0
            out.append({"side": side["name"], "cpu": cpu, **r,
                        "server_cpu_ms_per_request": round(spent / max(1, r["requests"]) * 1000, 3)})
        return out
    finally:
        for proc, _, db_dir, _ in started:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.rmtree(db_dir, ignore_errors=True)


def env_pairs(items: list[str]) -> dict[str, str]:
    bad = [i for i in items if "=" not in i]
    if bad:
        raise SystemExit(f"--env-a/--env-b take NAME=VALUE, not {bad}")
    return dict(i.split("=", 1) for i in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--call", default="cds_patient_view", choices=list(CALLS))
    ap.add_argument("--rounds", type=int, default=4, help="an even number: each side as often on each CPU")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--baseline-ref", help="a git commit or branch of this repository for side B")
    ap.add_argument("--baseline-path", help="a directory holding a leukodx checkout for side B")
    ap.add_argument("--env-a", nargs="*", default=[], metavar="NAME=VALUE")
    ap.add_argument("--env-b", nargs="*", default=[], metavar="NAME=VALUE")
    ap.add_argument("--python-b", help="side B's interpreter (a venv's python with leukodx installed beside it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []   # a container's own
    missing = [why for ok, why in ((hasattr(os, "sched_setaffinity"), "CPU affinity (Linux)"),
                                   (len(allowed) >= 2, "2 CPUs"), (shutil.which("wrk"), "wrk"))
               if not ok]
    result: dict[str, Any] = {"call": args.call, "clients": args.clients, "duration_s": args.duration,
                              "measured": not missing, "missing": missing, "rounds": [], "load_average": None}
    if not missing:
        with baseline_code(args.baseline_ref, args.baseline_path) as pythonpath:
            env_b = env_pairs(args.env_b) | ({"PYTHONPATH": pythonpath} if pythonpath else {})
            sides = [{"name": "A", "env": env_pairs(args.env_a), "python": sys.executable},
                     {"name": "B", "env": env_b, "python": args.python_b or sys.executable}]
            result["python"] = {side["name"]: side["python"] for side in sides}
            for i in range(args.rounds):
                cpus = (allowed[0], allowed[1]) if i % 2 == 0 else (allowed[1], allowed[0])
                result["rounds"].append(one_round(args.call, args.clients, args.duration, args.warmup, sides, cpus))
        ratios = [a["rps"] / b["rps"] for a, b in result["rounds"] if b["rps"]]
        cpu_ratios = [a["server_cpu_ms_per_request"] / b["server_cpu_ms_per_request"] for a, b in result["rounds"]
                      if b["server_cpu_ms_per_request"]]
        result |= {"rps_ratio_a_over_b": [round(r, 3) for r in ratios],
                   "rps_ratio_median": round(statistics.median(ratios), 3) if ratios else None,
                   "cpu_per_request_ratio_median": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
                   "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=2))
    elif missing:
        print(f"nothing measured: needs {', '.join(missing)}")
    else:
        for i, pair in enumerate(result["rounds"], 1):
            print(f"round {i}: " + " | ".join(f"{r['side']} (cpu {r['cpu']}) {r['rps']:.0f} req/s, p50 {r['p50_ms']} "
                                              f"p99 {r['p99_ms']} ms, {r['server_cpu_ms_per_request']} ms CPU/req"
                                              for r in pair))
        print(f"A/B req/s per round {result['rps_ratio_a_over_b']}, median {result['rps_ratio_median']}; "
              f"CPU per request A/B median {result['cpu_per_request_ratio_median']}; "
              f"load average {result['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
