"""`leukodx serve`: uvicorn workers under a supervisor, with the connection limits uvicorn lacks.

* **Supervised, even with one worker.** ``uvicorn.run(workers=1)`` runs the server in the calling
  process: a worker that dies (a crash in C code, the kernel's OOM killer) takes the service with
  it. :func:`serve` always runs uvicorn's multiprocess supervisor (uvicorn 0.54: it pings each
  worker every half second, kills one that does not answer in ``worker_healthcheck_seconds`` and
  starts a replacement for any that died), and logs each replacement as a warning.
* **Timeouts on every connection state.** uvicorn closes an idle keep-alive connection after
  ``timeout_keep_alive``, but has no timer for a connection that never sends a request, sends its
  head slowly, or trickles its body. :class:`GuardedHttpToolsProtocol` adds them:
  ``header_timeout_seconds`` from the connection (or the first byte of a request) to the end of
  the request head, ``body_timeout_seconds`` from there to the end of the body; the connection is
  closed when one runs out. A request head is at most 64 KiB (400 above).
* **Limits.** At most ``max_connections`` open connections per worker (more are closed as soon
  as they are accepted, before anything is read) and at most ``limit_concurrency`` requests in
  progress per worker (more get 503 at once). uvicorn's own ``limit_concurrency`` also counts
  open connections, so idle connections could turn every request into a 503: it is left unset and
  the count of requests in progress is checked here instead. The soft limit on open files is
  raised to the hard limit at start-up.
* **Metrics across workers.** With more than one worker, each worker counts in prometheus-client's
  multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is a fresh temporary directory (removed at exit)
  unless the environment names one, whose ``*.db`` files are then cleared at start-up, as
  prometheus-client requires; ``/metrics`` adds up every worker's counts, those of replaced workers
  included (api/metrics.py).
* **Every waiting connection accepted at once** (api/accepting.py): uvloop's own server accepted one
  per turn of the event loop, so clients connecting to a busy worker waited up to a second.
* **Open connections spread evenly over the workers** (api/balance.py). The workers accept on one
  socket the supervisor binds, and each hands a new connection to the worker with the fewest open
  connections (itself among equals), so the counts stay within one of each other (the kernel's own
  spreading, ``SO_REUSEPORT``, had left 64 clients split 29/35 to 21/43 between two workers).
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from socket import socket
from typing import Any, Callable, Optional

import uvicorn.supervisors.multiprocess as uvicorn_multiprocess
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from .accepting import Acceptor
from .balance import LEDGER_ENV, Ledger
from .config import Settings, get_settings

__all__ = ["GuardedHttpToolsProtocol", "Supervisor", "serve", "MAX_HEAD_BYTES"]

log = logging.getLogger("leukodx.serve")
MAX_HEAD_BYTES = 64 * 1024
_PROBES = (b"/healthz", b"/readyz")      # answered whatever the load (GuardedHttpToolsProtocol)


class HeadTooLarge(Exception):
    """Raised inside the HTTP parser: uvicorn answers 400 and closes the connection."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout, a body timeout, a head size limit, a cap on
    open connections and a cap on requests in progress (all per worker process)."""

    _refused_logged_at = 0.0
    _receiving = 0          # requests of this worker whose body is still arriving
    on_closed: Optional[Callable[[], None]] = None    # told of every closed connection (Acceptor, balancing)
    # told of a connection idle between requests; True when it handed it to another worker (Acceptor, balancing)
    on_idle: Optional[Callable[[asyncio.Transport], bool]] = None

    def __init__(self, config: Config, server_state: Any, app_state: dict[str, Any],
                 _loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self._head_timeout = settings.header_timeout_seconds
        self._body_timeout = settings.body_timeout_seconds
        self._max_connections = settings.max_connections
        self._max_in_progress = settings.limit_concurrency
        self._guard: Optional[asyncio.TimerHandle] = None
        self._head_bytes = 0
        self._receiving_body = False
        self._begun = self._answered = 0      # requests whose first byte was read; responses sent in full

    # -- timers ---------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._guard = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _expire(self) -> None:
        self._guard = None
        if not self.transport.is_closing():
            self.transport.close()

    # -- connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            now = time.monotonic()
            if now - GuardedHttpToolsProtocol._refused_logged_at > 10:
                GuardedHttpToolsProtocol._refused_logged_at = now
                log.warning("connection limit reached; new connections are closed",
                            extra={"max_connections": self._max_connections})
            transport.abort()
            return
        self._arm(self._head_timeout)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        self._set_receiving(False)
        super().connection_lost(exc)
        if GuardedHttpToolsProtocol.on_closed is not None:
            GuardedHttpToolsProtocol.on_closed()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes between requests (a keep-alive connection starting its next request, or stray CRLFs
        # the parser skips) cancel uvicorn's keep-alive timer: the head timer takes over.
        if self._guard is None and not self.transport.is_closing() and \
                (self.cycle is None or self.cycle.response_complete) and self.timeout_keep_alive_task is None:
            self._arm(self._head_timeout)

    # -- parser callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._begun += 1
        super().on_message_begin()
        self._head_bytes = 0
        if self._guard is None:
            self._arm(self._head_timeout)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge()

    def on_headers_complete(self) -> None:
        # uvicorn answers 503 when limit_concurrency is set and reached; set it per request from the number of
        # requests in progress whose body has arrived (not from open connections, nor from requests still
        # sending their body: 260 bodies sent a byte a second had turned every request into a 503 for the 30 s
        # of the body timeout). The liveness and readiness probes are never refused: they answer from the loop.
        probe = self.url.split(b"?", 1)[0] in _PROBES and self.parser.get_method() in (b"GET", b"HEAD")
        busy = len(self.tasks) - GuardedHttpToolsProtocol._receiving
        self.limit_concurrency = 0 if busy >= self._max_in_progress and not probe else None
        super().on_headers_complete()
        self._arm(self._body_timeout)
        if self.limit_concurrency is None:     # refused requests have no task to count
            self._set_receiving(True)

    def on_message_complete(self) -> None:
        self._disarm()
        self._set_receiving(False)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # Idle: every request begun is answered, not a byte of another read (the parser holds nothing), and
        # the answer is out of leukodx's buffers. Only then may the connection move to another worker.
        self._answered += 1
        super().on_response_complete()
        if GuardedHttpToolsProtocol.on_idle is not None and self._answered == self._begun and not self.pipeline \
                and not self.transport.is_closing() and not self.transport.get_write_buffer_size():
            GuardedHttpToolsProtocol.on_idle(self.transport)

    def _set_receiving(self, receiving: bool) -> None:
        if receiving != self._receiving_body:
            self._receiving_body = receiving
            GuardedHttpToolsProtocol._receiving += 1 if receiving else -1


class WorkerServer(Server):
    """uvicorn's server, accepting on the supervisor's sockets with :class:`Acceptor`."""

    async def startup(self, sockets: Optional[list[socket]] = None) -> None:
        if sockets is None:                       # not started by the supervisor
            await super().startup(sockets)
            return
        await super().startup([])                 # lifespan, state; no listener of uvicorn's own
        if self.should_exit or not self.started:
            return
        config, loop = self.config, asyncio.get_running_loop()

        def create_protocol(_loop: Optional[asyncio.AbstractEventLoop] = None) -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self.server_state,  # type: ignore[call-arg]
                                              app_state=self.lifespan.state, _loop=_loop)
        ledger = _worker_ledger()
        open_connections = self.server_state.connections.__len__
        self.servers = []
        for sock in sockets:
            sock.listen(config.backlog)           # bound by the supervisor; listening is the server's part
            acceptor = Acceptor(loop, sock, create_protocol, config.ssl, ledger, open_connections)  # type: ignore[arg-type]
            self.servers.append(acceptor)         # type: ignore[arg-type]
        if ledger is not None:
            GuardedHttpToolsProtocol.on_closed = self.servers[0].connection_closed   # type: ignore[attr-defined]
            GuardedHttpToolsProtocol.on_idle = self.servers[0].hand_over_idle        # type: ignore[attr-defined]


def _worker_ledger() -> Optional[Ledger]:
    """This worker's slot in the supervisor's ledger of open connections (api/balance.py); None with
    one worker (no ledger), or when every slot is taken (the worker then serves what it accepts)."""
    directory = os.environ.get(LEDGER_ENV)
    if not directory or not os.path.isdir(directory):
        return None
    ledger = Ledger(directory)
    if ledger.claim():
        return ledger
    log.warning("no free slot in the workers' ledger; this worker accepts connections without balancing")
    ledger.close()
    return None


class WorkerProcess(Process):
    """A uvicorn worker process that stops itself (gracefully) when its supervisor is gone, so a
    supervisor killed with SIGKILL never leaves an orphan worker holding the port."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = WorkerServer(config=self.config)
        return self._server

    def target(self, sockets: Optional[list[socket]] = None) -> None:  # pragma: no cover - in the worker
        parent = os.getppid()

        def watch() -> None:
            while True:
                time.sleep(1.0)
                if os.getppid() != parent:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watch, daemon=True, name="leukodx-parent-watch").start()
        super().target(sockets)


