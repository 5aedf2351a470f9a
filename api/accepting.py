"""Accepting connections in a worker: every waiting one at once, each served by the worker with the fewest.

uvloop's server (libuv) accepts one connection per turn of the event loop: 32 clients connecting
while a worker was busy waited up to a second for their first answer, one more accepted per round of
the others' requests (seen with strace: one ``accept4`` per loop turn). :class:`Acceptor` takes the
listening socket from uvicorn (api/serving.py) and accepts up to :data:`ACCEPT_BATCH` connections each
time it is readable, as asyncio's own server does; with more than one worker it hands each new one to
the worker with the fewest open connections (api/balance.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from socket import socket
from typing import Any, Callable, Optional

from .balance import BEAT_SECONDS, Ledger

__all__ = ["Acceptor", "ACCEPT_BATCH", "ACCEPT_RETRY_SECONDS", "REBALANCE_SECONDS"]

log = logging.getLogger("leukodx.serve")
# Connections accepted per readiness of the listening socket: a burst of new clients is taken in a
# turn or two, while one readiness cannot keep the loop from its requests for long.
ACCEPT_BATCH = 16
ACCEPT_RETRY_SECONDS = 1.0        # out of file descriptors: stop accepting this long (as asyncio does)
REBALANCE_SECONDS = 0.02          # at most one idle connection moved to another worker this often


class Acceptor:
    """Accepts connections on a listening socket, up to :data:`ACCEPT_BATCH` each time it is readable,
    and hands each to the event loop with ``protocol_factory``. With a ``ledger`` (more than one worker),
    each new connection goes to the worker with the fewest open connections, which may be another
    (api/balance.py), and connections other workers hand over are served here; ``open_connections``
    counts this worker's. It stands where uvicorn keeps the ``asyncio.Server`` it would have made
    (``close`` and ``wait_closed``, called at shutdown)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket, protocol_factory: Any, ssl: Any = None,
                 ledger: Optional[Ledger] = None, open_connections: Callable[[], int] = lambda: 0) -> None:
        self._loop, self._sock, self._factory, self._ssl = loop, sock, protocol_factory, ssl
        self._ledger, self._open = ledger, open_connections
        self._closed = False
        self._next_rebalance = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self.accept_waiting)
        if ledger is not None and ledger.inbox is not None:
            loop.add_reader(ledger.inbox.fileno(), self.take_handed_over)
            self._beat()

    def connections(self) -> int:
        """This worker's open connections, those accepted and not yet handed to a protocol included."""
        return self._open() + len(self._tasks)

    def accept_waiting(self) -> int:
        """Accept the connections waiting, at most :data:`ACCEPT_BATCH`; returns how many."""
        accepted: list[socket] = []
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:   # the client gave up before it was accepted
                continue
            except OSError as e:             # EMFILE, ENFILE, ENOBUFS: pause instead of spinning
                log.warning("cannot accept connections for now; retrying in %.0f s (%s)", ACCEPT_RETRY_SECONDS, e)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
                break
            accepted.append(conn)
        for conn in self._hand_over(accepted):
            self._serve(conn)
        return len(accepted)

    def _hand_over(self, accepted: list[socket]) -> list[socket]:
        """Send each accepted connection to the worker with the fewest (this one first among equals);
        returns those to serve here."""
        ledger = self._ledger
        if ledger is None or ledger.slot is None or not accepted:
            return accepted
        ledger.update(self.connections())
        loads, mine = ledger.loads(), ledger.slot
        kept, away = [], defaultdict(list)
        for conn in accepted:
            to = min(loads, key=lambda slot: (loads[slot], slot != mine))
            loads[to] += 1
            (kept if to == mine else away[to]).append(conn)
        for slot, conns in away.items():
            if ledger.send(slot, conns):
                for conn in conns:
                    conn.close()            # this worker's copy; the other worker has its own
            else:
                kept += conns
        return kept

    def hand_over_idle(self, transport: asyncio.Transport) -> bool:
        """Move a connection idle between requests to the worker with the fewest open connections when
        this one has two or more above it (at most one every :data:`REBALANCE_SECONDS`); True when it
        went. Connections that stay open keep the worker they were first given, and that split can be
        off: a worker busy in its first requests, or still closing an earlier client's connections, is
        given fewer of a burst (64 clients split 17/47 and 28/36, measured); its clients then wait less
        than the other worker's. The socket is sent as a new connection is (api/balance.py), and this
        worker's transport closed without a shutdown: the connection lives on in the other worker, a
        next request already sent included (it waits unread in the kernel). Not with TLS, whose state
        is in this process."""
        ledger = self._ledger
        if ledger is None or ledger.slot is None or self._ssl is not None or self._closed:
            return False
        now = self._loop.time()
        if now < self._next_rebalance:
            return False
        self._next_rebalance = now + REBALANCE_SECONDS
        ledger.update(self.connections())
        loads, mine = ledger.loads(), ledger.slot
        to = min(loads, key=lambda slot: (loads[slot], slot))
        sock = transport.get_extra_info("socket")
        if loads[mine] - loads[to] < 2 or sock is None:
            return False
        try:
            copy = socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return False
        try:
            if not ledger.send(to, [copy]):
                return False
        finally:
            copy.close()                    # the other worker has its own; the transport still has this one's
        transport.abort()                   # a close() of this worker's descriptor only: no FIN, no reset
        return True

    def take_handed_over(self) -> None:
        """Serve the connections other workers have handed to this one."""
        if self._ledger is not None:
            for conn in self._ledger.receive():
                self._serve(conn)

    def _serve(self, conn: socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._ledger is not None:
            self._ledger.update(self.connections())

    async def _connect(self, conn: socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except OSError:   # reset before its transport was made
            conn.close()

    def connection_closed(self) -> None:
        """One of this worker's connections closed: the other workers see the new count."""
        if self._ledger is not None and not self._closed:
            self._ledger.update(self.connections())

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self.accept_waiting)

    def _beat(self) -> None:
        if not self._closed and self._ledger is not None:
            self._ledger.update(self.connections())
            self._loop.call_later(BEAT_SECONDS, self._beat)

    def close(self) -> None:
        """Stop accepting. With a ledger: leave it, so no more connections are handed to this worker,
        and serve those handed over already (the graceful shutdown finishes their requests)."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())
            if self._ledger is not None:
                self._ledger.release()
                self.take_handed_over()
                if self._ledger.inbox is not None:
                    self._loop.remove_reader(self._ledger.inbox.fileno())
                self._ledger.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
