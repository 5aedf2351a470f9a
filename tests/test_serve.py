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

import httpx
import pytest

from conftest import LEUKODX, free_port, start_server, stop_server
from leukodx.api import serving
from leukodx.api.serving import ACCEPT_BATCH, Acceptor
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

    monkeypatch.setattr(serving, "ACCEPT_RETRY_SECONDS", 0.05)

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


# -- the kernel spreads connections over the workers (SO_REUSEPORT, Linux) --------------------------

def _accept_all(sock: socket.socket) -> int:
    sock.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux")
def test_each_worker_listens_on_its_own_socket_and_new_connections_are_spread():
    """On one shared socket the worker that woke first took a whole burst (8 clients on one worker,
    the other idle). The supervisor's socket reserves the port without listening; each worker's own
    socket on the same address gets a share of the connections."""
    from uvicorn.config import Config
    shared = serving.bind_socket(Config("leukodx.api.app:app", host="127.0.0.1", port=free_port()))
    a, b = serving.worker_listener(shared, 64), serving.worker_listener(shared, 64)
    try:
        assert len({id(shared), id(a), id(b)}) == 3
        assert a.getsockname() == b.getsockname() == shared.getsockname()
        clients = [socket.create_connection(shared.getsockname(), timeout=5) for _ in range(32)]
        time.sleep(0.2)                              # every handshake done before counting
        on_a, on_b = _accept_all(a), _accept_all(b)
        for c in clients:
            c.close()
        assert on_a + on_b == 32                     # all reached a worker's socket, none the supervisor's
        assert on_a > 0 and on_b > 0                 # both got some (all 32 on one: odds 2 in 4 billion)
    finally:
        for s in (shared, a, b):
            s.close()


def test_a_socket_without_reuseport_is_shared_and_listened_on():
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        assert serving.worker_listener(plain, 8) is plain
        with socket.create_connection(plain.getsockname(), timeout=5):
            assert _accept_all(plain) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/tcp")
def test_a_two_worker_server_listens_on_two_sockets(tmp_path):
    port = free_port()
    proc = start_server(port, f"sqlite:///{tmp_path}/fb.db", workers=2, LEUKODX_CDS_AUTH="off",
                        LEUKODX_LOG_LEVEL="WARNING")
    def listening() -> int:
        return sum(1 for line in open("/proc/net/tcp").read().splitlines()[1:]
                   if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")
    try:
        deadline = time.monotonic() + 60             # /readyz answers once the first worker is ready
        while listening() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening() == 2
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        stop_server(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")
def test_a_second_server_on_a_port_in_use_is_refused_not_joined(tmp_path):
    """SO_REUSEPORT would let a second leukodx on the same port join the first and take half its
    connections (an old version left running during a deploy): it is refused, as before."""
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
