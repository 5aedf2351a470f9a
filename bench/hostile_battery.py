"""Hostile battery (issue 12): a catalogue of hostile requests against a real `leukodx serve` on
127.0.0.1, with 1 and 2 workers, CDS Hooks authentication ON. Prints, per worker count:

* requests sent and answers by status class; **5xx** answers;
* **crashes**: worker processes that died during the run (the supervisor's log, and the worker pids
  before and after), and moments the server could not be reached at all;
* **healthz stalls**: /healthz answers slower than 1 s (or not at all) seen by a poller that runs
  alongside the whole battery;
* **outbound**: connections received by a local listener leukodx must never reach (every SSRF
  attempt points at it: loopback spellings, userinfo tricks, 0.0.0.0, decimal IPs, ``..`` ids);
* **tokens accepted twice**: each valid JWT is sent again three times, each on a new connection (so
  with two workers the replays can land on the other one); every replay must be 401. Also tokens for
  another audience sent with a spoofed Host header, which must be 401.

Loopback only; every loop is bounded; open connections (idle, slow head, slow body) are held while
the catalogue runs. The catalogue has about 90 requests per round (``--rounds``, default 2).

    python bench/hostile_battery.py [--workers 1 2] [--rounds 2] [--threads 8] [--json]

The exit status is 0 when every count that must be zero is zero.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import httpx

ROOT = Path(__file__).resolve().parents[1]
ISS = "https://ehr.battery.example"
PATIENT = "battery-patient"
SERVICES = ("leukodx-patient-view", "leukodx-order-select", "leukodx-order-sign")
DEEP = 100_000
STALL_SECONDS = 1.0
REPLAYS = 3     # each valid token is sent again this many times, each on a new connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a listener that must never be reached ------------------------------------------------------------

class ForbiddenListener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# -- tokens ---------------------------------------------------------------------------------------------

class Tokens:
    def __init__(self) -> None:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec
        self._jwt = jwt
        self.key = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        public.update(kid="battery", alg="ES384", use="sig")
        self.issuers = json.dumps([{"iss": ISS, "jwks": {"keys": [public]}}])

    def make(self, audience: str) -> str:
        now = int(time.time())
        return self._jwt.encode({"iss": ISS, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())},
                                self.key, algorithm="ES384", headers={"kid": "battery", "typ": "JWT"})


# -- the catalogue --------------------------------------------------------------------------------------

JSON = "application/json"
YAML = "application/yaml"
FHIR = "application/fhir+json"


def recent() -> str:
    return (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT08:00:00Z")


def obs(code: str, value: Any, unit: str = "10*9/L", when: Optional[str] = None) -> dict:
    return {"resourceType": "Observation", "id": f"o-{code}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": when or recent(),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def cbc() -> list[dict]:
    return [obs("6690-2", 1.4), obs("751-8", 0.3), obs("718-7", 12.5, "g/dL"), obs("777-3", 210)]


def searchset(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def prefetch(**extra: Any) -> dict:
    out = {"patient": {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1970-01-01"},
           "observations": searchset(*cbc()), "pgx": None, "medicationRequests": None,
           "medicationStatements": None, "conditions": None}
    out.update(extra)
    return out


def hook(name: str, pre: Optional[dict], **context: Any) -> dict:
    return {"hook": name, "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": PATIENT, **context}, "prefetch": pre}


def order(mg: Any = 150) -> dict:
    return {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"text": "azathioprine"}, "subject": {"reference": f"Patient/{PATIENT}"},
            "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg"}}]}]}


def case(**extra: Any) -> dict:
    out = {"id": "battery", "patient": {"age_years": 50, "sex": "female", "weight_kg": 70},
           "labs": [{"test": "wbc", "value": 2.0, "unit": "10^9/L", "time": recent()},
                    {"test": "anc", "value": 0.4, "unit": "10^9/L", "time": recent()}]}
    out.update(extra)
    return out


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def big_int_body(doc: Any, marker: int, power: int) -> bytes:
    return dumps(doc).replace(str(marker).encode(), str(10 ** power).encode())


class Item:
    """One request: method, path, body, content type, whether it needs a fresh token (and then
    whether to replay it), and extra headers."""

    def __init__(self, kind: str, method: str, path: str, body: bytes = b"", ctype: str = JSON, *,
                 token: bool = False, replay: bool = False, headers: Optional[dict[str, str]] = None,
                 audience_path: Optional[str] = None) -> None:
        self.kind, self.method, self.path, self.body, self.ctype = kind, method, path, body, ctype
        self.token, self.replay, self.headers = token, replay, headers or {}
        self.audience_path = audience_path


def catalogue(listener_port: int, server_port: int) -> list[Item]:
    items: list[Item] = []
    add = items.append
    # discovery and reference
    for path in ("/cds-services", "/v1/rules", "/v1/sources", "/v1/drugs", "/v1/causes", "/v1/steps",
                 "/v1/rules/no-such-rule", "/openapi.json", "/", "/readyz", "/v1/sources/%00", "/cds-services/x"):
        add(Item("discovery", "GET", path))
    # REST: valid, then hostile
    for path in sorted((ROOT / "cases").rglob("*.yaml"))[:6]:
        add(Item("rest", "POST", "/v1/assess", path.read_bytes(), YAML))
    add(Item("rest", "POST", "/v1/assess", dumps(case())))
    add(Item("rest", "POST", "/v1/assess", b"labs: " + b"[" * DEEP + b"]" * DEEP, YAML))
    add(Item("rest", "POST", "/v1/assess", b'{"labs": ' + b"[" * DEEP + b"]" * DEEP + b"}"))
    add(Item("rest", "POST", "/v1/assess", b"".join(b" " * i + b"a:\n" for i in range(300)), YAML))
    add(Item("rest", "POST", "/v1/assess", b"rationale: '" + b"x" * (900 * 1024) + b"'\n", YAML))
    add(Item("rest", "POST", "/v1/assess", b"[" + b"0," * 400_000 + b"0]"))
    add(Item("rest", "POST", "/v1/assess", b'{"id": "\\ud800", "labs": []}'))
    add(Item("rest", "POST", "/v1/assess", b"id: !!binary aGVsbG8=\nlabs: []\n", YAML))
    add(Item("rest", "POST", "/v1/assess", b"id: !!python/object/apply:os.system [id]\n", YAML))
    add(Item("rest", "POST", "/v1/assess", b"a: &x [1]\nb: *x\n", YAML))
    add(Item("rest", "POST", "/v1/assess", big_int_body(case(patient={"weight_kg": 424242}), 424242, 1000)))
    add(Item("rest", "POST", "/v1/assess", big_int_body(case(medications=[{"name": "azathioprine", "dose": {
        "value": 424242, "unit": "mg"}}]), 424242, 1000)))
    for when in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        add(Item("rest", "POST", "/v1/assess", dumps(case(labs=[{"test": "wbc", "value": 3.0, "unit": "10^9/L",
                                                                  "time": when}]))))
        add(Item("rest", "POST", "/v1/assess", dumps(case(as_of=when))))
    drugs = json.loads(httpx.get(f"http://127.0.0.1:{server_port}/v1/drugs", timeout=10).text)
    add(Item("rest", "POST", "/v1/assess", dumps(case(medications=[{"name": d, "start": "2025-01-01"}
                                                                  for d in drugs[:150]]))))
    for body in (b"{truncated", b"", b"null", b"[1, 2]", b'{"labs": [{"value": NaN}]}', b"\x00\xff\xfe",
                 b'{"a": 1, "a": 2}'):
        add(Item("rest", "POST", "/v1/assess", body))
    lab_line = b"  - {test: wbc, value: 3.0, unit: 10^9/L, time: 2025-03-10T08:00:00Z}\n"
    add(Item("rest", "POST", "/v1/assess", b"labs:\n" + lab_line * (250 * 1024 // len(lab_line)), YAML))  # parsed whole
    add(Item("rest", "POST", "/v1/assess", b"{}", "text/plain"))
    add(Item("rest", "POST", "/v1/assess?ctcae=9.9", dumps(case())))
    add(Item("rest", "POST", "/v1/assess", b"x" * (2 * 1024 * 1024)))
    # FHIR
    add(Item("fhir", "POST", "/v1/assess/fhir", dumps(searchset(*cbc())), FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", b"resourceType: Bundle\ntype: collection\nentry: []\n", FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", b'{"resourceType": "Bundle", "entry": ' + b"[" * DEEP + b"]" * DEEP
             + b"}", FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", big_int_body(searchset(obs("6690-2", 424242)), 424242, 1000), FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", dumps({"resourceType": "Bundle", "entry": 5}), FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", dumps(searchset(obs("6690-2", 2.0, when="9999-12-31T23:59:59-14:00"))),
             FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", b'{"resourceType": "Bundle", "id": "\\udc00", "entry": []}', FHIR))
    add(Item("fhir", "POST", "/v1/assess/fhir", dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Basic", "id": f"b{i}"}} for i in range(30000)]}), FHIR))
    heavy = [dict(obs("6690-2", 2.0 + i / 1000), id=f"o{i}", note=[{"text": "x" * 300}]) for i in range(15000)]
    add(Item("fhir", "POST", "/v1/assess/fhir", dumps(searchset(*heavy)), FHIR))                 # about 11 MiB
    # CDS Hooks: valid calls (each token then replayed), no token, wrong audience with a spoofed Host
    pv = "/cds-services/leukodx-patient-view"
    add(Item("cds", "POST", pv, dumps(hook("patient-view", prefetch())), token=True, replay=True))
    add(Item("cds", "POST", "/cds-services/leukodx-order-sign", dumps(hook("order-sign", prefetch(),
                                                                          draftOrders=searchset(order()))),
             token=True, replay=True))
    add(Item("cds", "POST", "/cds-services/leukodx-order-select",
             dumps(hook("order-select", prefetch(), draftOrders=searchset(order()),
                        selections=["MedicationRequest/draft-1"])), token=True, replay=True))
    add(Item("cds", "POST", pv, dumps(hook("patient-view", prefetch()))))                       # no token: 401
    add(Item("cds-audience", "POST", pv, dumps(hook("patient-view", prefetch())), token=True,
             headers={"Host": "evil.example"}, audience_path="http://evil.example" + pv))
    # CDS Hooks, authenticated, hostile
    hostile_cds: list[bytes] = [
        dumps(hook("order-sign", prefetch(), draftOrders={"resourceType": "Bundle", "entry": 5})),
        dumps(hook("order-select", prefetch(), draftOrders=searchset(order()), selections=[{}])),
        dumps(hook("patient-view", prefetch(observations={**searchset(*cbc()), "link": 5}))),
        dumps(hook("patient-view", prefetch(observations={**searchset(*cbc()), "entry": 5}))),
        big_int_body(hook("order-sign", prefetch(), draftOrders=searchset(order(mg=424242))), 424242, 400),
        b'{"hook": "patient-view", "hookInstance": "\\ud800", "context": {"patientId": "p"}}',
        b'{"hook": "patient-view", "a": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b"hook: patient-view\nhookInstance: x\ncontext: {patientId: p}\n",
        dumps(hook("patient-view", prefetch(observations=searchset(obs("6690-2", 2.0, when="0001-01-01T00:00:00+14:00"))))),
    ]
    for body in hostile_cds:
        add(Item("cds", "POST", pv if b"order" not in body[:200] else
                 ("/cds-services/leukodx-order-sign" if b"order-sign" in body else "/cds-services/leukodx-order-select"),
                 body, token=True))
    # SSRF: every fhirServer points at the forbidden listener (no prefetch: the service would fetch)
    lp = listener_port
    targets = [f"http://127.0.0.1:{lp}/fhir", f"http://localhost:{lp}/fhir", f"http://[::1]:{lp}/fhir",
               f"http://127.0.0.1:{server_port}@127.0.0.1:{lp}/fhir", f"http://x@127.0.0.1:{lp}/fhir",
               f"http://2130706433:{lp}/fhir", f"http://127.1:{lp}/fhir", f"http://0.0.0.0:{lp}/fhir",
               f"https://127.0.0.1:{lp}/fhir", f"http://[::ffff:127.0.0.1]:{lp}/fhir", f"http://0x7f000001:{lp}/",
               f"http://127.0.0.1:{lp}\\@example.org/fhir"]
    auth = {"access_token": "ehr-secret-token", "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "leukodx"}
    for target in targets:
        body = hook("patient-view", None)
        body.update(fhirServer=target, fhirAuthorization=auth)
        add(Item("ssrf", "POST", pv, dumps(body), token=True))
    for patient in ("..", ".", "../../admin"):
        body = hook("patient-view", None)
        body["context"]["patientId"] = patient
        body.update(fhirServer=f"http://127.0.0.1:{lp}/fhir", fhirAuthorization=auth)
        add(Item("ssrf", "POST", pv, dumps(body), token=True))
    # feedback
    fb = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2025-01-01T00:00:00Z",
                        "overrideReason": {"userComment": "battery"}}]}
    add(Item("feedback", "POST", pv + "/feedback", dumps(fb), token=True, replay=True))
    add(Item("feedback", "POST", pv + "/feedback", dumps(fb)))                                       # no token
    for body in (dumps({"feedback": []}), dumps({"feedback": [{"card": "x", "outcome": "accepted",
                                                               "outcomeTimestamp": "t"}]}),
                 b'{"feedback": ' + b"[" * DEEP + b"]" * DEEP + b"}", b'{"feedback": [{"card": "\\ud800"}]}',
                 dumps({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "t",
                                      "overrideReason": {"userComment": "x" * 5000}}]})):
        add(Item("feedback", "POST", pv + "/feedback", body, token=True))
    return items


# -- the server -----------------------------------------------------------------------------------------

def leukodx_exe() -> str:
    beside = Path(sys.executable).with_name("leukodx")
    return str(beside) if beside.exists() else "leukodx"


def start(workers: int, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen([leukodx_exe(), "serve", "--port", str(port), "--workers", str(workers)],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"leukodx serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("leukodx serve did not become ready")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def workers_of(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = set()
    for child in map(int, out):
        try:
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            pass
    return found


# -- one run --------------------------------------------------------------------------------------------

class HealthPoller:
    def __init__(self, base: str, interval: float = 0.1) -> None:
        self.base, self.interval = base, interval
        self.polls = self.stalls = 0
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    ok = client.get(f"{self.base}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.monotonic() - start
                self.polls += 1
                self.worst = max(self.worst, took)
                if not ok or took > STALL_SECONDS:
                    self.stalls += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> "HealthPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def hold_connections(port: int, idle: int) -> list[socket.socket]:
    """Idle sockets, slow heads and slow bodies, held while the catalogue runs (bounded number)."""
    held = []
    for i in range(idle):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        if i % 3 == 1:
            s.sendall(b"POST /v1/assess HTTP/1.1\r\nHost: x\r\n")
        elif i % 3 == 2:
            s.sendall(b"POST /v1/assess HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{")
        held.append(s)
    return held


def run(workers: int, rounds: int, threads: int, idle: int, log_dir: Path) -> dict[str, Any]:
    listener = ForbiddenListener()
    tokens = Tokens()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"LEUKODX_CDS_AUTH": "on", "LEUKODX_CDS_ISSUERS": tokens.issuers, "LEUKODX_CDS_PUBLIC_BASE_URL": base,
           "LEUKODX_FEEDBACK_DB_URL": f"sqlite:///{log_dir}/battery-{workers}.db", "LEUKODX_LOG_LEVEL": "WARNING",
           "LEUKODX_FHIR_ALLOW_LOOPBACK": "false", "LEUKODX_FHIR_ALLOW_PRIVATE": "false",
           "LEUKODX_HEADER_TIMEOUT_SECONDS": "5", "LEUKODX_BODY_TIMEOUT_SECONDS": "10"}
    log_path = log_dir / f"serve-{workers}.log"
    proc = start(workers, port, env, log_path)
    statuses: Counter[str] = Counter()
    five_xx: list[str] = []
    unreachable = 0
    twice: list[str] = []
    wrong_audience: list[str] = []
    lock = threading.Lock()
    pids_before = workers_of(proc.pid)
    try:
        items = catalogue(listener.port, port) * rounds

        def send(item: Item) -> None:
            nonlocal unreachable
            headers = {"content-type": item.ctype, **item.headers}
            if item.token:
                audience = item.audience_path or f"{base}{item.path.split('?')[0]}"
                headers["authorization"] = f"Bearer {tokens.make(audience)}"
            attempts = [headers] + ([headers] * REPLAYS if item.replay else [])
            accepted_again = False
            for n, h in enumerate(attempts):
                try:
                    with httpx.Client(base_url=base, timeout=60) as client:   # a new connection per attempt
                        r = client.request(item.method, item.path, content=item.body or None, headers=h)
                except httpx.HTTPError as e:
                    with lock:
                        unreachable += 1
                        statuses[f"{item.kind} error {type(e).__name__}"] += 1
                    return
                with lock:
                    statuses[f"{item.kind} {r.status_code // 100}xx"] += 1
                    if r.status_code >= 500:
                        five_xx.append(f"{item.kind} {item.method} {item.path} -> {r.status_code}")
                    if n >= 1 and r.status_code != 401 and not accepted_again:
                        accepted_again = True
                        twice.append(f"{item.path} -> {r.status_code}")
                    if item.kind == "cds-audience" and r.status_code != 401:
                        wrong_audience.append(f"{item.path} -> {r.status_code}")

        with HealthPoller(base) as poller:
            held = hold_connections(port, idle)
            try:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    list(pool.map(send, items))
            finally:
                for s in held:
                    s.close()
            time.sleep(0.5)
        pids_after = workers_of(proc.pid)
        alive_after = proc.poll() is None
    finally:
        stop(proc)
        listener.close()
    log_text = log_path.read_text(errors="replace")
    died = log_text.count("worker process died and was replaced")
    sent = sum(statuses.values())
    return {
        "workers": workers, "requests": sent, "by_kind_and_status": dict(sorted(statuses.items())),
        "5xx": len(five_xx), "five_xx": five_xx[:20],
        "crashes": max(died, len(pids_before - pids_after)) + (0 if alive_after else 1),
        "unreachable": unreachable,
        "healthz_polls": poller.polls, "healthz_stalls_over_1s": poller.stalls, "healthz_worst_s": round(poller.worst, 3),
        "outbound_to_forbidden_listener": listener.connections,
        "tokens_accepted_twice": len(twice), "twice": twice[:20],
        "wrong_audience_accepted": len(wrong_audience),
        "held_connections": idle,
    }


MUST_BE_ZERO = ("5xx", "crashes", "unreachable", "healthz_stalls_over_1s", "outbound_to_forbidden_listener",
                "tokens_accepted_twice", "wrong_audience_accepted")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="times the catalogue is sent (about 90 requests each)")
    ap.add_argument("--threads", type=int, default=8, help="concurrent clients")
    ap.add_argument("--idle", type=int, default=60, help="idle / slow connections held during the run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="leukodx-battery-") as tmp:
        for workers in args.workers:
            results.append(run(workers, max(1, args.rounds), max(1, args.threads), max(0, args.idle), Path(tmp)))
    ok = all(r[k] == 0 for r in results for k in MUST_BE_ZERO)
    if args.json:
        print(json.dumps({"results": results, "ok": ok}, indent=2))
    else:
        for r in results:
            print(f"workers {r['workers']}: {r['requests']} requests; 5xx {r['5xx']}; crashes {r['crashes']}; "
                  f"unreachable {r['unreachable']}; healthz stalls > 1 s {r['healthz_stalls_over_1s']} of "
                  f"{r['healthz_polls']} polls (worst {r['healthz_worst_s']} s); outbound to the forbidden listener "
                  f"{r['outbound_to_forbidden_listener']}; tokens accepted twice {r['tokens_accepted_twice']}; "
                  f"wrong-audience tokens accepted {r['wrong_audience_accepted']}")
            for line in r["five_xx"] + r["twice"]:
                print(f"    {line}")
            print(f"    by kind and status: {r['by_kind_and_status']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