class Supervisor(Multiprocess):
    """uvicorn's multiprocess supervisor, starting :class:`WorkerProcess` workers and logging each
    worker it replaces."""

    def keep_subprocess_alive(self) -> None:
        before = [p.pid for p in self.processes]
        super().keep_subprocess_alive()
        for old, new in zip(before, [p.pid for p in self.processes]):
            if old != new:
                log.warning("worker process died and was replaced", extra={"old_pid": old, "new_pid": new})


def _raise_open_files_limit() -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):   # not allowed here: keep the current limit
        pass


def uvicorn_config(settings: Settings, host: str, port: int, workers: int) -> Config:
    return Config("leukodx.api.app:app", factory=True, host=host, port=port, workers=max(1, workers),
                  http=GuardedHttpToolsProtocol, ws="none", lifespan="on", log_level="warning", access_log=False,
                  proxy_headers=bool(settings.forwarded_allow_ips),
                  forwarded_allow_ips=settings.forwarded_allow_ips or None, server_header=False, timeout_keep_alive=settings.keep_alive_seconds,
                  limit_concurrency=None, timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
                  timeout_graceful_shutdown=10)


def _metrics_dir(workers: int) -> Optional[str]:
    """Set up prometheus-client's multiprocess directory for the workers (inherited through the
    environment); returns the directory to remove at exit, if leukodx made it."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):   # counts of an earlier run would be added to this one's
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        return None
    if workers > 1:
        made = tempfile.mkdtemp(prefix="leukodx-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        return made
    return None


def _ledger(workers: int) -> Optional[str]:
    """With more than one worker, the directory of their ledger of open connections and of their
    inboxes (api/balance.py), named to them through the environment; returns it, to remove at exit."""
    if workers < 2:
        os.environ.pop(LEDGER_ENV, None)
        return None
    made = tempfile.mkdtemp(prefix="leukodx-workers-")
    Ledger.create(made, workers)
    os.environ[LEDGER_ENV] = made
    return made


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """Bind, start ``workers`` supervised worker processes, and run until SIGINT/SIGTERM."""
    from .middleware import configure_logging
    configure_logging(settings.log_level)
    _raise_open_files_limit()
    config = uvicorn_config(settings, host, port, workers)
    sock = config.bind_socket()                    # every worker listens and accepts on it
    uvicorn_multiprocess.Process = WorkerProcess   # type: ignore[misc] - the class the supervisor starts
    metrics_dir = _metrics_dir(config.workers)
    ledger = _ledger(config.workers)
    log.info("serving", extra={"host": host, "port": port, "workers": config.workers, "pid": os.getpid()})
    shown = f"[{host}]" if ":" in host else host
    print(f"leukodx listening on http://{shown}:{port}/ ({config.workers} worker{'s' if config.workers != 1 else ''}; "
          f"the page at /, the API at /v1, CDS Hooks at /cds-services)", flush=True)
    try:
        Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()
        if ledger:
            shutil.rmtree(ledger, ignore_errors=True)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
