"""Instructions per call, counted by valgrind (cachegrind): the figure that holds when the host's speed
varies (it varied up to 2x within minutes on this project's machine, so wall and CPU times taken an
hour apart do not compare). Each call goes through the whole ASGI application in-process (middleware,
routing, parsing, FHIR mapping, engine, cards, report link, audit record; no HTTP server), in
prometheus-client's multiprocess mode as `leukodx serve` runs it. The count is the difference between
a run of BASE calls and one of BASE + MORE, divided by MORE, so start-up is left out; it is
deterministic to about 0.1%. Instructions are not time (system calls are not counted, and an
instruction of pydantic-core's Rust or of SQLite does not cost what one of the interpreter does), so
compare counts of the same call before and after a change.

    python bench/instructions.py [--calls cds_patient_view assess] [--base 20] [--more 200] [--json]
    python bench/instructions.py --stages [--calls cds_patient_view_201_obs] [--base 5] [--more 40]

`--stages` counts each stage of a CDS call alone instead (request parsing, FHIR mapping, reading the
case, derivation, reasoning, explanation), on inputs the stages before it made once, outside the count.
Without valgrind it says so and counts nothing. `--inner CALL N` and `--inner-stage CALL STAGE N` are
the measured programs themselves.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import CALLS  # noqa: E402 - the same requests as the HTTP benchmark


WARM_UP = 3


def inner(call: str, n: int, concurrency: int = 1) -> list[int]:
    """Run ``n`` calls through the application, after :data:`WARM_UP` more; returns their statuses. With
    ``concurrency`` above 1, the calls go in rounds of that many at once, as a worker's clients send them
    under load (their reports are then written in one transaction, and their objects live together)."""
    from leukodx.api.app import create_app
    path, body, media = CALLS[call]
    app = create_app()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", media.encode()),
                         (b"content-length", str(len(body)).encode())]}

    async def one() -> int:
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)          # the client never disconnects
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
        await app(dict(scope, state={}), receive, send)
        return sent[0]["status"]

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            # Warm-up, in every run alike: the first calls wait for the report store, which opens in the
            # background, and load what is imported on first use.
            warm = [await one() for _ in range(WARM_UP)]
            if concurrency == 1:
                return warm + [await one() for _ in range(n)]
            out = warm
            for start in range(0, n, concurrency):
                out += await asyncio.gather(*(one() for _ in range(min(concurrency, n - start))))
            return out
    return asyncio.run(run())


STAGES = ("parse", "map", "read", "derive", "reason", "explain")


def stage(call: str, name: str) -> Callable[[], Any]:
    """One stage of a CDS call as a function of no arguments, its input made by the stages before it
    (as the service runs them: the prefetch values, the call's patient, today as the case date)."""
    from datetime import datetime, timezone

    from leukodx.api import fhir
    from leukodx.api.cds.models import HookRequest
    from leukodx.engine import get_engine
    from leukodx.engine.derive import derive
    from leukodx.engine.explain import build_assessment
    from leukodx.engine.exposure import active_interactions
    from leukodx.engine.normalize import normalize
    from leukodx.engine.parse import load_json_document, parse_case
    from leukodx.engine.pipeline import ENGINE_VERSION
    from leukodx.engine.rank import rank_causes
    from leukodx.engine.reason import run_stages

    _path, body, _media = CALLS[call]
    eng, kb = get_engine(), get_engine().kb
    steps: dict[str, Callable[[], Any]] = {}
    steps["parse"] = lambda: HookRequest.model_validate(load_json_document(body, "CDS Hooks request", len(body)))
    hook = steps["parse"]()
    resources = [v for v in (hook.prefetch or {}).values() if v is not None]
    today = datetime.now(timezone.utc).date()
    steps["map"] = lambda: fhir.map_bundle(resources, kb=kb, patient_id=hook.context["patientId"], as_of=today,
                                           include_draft=True)
    case = steps["map"]().case
    steps["read"] = lambda: normalize(kb, parse_case(case), eng.drugs)
    nc = steps["read"]()
    steps["derive"] = lambda: derive(kb, nc)
    d = steps["derive"]()
    steps["reason"] = lambda: run_stages(kb, eng.reasoner, d.facts)
    firings, _ = steps["reason"]()

    def explain() -> Any:
        interactions = active_interactions(kb, nc)
        causes = rank_causes(kb, firings, nc.meds, interactions, d.count_day)
        return build_assessment(kb, nc, d, firings, causes, ENGINE_VERSION, [], interactions)
    steps["explain"] = explain
    return steps[name]


def inner_stage(call: str, name: str, n: int) -> None:
    """Run one stage ``n`` times, after :data:`WARM_UP` more, with the heap frozen as a worker's is."""
    import gc
    run = stage(call, name)
    for _ in range(WARM_UP):
        run()
    gc.collect()
    gc.freeze()
    for _ in range(n):
        run()


def count(call: str, n: int, stage_name: str | None = None, concurrency: int = 1) -> int:
    """Instructions of a whole run of ``n`` calls under cachegrind, with a database and a metrics
    directory of its own (a database another run had already made skips the migration, which would
    then be counted against the calls)."""
    with tempfile.TemporaryDirectory(prefix="leukodx-instructions-") as tmp:
        metrics_dir = Path(tmp) / "metrics"
        metrics_dir.mkdir()
        env = {**os.environ, "LEUKODX_FEEDBACK_DB_URL": f"sqlite:///{tmp}/feedback.db", "LEUKODX_CDS_AUTH": "off",
               "LEUKODX_LOG_LEVEL": os.environ.get("LEUKODX_LOG_LEVEL", "WARNING"),
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
               "PYTHONHASHSEED": "0"}   # the same set and dict orders in every run: start-up counts alike
        what = (["--inner-stage", call, stage_name, str(n)] if stage_name
                else ["--inner", call, str(n), "--concurrency", str(concurrency)])
        out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                              sys.executable, __file__, *what],
                             capture_output=True, text=True, env=env, timeout=3600)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"valgrind run failed: {out.stderr[-1000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", nargs="+", default=["cds_patient_view", "assess"], choices=list(CALLS))
    ap.add_argument("--base", type=int, default=20)
    ap.add_argument("--more", type=int, default=200)
    ap.add_argument("--stages", action="store_true", help="count each stage of the CDS calls alone")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="whole calls in rounds of this many at once (one worker's share of its clients); "
                         "--base and --more are then best multiples of it")
    ap.add_argument("--inner", nargs=2, metavar=("CALL", "N"))
    ap.add_argument("--inner-stage", nargs=3, metavar=("CALL", "STAGE", "N"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.inner_stage:
        inner_stage(args.inner_stage[0], args.inner_stage[1], int(args.inner_stage[2]))
        return 0
    if args.inner:
        statuses = inner(args.inner[0], int(args.inner[1]), args.concurrency)
        if any(s != 200 for s in statuses):
            print(f"calls answered {sorted(set(statuses))}", file=sys.stderr)
            return 1
        return 0
    result: dict[str, Any] = {"valgrind": bool(shutil.which("valgrind")), "base": args.base, "more": args.more,
                              "concurrency": args.concurrency,
                              "instructions_per_call": {}}
    calls = [c for c in args.calls if c.startswith("cds_")] if args.stages else args.calls
    if result["valgrind"]:
        for call in calls:
            for name in STAGES if args.stages else (None,):
                conc = 1 if name else args.concurrency
                low, high = count(call, args.base, name, conc), count(call, args.base + args.more, name, conc)
                result["instructions_per_call"][f"{call} {name}" if name else call] = round((high - low) / args.more)
    if args.json:
        print(json.dumps(result, indent=2))
    elif not result["valgrind"]:
        print("valgrind is not installed: nothing counted (apt-get install valgrind)")
    else:
        for call, n in result["instructions_per_call"].items():
            print(f"{call:>32}: {n / 1e6:.3f} M instructions per call (runs of {args.base} and "
                  f"{args.base + args.more} calls, {args.concurrency} at a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
