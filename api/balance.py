"""Open connections spread evenly over the workers (least connections), by handing new ones over.

The kernel does not balance a server's connections by itself: on one shared listening socket the
worker that wakes first takes a whole burst (8 clients on one worker while the other idled), and with
``SO_REUSEPORT`` each connection goes to a worker by a hash of its addresses, so 64 clients split
29/35 to 21/43 between two workers: the fuller worker's requests waited up to twice as long, and set
the 99th percentile. Holding back from accepting until a less loaded worker takes the connection
balances, but paces a burst to a connection or two per turn of each worker's event loop (64 clients
took 300 ms to be accepted under load).

So a worker accepts whatever waits on the shared socket, as before, and gives each new connection
(before a byte of it is read) to the worker with the fewest open connections, itself when it is
among them: the socket is sent to that worker over a Unix datagram socket (``SCM_RIGHTS``), which
serves it as if it had accepted it. The counts stay within one of each other while the workers' views
of them are current; when they were not (a worker busy in its first requests, or still closing an
earlier client's connections, was given fewer of a burst: 17/47 and 28/36 measured), a worker two or
more above another moves its connections over, one at a time, each when it is idle between requests
(api/accepting.py ``hand_over_idle``).

The :class:`Ledger` is a small file the supervisor makes and every worker maps: one slot per worker
(its pid, its open connections, a heartbeat, how many sockets it has received and how many it has
sent to each slot), each field written only by the slot's worker. A worker's load is its open
connections plus the sockets sent to it and not yet received. Never handing to a worker that cannot
serve: a worker whose heartbeat (written every :data:`BEAT_SECONDS` by its event loop) is older than
:data:`STALE_SECONDS` (stopped, replaced, stuck in a long computation, not started yet) gets none; a
socket that cannot be sent (the other's queue full, the worker gone) is kept and served here.
"""
from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import struct
import time
from typing import Optional

__all__ = ["Ledger", "LEDGER_ENV", "BEAT_SECONDS", "STALE_SECONDS", "MAX_FDS_PER_MESSAGE"]

LEDGER_ENV = "LEUKODX_WORKER_LEDGER"     # the ledger's directory, set by the supervisor for its workers
BEAT_SECONDS = 0.1
STALE_SECONDS = 1.0
MAX_FDS_PER_MESSAGE = 64                 # well under the kernel's 253 per message
_HEAD = struct.Struct("<qqdq")           # pid, open connections, heartbeat (time.monotonic: one clock for all), received


class Ledger:
    """This worker's view of the shared ledger in ``directory`` (see the module's docstring)."""

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._fd = os.open(os.path.join(directory, "ledger"), os.O_RDWR)
        self._map = mmap.mmap(self._fd, os.fstat(self._fd).st_size)
        self._slots = struct.unpack_from("<q", self._map, 0)[0]
        self._sent = struct.Struct(f"<{self._slots}q")
        self._size = _HEAD.size + self._sent.size
        self.slot: Optional[int] = None
        self.inbox: Optional[socket.socket] = None      # where other workers' sockets arrive
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)
        self.connections = self.received = self._pid = 0
        self.sent = [0] * self._slots

    @staticmethod
    def create(directory: str, workers: int) -> None:
        """The supervisor's part: a ledger with room for ``workers`` and as many replacements."""
        slots = max(2, 2 * workers)
        with open(os.path.join(directory, "ledger"), "wb") as f:
            f.write(struct.pack("<q", slots) + bytes((_HEAD.size + 8 * slots) * slots))

    def _at(self, i: int) -> int:
        return 8 + i * self._size

    def _read(self, i: int) -> tuple[int, int, float, int]:
        return _HEAD.unpack_from(self._map, self._at(i))

    def claim(self) -> bool:
        """Take a free slot (never used, or its worker's process is gone) and open its inbox; False
        when every slot is taken."""
        pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for i in range(self._slots):
                owner = self._read(i)[0]
                if owner == 0 or (owner != pid and not _alive(owner)):
                    break
            else:
                return False
            # The counters go on from the slot's former worker's (the others' received counts include
            # what it sent); the sockets sent to it and never received went with it.
            self.received = sum(self._sent_by(j)[i] for j in range(self._slots) if j != i)
            self.slot, self.connections, self.sent, self._pid = i, 0, list(self._sent_by(i)), pid
            self.inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = self._inbox_path(i)
            if os.path.exists(path):
                os.unlink(path)
            self.inbox.bind(path)
            self.inbox.setblocking(False)
            self.update(0)
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _inbox_path(self, i: int) -> str:
        return os.path.join(self._dir, f"{i}.sock")

    def _sent_by(self, i: int) -> tuple[int, ...]:
        return self._sent.unpack_from(self._map, self._at(i) + _HEAD.size)

    def update(self, connections: int) -> None:
        """Record this worker's open connections, with a heartbeat."""
        self.connections = connections
        if self.slot is not None:
            _HEAD.pack_into(self._map, self._at(self.slot), self._pid, connections, time.monotonic(), self.received)

    def loads(self) -> dict[int, int]:
        """Each live worker's load (open connections, plus sockets sent to it not yet received),
        this worker's included, by slot."""
        now = time.monotonic()
        live = {i: h for i in range(self._slots) if (h := self._read(i))[0] and now - h[2] < STALE_SECONDS}
        if self.slot is not None:
            live[self.slot] = (0, self.connections, now, self.received)
        # every slot's sent counts, a stopped worker's too: what the others received from it is in their counts
        sent = [self._sent_by(i) for i in range(self._slots)]
        return {j: connections + max(0, sum(s[j] for s in sent) - received)
                for j, (_, connections, _, received) in live.items()}

    def send(self, slot: int, socks: list[socket.socket]) -> bool:
        """Hand ``socks`` (at most :data:`MAX_FDS_PER_MESSAGE`) to the worker of ``slot``; False (nothing
        sent) when that cannot be done now."""
        if not socks or len(socks) > MAX_FDS_PER_MESSAGE:
            return False
        try:
            # socket.send_fds would drop the address (Python 3.11)
            self._outbox.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno() for s in socks]))],
                                 0, self._inbox_path(slot))
        except OSError:      # its queue is full, or it has gone
            return False
        self.sent[slot] += len(socks)
        if self.slot is not None:
            self._sent.pack_into(self._map, self._at(self.slot) + _HEAD.size, *self.sent)
        return True

    def receive(self) -> list[socket.socket]:
        """The sockets other workers have handed to this one, waiting in its inbox."""
        got: list[socket.socket] = []
        while self.inbox is not None:
            try:
                _, fds, _, _ = socket.recv_fds(self.inbox, 16, MAX_FDS_PER_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            got += [socket.socket(fileno=fd) for fd in fds]
            self.received += len(fds)
        return got

    def release(self) -> None:
        """Give the slot back (the worker is stopping): no more sockets are sent to it."""
        if self.slot is not None:
            _HEAD.pack_into(self._map, self._at(self.slot), 0, 0, 0.0, self.received)
            self.slot = None

    def close(self) -> None:
        self.release()
        for s in (self.inbox, self._outbox):
            if s is not None:
                s.close()
        self._map.close()
        os.close(self._fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process has the pid now: the worker is gone
        return False
    return True
