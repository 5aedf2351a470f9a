"""HTTP throughput and latency: `leukodx serve` with 1 and 2 workers, driven by a load generator in
a separate process (wrk when installed, else asyncio + httpx) at several concurrency levels for a fixed duration, for
POST /v1/assess and a CDS Hooks patient-view call with prefetch (3 Observations, and 201 as an EHR's
prefetch of a patient with a history of counts holds); plus the same calls' in-process
engine time, so the HTTP overhead is a ratio; plus start-up time to /readyz.

    python bench/http_load.py [--duration 10] [--workers 1 2] [--clients 1 8 64] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import httpx

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "cases" / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml"


def cds_body(earlier_counts: int = 0) -> dict[str, Any]:
    """A patient-view call with a blood count taken this morning: a current count gets the full
    assessment cards and the report link (a count older than the knowledge base's limit would get
    only the short "no recent count" card, a lighter call than the one being measured). With
    ``earlier_counts``, the counts of as many earlier days come with it (three Observations each), as
    an EHR's prefetch of a patient with a history of counts does (the template asks for up to 200)."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)

    def obs(code: str, value: float, days_ago: int = 0) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": f"o{code}-{days_ago}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": (today - timedelta(days=days_ago)).isoformat(),
                "valueQuantity": {"value": value, "unit": "10*9/L", "system": "http://unitsofmeasure.org",
                                  "code": "10*9/L"}}
    labs = [obs("6690-2", 1.4), obs("751-8", 0.3), obs("777-3", 210)]
    for day in range(1, earlier_counts + 1):      # a slow fall over the weeks before
        labs += [obs("6690-2", 1.4 + 0.05 * day, day), obs("751-8", 0.3 + 0.04 * day, day), obs("777-3", 210, day)]
    return {"hook": "patient-view", "hookInstance": "b0c9c4a0-0000-4000-8000-000000000001",
            "context": {"userId": "Practitioner/1", "patientId": "p1"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"},
                         "observations": {"resourceType": "Bundle", "type": "searchset",
                                          "entry": [{"resource": r} for r in labs]},
                         "pgx": None, "medicationRequests": None, "medicationStatements": None, "conditions": None,
                         "vitals": None}}


