"""Load and faults on the real server: `leukodx serve --workers 2`, 64 concurrent clients sending a
fixed number of requests (a mix of valid cases, invalid cases, CDS Hooks calls and feedback) while one
worker is killed once a third of them have been answered. Every response must be the right one for
its request (compared with the engine in this process), no 5xx may be returned, every request must be
accounted for, and no acknowledged feedback row may be missing, also after the whole server is killed
with SIGKILL during a feedback burst and restarted.

Only counts are asserted, never a rate or a duration: the work is fixed, so a slow machine takes
longer and still passes (speed lives in bench/). Run with `-s` to see the figures.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import uuid
from collections import Counter

import httpx
from fastapi.testclient import TestClient

from leukodx.api.app import create_app
from leukodx.api.config import Settings
from leukodx.api.feedback import FeedbackStore
from leukodx.engine import CaseError, assess
from leukodx.engine.render import to_json
from leukodx.cli.replay import find_case_files

from conftest import CASES, free_port, start_server, stop_server
from test_cds_hooks import CBC_SEVERE, prefetch

CLIENTS = 64
PER_CLIENT = int(os.environ.get("LEUKODX_LOAD_REQUESTS_PER_CLIENT", "12"))
REQUESTS = CLIENTS * PER_CLIENT
BURST_ACKED_BEFORE_KILL = 40      # feedback rows acknowledged in the burst before the server is killed
HANG_GUARD = 600                  # seconds; only a server that stopped answering gets anywhere near it


def start(port: int, db: str) -> subprocess.Popen:
    return start_server(port, db, workers=2, LEUKODX_CDS_AUTH="off", LEUKODX_LOG_LEVEL="WARNING")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def workload() -> list[tuple[str, str, bytes, str, object]]:
    """(kind, path, body, content type, expected) for a mix of requests."""
    items = []
    for path in find_case_files([str(CASES)]):
        body = path.read_bytes()
        try:
            expected: object = json.loads(to_json(assess(body)))
            kind = "valid"
        except CaseError as e:
            expected = [p.loc for p in e.problems]
            kind = "invalid"
        items.append((kind, "/v1/assess", body, "application/yaml", expected))
    with TestClient(create_app(Settings(cds_auth="off", feedback_db_url="sqlite://", log_level="WARNING"))) as local:
        for i in range(20):
            hook = {"hook": "patient-view", "hookInstance": f"00000000-0000-4000-8000-{i:012d}",
                    "context": {"userId": "Practitioner/1", "patientId": "1288992"}, "prefetch": prefetch(CBC_SEVERE)}
            body = json.dumps(hook).encode()
            expected = without_report_tokens(local.post("/cds-services/leukodx-patient-view", content=body,
                                                        headers={"content-type": "application/json"}).json())
            items.append(("cds", "/cds-services/leukodx-patient-view", body, "application/json", expected))
    return items


def without_report_tokens(answer: dict) -> dict:
    """Each CDS answer links to its own report (a new random token): compare the rest."""
    for card in answer.get("cards", []):
        for link in card.get("links", []):
            assert re.fullmatch(r"https?://[^/]+/report/[A-Za-z0-9_-]{40,}", link["url"]), link["url"]
            link["url"] = "report link"
    return answer


def feedback_body(card: str) -> bytes:
    return json.dumps({"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2025-01-01T00:00:00Z",
                                     "overrideReason": {"userComment": "load test"}}]}).encode()


def test_load_with_a_killed_worker_and_a_killed_server(tmp_path):
    db = f"sqlite:///{tmp_path}/feedback.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    items = workload()
    proc = start(port, db)
    counts: Counter[str] = Counter()
    wrong: list[str] = []
    acked: set[str] = set()
    lock = threading.Lock()
    third = threading.Event()             # set once a third of the requests have been answered
    killed_flag = threading.Event()
    after_kill = Counter()                # answers (by status class) received after the worker was killed

    def answered(status: int) -> None:
        """Called under the lock for each response."""
        if sum(n for k, n in counts.items() if not k.startswith("connection error")) >= REQUESTS // 3:
            third.set()
        if killed_flag.is_set():
            after_kill[f"{status // 100}xx"] += 1

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(PER_CLIENT):
                if rnd.random() < 0.15:
                    card = str(uuid.uuid4())
                    try:
                        r = http.post("/cds-services/leukodx-patient-view/feedback", content=feedback_body(card),
                                      headers={"content-type": "application/json"})
                    except httpx.HTTPError as e:
                        with lock:
                            counts[f"connection error ({type(e).__name__})"] += 1
                        continue
                    with lock:
                        counts[f"feedback {r.status_code}"] += 1
                        if r.status_code == 200:
                            acked.add(card)
                        answered(r.status_code)
                    continue
                kind, path, body, ctype, expected = rnd.choice(items)
                try:
                    r = http.post(path, content=body, headers={"content-type": ctype})
                except httpx.HTTPError as e:
                    with lock:
                        counts[f"connection error ({type(e).__name__})"] += 1
                    continue
                ok = (r.status_code == 200 and r.json() == expected) if kind == "valid" else \
                    (r.status_code == 200 and without_report_tokens(r.json()) == expected) if kind == "cds" else \
                    (r.status_code == 422 and [x["loc"] for x in r.json()["errors"]] == expected)
                with lock:
                    counts[f"{kind} {r.status_code}"] += 1
                    if not ok:
                        wrong.append(f"{kind} {path} -> {r.status_code}")
                    answered(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    reached_a_third = third.wait(HANG_GUARD)
    workers = children(proc.pid)
    killed = workers[0] if workers else None
    if killed:
        os.kill(killed, signal.SIGKILL)
        killed_flag.set()
    for t in threads:
        t.join()
    alive_after = httpx.get(f"{base}/readyz", timeout=5).status_code

    # SIGKILL the whole server during a feedback burst, restart, count the acknowledged rows
    burst_acked: set[str] = set()
    enough_acked = threading.Event()

    def burst() -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            for _ in range(200):
                card = str(uuid.uuid4())
                try:
                    r = http.post("/cds-services/leukodx-patient-view/feedback", content=feedback_body(card),
                                  headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        burst_acked.add(card)
                        if len(burst_acked) >= BURST_ACKED_BEFORE_KILL:
                            enough_acked.set()

    burst_threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in burst_threads:
        t.start()
    enough_acked.wait(HANG_GUARD)     # kill while the burst is still writing (8 x 200 posts are far more than 40)
    os.killpg(proc.pid, signal.SIGKILL)
    for t in burst_threads:
        t.join()
    proc.wait()
    restarted = start(port, db)
    try:
        stored = {row["card"] for row in FeedbackStore(db).export()}
    finally:
        stop_server(restarted)

    total = sum(counts.values())
    five_xx = sum(n for k, n in counts.items() if k.split()[-1].startswith("5"))
    connection_errors = sum(n for k, n in counts.items() if k.startswith("connection error"))
    print(f"\nrequests {total} with {CLIENTS} clients; killed worker {killed}; answers after the kill "
          f"{dict(after_kill)}; by kind: {dict(sorted(counts.items()))}; 5xx: {five_xx}; wrong answers: "
          f"{len(wrong)}; connection errors: {connection_errors}; feedback acknowledged {len(acked)} "
          f"(+{len(burst_acked)} in the SIGKILL burst), found after restart {len(stored & (acked | burst_acked))}")
    assert reached_a_third and killed is not None
    assert total == REQUESTS                        # every request answered or counted as a connection error
    assert wrong == []
    assert five_xx == 0
    # the killed worker can break at most the connections it held: one per client at most
    assert connection_errors <= CLIENTS
    assert sum(after_kill.values()) > 0             # the other worker (and the replacement) went on answering
    assert alive_after == 200
    assert len(burst_acked) >= BURST_ACKED_BEFORE_KILL
    assert acked | burst_acked <= stored
