"""Issue 12, findings 1, 7 and 8 on the real `leukodx serve`: a worker that dies is replaced even
with one worker; idle, slow-head and slow-body connections are closed; open connections are capped;
a killed supervisor leaves no worker behind; serving with CDS auth on needs the public base URL."""
from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import LEUKODX, free_port, start_server, stop_server
from leukodx.api import balance
from leukodx.api.balance import Ledger
from leukodx.api import accepting
from leukodx.api.accepting import ACCEPT_BATCH, Acceptor
from test_load_faults import children


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes ``sock`` within ``seconds`` (reading and discarding any answer)."""
    sock.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except (socket.timeout, TimeoutError):
        return False
    return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db", workers=1,
                        LEUKODX_CDS_AUTH="off", LEUKODX_HEADER_TIMEOUT_SECONDS="1",
                        LEUKODX_BODY_TIMEOUT_SECONDS="2", LEUKODX_KEEP_ALIVE_SECONDS="1",
                        LEUKODX_MAX_CONNECTIONS="16", LEUKODX_LOG_LEVEL="WARNING")
    yield proc, port
    stop_server(proc)


def connect(port: int, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    return sock


@pytest.mark.parametrize("payload", [
    b"",                                                        # connects and says nothing
    b"POST /v1/assess HTTP/1.1\r\nHost: x\r\n",                 # a head that never ends
    b"POST /v1/assess HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
])
def test_idle_slow_head_and_slow_body_connections_are_closed(server, payload):
    _, port = server
    with connect(port, payload) as sock:
        assert _closed_within(sock, 15)


def test_a_keep_alive_connection_that_goes_quiet_is_closed(server):
    _, port = server
    with connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        assert b"200 OK" in sock.recv(4096)
        sock.sendall(b"\r\n")            # a byte between requests cancels uvicorn's own keep-alive timer
        assert _closed_within(sock, 15)


def test_a_huge_request_head_is_refused(server):
    _, port = server
    with connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n") as sock:
        assert sock.recv(64).startswith(b"HTTP/1.1 400")


def test_a_killed_worker_is_replaced_with_one_worker(server):
    proc, port = server
    workers = [p for p in children(proc.pid) if _is_worker(p)]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                new = [p for p in children(proc.pid) if _is_worker(p)]
                if new and new != workers:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("the worker was not replaced")


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" not in f.read()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """A server with a long head timeout, at most 8 open connections and 1 request in progress (one worker)."""
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path_factory.mktemp('db')}/fb.db", workers=1,
                        LEUKODX_CDS_AUTH="off", LEUKODX_HEADER_TIMEOUT_SECONDS="60", LEUKODX_MAX_CONNECTIONS="8",
                        LEUKODX_LIMIT_CONCURRENCY="1", LEUKODX_LOG_LEVEL="WARNING", LEUKODX_FHIR_ALLOW_LOOPBACK="true")
    yield proc, port
    try:
        stop_server(proc)
    except ProcessLookupError:
        pass


def test_open_connections_are_capped(capped):
    _, port = capped
    held = [connect(port) for _ in range(8)]
    try:
        time.sleep(0.5)
        with connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as extra:
            extra.settimeout(10)
            try:
                answer = extra.recv(64)
            except ConnectionResetError:
                answer = b""
            assert answer == b""               # closed without an answer: the cap is 8
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("/healthz did not answer once the connections were closed")


def test_requests_beyond_the_concurrency_limit_get_503_but_never_the_probes(capped):
    """The limit (1 here) counts requests in progress: not one whose body is still arriving (260 bodies sent a
    byte a second had turned every request, /healthz included, into a 503 for the 30 s of the body timeout),
    and never the liveness and readiness probes."""
    _, port = capped
    base = f"http://127.0.0.1:{port}"
    case = b'{"labs": [{"test": "wbc", "value": 5, "unit": "10^9/L"}]}'
    json_type = {"Content-Type": "application/json"}
    with connect(port, b"POST /v1/assess HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{"):
        time.sleep(0.5)
        assert httpx.post(f"{base}/v1/assess", content=case, headers=json_type, timeout=10).status_code == 200
        # a request in progress: a CDS call waiting for a FHIR server that never answers (the fetch deadline)
        with socket.create_server(("127.0.0.1", 0)) as silent:
            hook = {"hook": "patient-view", "hookInstance": "d8f4c7b0-0000-4000-8000-000000000001",
                    "fhirServer": f"http://127.0.0.1:{silent.getsockname()[1]}/fhir",
                    "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                          "scope": "patient/*.read", "subject": "leukodx"},
                    "context": {"userId": "Practitioner/1", "patientId": "p1"}}
            waiting = threading.Thread(target=lambda: httpx.post(f"{base}/cds-services/leukodx-patient-view",
                                                                 json=hook, timeout=30))
            waiting.start()
            time.sleep(1.0)
            assert httpx.post(f"{base}/v1/assess", content=case, headers=json_type, timeout=10).status_code == 503
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
            waiting.join()
    assert httpx.post(f"{base}/v1/assess", content=case, headers=json_type, timeout=10).status_code == 200


def test_a_killed_supervisor_leaves_no_worker_behind(capped):
    proc, _ = capped
    workers = [p for p in children(proc.pid) if _is_worker(p)]
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_serve_refuses_cds_auth_without_a_public_base_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKODX_")}
    env["LEUKODX_FEEDBACK_DB_URL"] = f"sqlite:///{tmp_path}/fb.db"
    out = subprocess.run([LEUKODX, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "LEUKODX_CDS_PUBLIC_BASE_URL" in out.stderr


@pytest.mark.parametrize("trusted", ["127.0.0.1", ""])
def test_forwarded_headers_are_believed_only_from_the_listed_proxies(tmp_path, trusted):
    """LEUKODX_FORWARDED_ALLOW_IPS: behind a TLS proxy at 127.0.0.1, X-Forwarded-Proto: https makes
    the URLs leukodx builds (the card's report link) https; unset, a caller's header is ignored."""
    from test_cds_hooks import CBC_SEVERE, prefetch, request
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path}/fb.db", LEUKODX_CDS_AUTH="off", LEUKODX_CDS_PUBLIC_BASE_URL="",
                        LEUKODX_FORWARDED_ALLOW_IPS=trusted)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/cds-services/leukodx-patient-view", timeout=30,
                       json=request("patient-view", prefetch(CBC_SEVERE)),
                       headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    finally:
        stop_server(proc)
    assert r.status_code == 200, r.text
    url = next(lk["url"] for c in r.json()["cards"] for lk in c.get("links", []))
    assert url.startswith(f"{'https' if trusted else 'http'}://127.0.0.1:{port}/report/"), url


# -- accepting: every waiting connection, not one per turn of the event loop -----------------------

class _Made(asyncio.Protocol):
    made: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:   # type: ignore[override]
        _Made.made.append(transport)


def test_a_burst_of_waiting_connections_is_accepted_together():
    """uvloop's own server accepted one connection per loop turn: a burst of clients waited up to a
    second behind the requests in progress. The acceptor takes every waiting one, a batch at a time."""
    async def scenario() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        _Made.made = []
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            clients = [socket.create_connection(listener.getsockname()) for _ in range(ACCEPT_BATCH + 4)]
            acceptor = Acceptor(loop, listener, _Made)
            acceptor.close()                      # turns driven here, not by the loop
            counts = [acceptor.accept_waiting() for _ in range(3)]
            await acceptor.wait_closed()
            for c in clients:
                c.close()
            made = len(_Made.made)
            for t in _Made.made:
                t.close()
            return counts, made
    counts, made = asyncio.run(scenario())
    assert counts == [ACCEPT_BATCH, 4, 0]
    assert made == ACCEPT_BATCH + 4


def test_accepting_pauses_when_out_of_file_descriptors(monkeypatch, caplog):
    class OutOfFiles(socket.socket):
        def accept(self):  # type: ignore[override]
            raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(accepting, "ACCEPT_RETRY_SECONDS", 0.05)

    async def scenario() -> tuple[int, bool, bool]:
        loop = asyncio.get_running_loop()
        with OutOfFiles() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            acceptor = Acceptor(loop, listener, _Made)
            accepted = acceptor.accept_waiting()
            watched_while_paused = loop.remove_reader(listener.fileno())   # False: not watched
            await asyncio.sleep(0.2)
            watched_again = loop.remove_reader(listener.fileno())          # True: watched again
            return accepted, watched_while_paused, watched_again
    accepted, paused, resumed = asyncio.run(scenario())
    assert (accepted, paused, resumed) == (0, False, True)
    assert "cannot accept connections for now" in caplog.text


# -- open connections spread evenly over the workers (api/balance.py) ------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_two_worker_server_serves_half_the_connections_in_each_worker(tmp_path):
    """The kernel's own spreading (SO_REUSEPORT) split 64 clients 29/35 to 21/43 between two workers (the
    odds of a split within 2 by chance are about 1 in 3); on one shared socket the worker that woke
    first took whole bursts."""
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path}/fb.db", workers=2, LEUKODX_CDS_AUTH="off",
                        LEUKODX_LOG_LEVEL="WARNING")
    try:
        workers = _two_workers_ready(proc)
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) for _ in range(64)]
        for c in clients:
            assert c.get("/healthz").status_code == 200
        per_worker = _split(workers, port, 64)
        for c in clients:
            c.close()
        assert sum(per_worker) == 64
        assert per_worker[1] - per_worker[0] <= 2, per_worker
    finally:
        stop_server(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_connections_left_uneven_move_to_the_worker_with_fewer_and_lose_nothing(tmp_path):
    """Connections stay with the worker they were first given, and that split can be off (a worker busy in
    its first requests is given fewer of a burst: 17/47 measured). A worker two or more above another moves
    a connection idle between requests to it: 16 of one worker's clients leave, and the other's move
    over while every client goes on being answered on its own connection, two requests sent at once
    (pipelined) included, each answered once and in order."""
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path}/fb.db", workers=2, LEUKODX_CDS_AUTH="off",
                        LEUKODX_LOG_LEVEL="WARNING")
    try:
        workers = _two_workers_ready(proc)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(48)]
        for c in clients:
            assert _answers(c, 1) == [200]
        held = _settled_ports(workers, port, 48)      # the split a burst got (22/26 to 19/29 seen): not judged here
        fewer = min(workers, key=lambda pid: len(held[pid]))
        assert sum(len(p) for p in held.values()) == 48 and len(held[fewer]) >= 16, held
        leaving = [c for c in clients if c.getsockname()[1] in held[fewer]][:16]      # uneven by 12 or more
        for c in leaving:
            c.close()
        staying = [c for c in clients if c not in leaving]
        time.sleep(0.3)                               # the closes counted in the ledger
        before = _split(workers, port, 32)
        assert sum(before) == 32 and before[1] - before[0] >= 12, before
        for round_ in range(30):
            for c in staying:
                assert _answers(c, 2 if round_ % 3 == 0 else 1) == [200] * (2 if round_ % 3 == 0 else 1)
            time.sleep(0.03)
        per_worker = _split(workers, port, 32)
        assert sum(per_worker) == 32 and per_worker[1] - per_worker[0] <= 2, per_worker
        assert {c.getsockname()[1] for c in staying} == set().union(*(_client_ports(pid, port) for pid in workers))
        for c in staying:
            c.close()
    finally:
        stop_server(proc)


def _two_workers_ready(proc: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 60
    while len(workers := [p for p in children(proc.pid) if _is_worker(p)]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{workers[0]}/environ").read_text().split("\0") if "=" in kv)
    view = Ledger(env[balance.LEDGER_ENV])        # read only: never claims a slot
    while len(view.loads()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)                           # the second worker is up once it beats
    view.close()
    return workers


def _answers(conn: socket.socket, n: int) -> list[int]:
    """Send ``n`` GET /healthz at once on a kept-alive connection; the statuses of the ``n`` answers."""
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * n)
    got, statuses = b"", []
    while len(statuses) < n:
        head, sep, rest = got.partition(b"\r\n\r\n")
        if sep:
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            if len(rest) >= length:
                statuses.append(int(head.split(b" ", 2)[1]))
                got = rest[length:]
                continue
        chunk = conn.recv(65536)
        assert chunk, "the connection was closed"
        got += chunk
    assert got == b""                             # nothing more than asked for
    return statuses


def _settled_ports(workers: list[int], port: int, total: int, seconds: float = 5.0) -> dict[int, set[int]]:
    """Each worker's client ports once no connection is being handed over (for a moment both processes hold
    a socket that moves), read again until the same split is seen twice with ``total`` in all."""
    deadline, last = time.monotonic() + seconds, None
    while True:
        held = {pid: _client_ports(pid, port) for pid in workers}
        if (held == last and sum(len(p) for p in held.values()) == total) or time.monotonic() > deadline:
            return held
        last = held
        time.sleep(0.05)


def _split(workers: list[int], port: int, total: int) -> list[int]:
    """How many connections each worker holds, fewest first, read once no connection is being handed over
    (the two processes' tables are read one after the other: CI once counted 31 + 32 of 64 mid-move)."""
    return sorted(len(ports) for ports in _settled_ports(workers, port, total).values())


def _client_ports(pid: int, port: int) -> set[int]:
    """The client ports of the TCP connections to ``port`` that process ``pid`` holds open."""
    inodes = _socket_inodes(pid)
    return {int(cols[2].rsplit(":", 1)[1], 16) for cols in _tcp_rows(port) if cols[9] in inodes}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _tcp_rows(port: int) -> list[list[str]]:
    """The established TCP connections whose local port is ``port`` (the kernel's table, split)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(f":{port:04X}") and cols[3] == "01":
                rows.append(cols)
    return rows


def test_a_second_server_on_a_port_in_use_is_refused_not_joined(tmp_path):
    """A second leukodx on the same port (an old version left running during a deploy) must not join
    the first and take part of its connections: it is refused."""
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path}/fb.db", workers=1, LEUKODX_CDS_AUTH="off",
                        LEUKODX_LOG_LEVEL="WARNING")
    try:
        second = subprocess.run([LEUKODX, "serve", "--port", str(port), "--workers", "1"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "LEUKODX_CDS_AUTH": "off",
                                                           "LEUKODX_FEEDBACK_DB_URL": f"sqlite:///{tmp_path}/2.db"})
        assert second.returncode != 0
        assert "address already in use" in (second.stdout + second.stderr).lower()
    finally:
        stop_server(proc)