CALLS = {
    "assess": ("/v1/assess", CASE.read_bytes(), "application/yaml"),
    "cds_patient_view": ("/cds-services/leukodx-patient-view", json.dumps(cds_body()).encode(), "application/json"),
    # the same patient with 66 earlier counts: 201 Observations, about what an EHR's prefetch holds
    "cds_patient_view_201_obs": ("/cds-services/leukodx-patient-view", json.dumps(cds_body(66)).encode(),
                                 "application/json"),
}
CDS_HISTORY = {"cds_patient_view": 0, "cds_patient_view_201_obs": 66}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: Optional[int]) -> Optional[Callable[[], None]]:
    """For ``preexec_fn``: the child (and its children) run on CPU ``cpu`` only (Linux)."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_server(workers: int, db_dir: str, env: Optional[dict[str, str]] = None,
                 cpu: Optional[int] = None, python: Optional[str] = None) -> tuple[subprocess.Popen, str, float]:
    """`leukodx serve` with a database of its own in ``db_dir``: a run must not inherit the reports of
    earlier runs (a file grown to 2 GB made every report write several times slower). ``env`` is added
    to this process's environment; ``cpu`` pins the server to one CPU. The server is the `leukodx` beside
    ``python`` (default: this interpreter), so that it runs on the interpreter measured (the first
    `leukodx` on the PATH may be another environment's); the PATH's only when there is none there."""
    port = free_port()
    beside = Path(python or sys.executable).with_name("leukodx")
    exe = str(beside) if beside.exists() else shutil.which("leukodx")
    if exe is None:
        raise RuntimeError(f"no leukodx command beside {python or sys.executable} or on the PATH")
    env = {"LEUKODX_FEEDBACK_DB_URL": f"sqlite:///{db_dir}/leukodx-feedback.db", **os.environ,
           "LEUKODX_CDS_AUTH": "off", "LEUKODX_LOG_LEVEL": "WARNING", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--workers", str(workers)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned(cpu))
    base = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < 60:
        try:
            if httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200:
                return proc, base, time.perf_counter() - t0
        except httpx.HTTPError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("server did not start")


LOADGEN = r'''
import asyncio, json, sys, time
import httpx
base, path, ctype, clients, duration = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
body = sys.stdin.buffer.read()
lat, errors = [], 0
async def worker(client, stop):
    global errors
    while time.perf_counter() < stop:
        t = time.perf_counter()
        r = await client.post(path, content=body, headers={"content-type": ctype})
        lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            errors += 1
async def main():
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        await client.post(path, content=body, headers={"content-type": ctype})
        start = time.perf_counter(); stop = start + duration
        await asyncio.gather(*(worker(client, stop) for _ in range(clients)))
        return time.perf_counter() - start
elapsed = asyncio.run(main())
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print(json.dumps({"requests": len(lat), "errors": errors, "rps": round(len(lat) / elapsed, 1),
                  "p50_ms": round(q(0.5), 2), "p90_ms": round(q(0.9), 2), "p99_ms": round(q(0.99), 2)}))
'''


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * factor, 2)
    return float("nan")


def load_wrk(base: str, call: str, clients: int, duration: float, cpu: Optional[int] = None) -> dict[str, Any]:
    """wrk (a C load generator) when installed: it leaves the CPU to the server. ``cpu`` pins it."""
    import re
    path, body, ctype = CALLS[call]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\n'
                          f'local f = io.open("{tmp}/body", "rb"); wrk.body = f:read("*all"); f:close()\n')
        out = subprocess.run(["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{max(1, int(duration))}s",
                              "--latency", "-s", str(script), base + path], capture_output=True, text=True,
                             timeout=duration + 60, preexec_fn=pinned(cpu)).stdout
    pct = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return {"requests": requests, "errors": errors, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(pct["50"]), "p90_ms": _ms(pct["90"]), "p99_ms": _ms(pct["99"])}


def load(base: str, call: str, clients: int, duration: float) -> dict[str, Any]:
    if shutil.which("wrk"):
        return load_wrk(base, call, clients, duration)
    path, body, ctype = CALLS[call]
    out = subprocess.run([sys.executable, "-c", LOADGEN, base, path, ctype, str(clients), str(duration)],
                         input=body, capture_output=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode()[-2000:])
    return json.loads(out.stdout)


def server_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the server: the supervisor and its worker processes (Linux /proc;
    NaN elsewhere). Per request, it is the figure that holds when the machine is shared."""
    def stat(p: str) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
    try:
        pids = [str(pid)] + [p for p in os.listdir("/proc") if p.isdigit() and stat(p)[1] == str(pid)]
    except OSError:
        return float("nan")
    total = 0
    for p in pids:
        try:
            fields = stat(p)
        except OSError:       # gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def in_process_ms(call: str, rounds: int = 200) -> float:
    from fastapi.testclient import TestClient
    from leukodx.engine import get_engine
    from leukodx.api import fhir
    eng = get_engine()
    if call == "assess":
        raw = CASE.read_bytes()
        work = lambda: eng.assess(raw)  # noqa: E731
    else:
        prefetch = cds_body(CDS_HISTORY[call])["prefetch"]
        work = lambda: eng.assess(fhir.bundle_to_case(list(prefetch.values()), patient_id="p1")[0])  # noqa: E731
    work()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    del TestClient
    return round(statistics.median(times) * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--calls", nargs="+", default=list(CALLS))
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds of load per call, not measured, after start-up (lazy imports, first connections)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows, startup = [], {}
    engine_ms = {call: in_process_ms(call) for call in args.calls}
    for workers in args.workers:
        db_dir = tempfile.mkdtemp(prefix="leukodx-bench-")
        proc, base, ready = start_server(workers, db_dir)
        startup[workers] = round(ready, 2)
        try:
            for call in args.calls if args.warmup > 0 else []:
                load(base, call, 8, args.warmup)
            for call in args.calls:
                for clients in args.clients:
                    cpu = server_cpu_seconds(proc.pid)
                    r = load(base, call, clients, args.duration)
                    cpu = server_cpu_seconds(proc.pid) - cpu
                    rows.append({"workers": workers, "call": call, "clients": clients, **r,
                                 "server_cpu_ms_per_request": round(cpu / max(1, r["requests"]) * 1000, 2),
                                 "http_over_engine_p50": round(r["p50_ms"] / engine_ms[call], 2)})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.rmtree(db_dir, ignore_errors=True)
    result = {"engine_in_process_ms": engine_ms, "startup_to_ready_s": startup, "load": rows,
              "duration_s": args.duration, "warmup_s": args.warmup, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(),
              "load_generator": "wrk" if shutil.which("wrk") else "python (asyncio + httpx)"}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"in-process engine, median ms: {engine_ms}; start-up to /readyz, s: {startup}; "
          f"load generator: {result['load_generator']}; load average at the end: {result['load_average']}")
    print(f"{'workers':>7} {'call':>24} {'clients':>7} {'req':>7} {'err':>4} {'req/s':>8} {'p50':>7} {'p90':>7} "
          f"{'p99':>7} {'cpu ms/req':>10} {'http/engine':>11}")
    for r in rows:
        print(f"{r['workers']:>7} {r['call']:>24} {r['clients']:>7} {r['requests']:>7} {r['errors']:>4} {r['rps']:>8} "
              f"{r['p50_ms']:>7} {r['p90_ms']:>7} {r['p99_ms']:>7} {r['server_cpu_ms_per_request']:>10} "
              f"{r['http_over_engine_p50']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
