"""Open connections spread evenly over the workers (api/balance.py): the ledger's counts, the hand-over
of a new connection to the worker with the fewest, and the real two-worker server."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from leukodx.api import balance, serving
from leukodx.api.balance import Ledger
from leukodx.api.accepting import Acceptor


@pytest.fixture
def ledger_dir(tmp_path):
    Ledger.create(str(tmp_path), workers=2)      # 4 slots
    yield str(tmp_path)


def test_each_worker_takes_its_own_slot_and_sees_the_others_load(ledger_dir):
    a, b = Ledger(ledger_dir), Ledger(ledger_dir)
    try:
        assert a.claim() and b.claim()
        assert (a.slot, b.slot) == (0, 1)
        a.update(3)
        b.update(1)
        assert a.loads() == b.loads() == {0: 3, 1: 1}
    finally:
        a.close()
        b.close()


def test_a_handed_over_socket_reaches_the_other_worker_and_counts_as_its_load_on_the_way(ledger_dir):
    a, b = Ledger(ledger_dir), Ledger(ledger_dir)
    here, there = socket.socketpair()
    try:
        a.claim(), b.claim()
        a.update(0)
        b.update(1)
        assert a.send(b.slot, [here])
        here.close()                                 # the sender's copy; the receiver has its own
        assert a.loads()[b.slot] == 2                 # one open, one on its way
        [got] = b.receive()
        there.sendall(b"ping")
        got.settimeout(5)
        assert got.recv(4) == b"ping"                 # the same connection, now in the other worker
        b.update(2)                                   # the receiver counts it among its own
        assert a.loads()[b.slot] == 2
        assert b.receive() == []
        got.close()
    finally:
        there.close()
        a.close()
        b.close()


def test_nothing_is_sent_to_a_worker_that_cannot_take_it(ledger_dir):
    a = Ledger(ledger_dir)
    here, there = socket.socketpair()
    try:
        a.claim()
        assert not a.send(3, [here])                 # no worker on that slot: no inbox
        assert not a.send(3, [])
        assert a.sent == [0, 0, 0, 0]
        assert not a.send(0, [here] * (balance.MAX_FDS_PER_MESSAGE + 1))
    finally:
        here.close()
        there.close()
        a.close()


def test_a_worker_whose_heartbeat_is_old_or_that_left_gets_nothing(ledger_dir, monkeypatch):
    a, b = Ledger(ledger_dir), Ledger(ledger_dir)
    try:
        a.claim(), b.claim()
        a.update(5)
        b.update(0)
        now = time.monotonic()
        monkeypatch.setattr(balance.time, "monotonic", lambda: now + balance.STALE_SECONDS + 0.5)
        assert a.loads() == {0: 5}                    # b stuck: left out; a counts itself
        monkeypatch.undo()
        assert a.loads() == {0: 5, 1: 0}
        b.release()
        assert a.loads() == {0: 5}
    finally:
        a.close()
        b.close()


def test_a_replacement_takes_the_slot_of_a_worker_that_died_and_its_counts_carry_on(ledger_dir):
    code = ("import sys, socket; from leukodx.api.balance import Ledger; l = Ledger(sys.argv[1]); l.claim(); "
            "a, b = socket.socketpair(); assert l.send(0, [a]); l.update(7)")   # no release: it dies holding slot 1
    a = Ledger(ledger_dir)
    try:
        a.claim()
        subprocess.run([sys.executable, "-c", code, ledger_dir], check=True, timeout=60)
        assert a.loads()[0] == 1                      # a socket on its way to a
        [got] = a.receive()
        got.close()
        assert a.loads()[0] == 0
        replacement = Ledger(ledger_dir)
        try:
            assert replacement.claim() and replacement.slot == 1
            assert replacement.sent[0] == 1           # the dead worker's count, carried on
            assert a.loads() == {0: 0, 1: 0}
        finally:
            replacement.close()
    finally:
        a.close()


def test_sockets_on_their_way_still_count_after_an_earlier_sender_stopped(ledger_dir):
    """What a stopped worker sent is in the receiver's received count, so its sent count must stay in the sum,
    or a socket another worker has on its way would be hidden."""
    a, b, c = Ledger(ledger_dir), Ledger(ledger_dir), Ledger(ledger_dir)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        a.claim(), b.claim(), c.claim()
        b.update(0)
        assert a.send(b.slot, [pairs[0][0]])
        [got] = b.receive()                           # received, not yet counted among b's connections
        got.close()
        b.update(1)
        assert c.send(b.slot, [pairs[1][0]])          # on its way
        a.release()
        assert c.loads()[b.slot] == 2
    finally:
        for pair in pairs:
            for s in pair:
                s.close()
        for ledger in (a, b, c):
            ledger.close()


def test_with_every_slot_taken_a_worker_serves_without_balancing(ledger_dir, monkeypatch, caplog):
    held = [Ledger(ledger_dir) for _ in range(4)]
    try:
        assert all(h.claim() for h in held)
        monkeypatch.setenv(balance.LEDGER_ENV, ledger_dir)
        assert serving._worker_ledger() is None
        assert "no free slot" in caplog.text
        monkeypatch.delenv(balance.LEDGER_ENV)
        assert serving._worker_ledger() is None      # one worker: no ledger at all
    finally:
        for h in held:
            h.close()


def _recorder() -> tuple[type[asyncio.Protocol], list[asyncio.BaseTransport]]:
    made: list[asyncio.BaseTransport] = []

    class Made(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:   # type: ignore[override]
            made.append(transport)
    return Made, made


def test_a_burst_accepted_by_one_worker_is_shared_with_the_other(ledger_dir):
    """One worker woke first and accepted the whole burst; half of it is served by the other."""
    async def scenario() -> tuple[set, set, set]:
        loop = asyncio.get_running_loop()
        first, second = Ledger(ledger_dir), Ledger(ledger_dir)
        first.claim(), second.claim()
        made_first, on_first = _recorder()
        made_second, on_second = _recorder()
        with socket.socket() as listener, socket.socket() as idle:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            idle.bind(("127.0.0.1", 0))
            idle.listen(1)                            # the second worker's turn never comes for the burst
            one = Acceptor(loop, listener, made_first, ledger=first, open_connections=lambda: 0)
            two = Acceptor(loop, idle, made_second, ledger=second, open_connections=lambda: 0)
            clients = [socket.create_connection(listener.getsockname()) for _ in range(10)]
            await asyncio.sleep(0.1)                  # accepted, handed over, received
            peers = {c.getsockname() for c in clients}
            got_first = {t.get_extra_info("peername") for t in on_first}
            got_second = {t.get_extra_info("peername") for t in on_second}
            for t in on_first + on_second:
                t.close()
            for c in clients:
                c.close()
            one.close()
            two.close()
            await one.wait_closed()
            await two.wait_closed()
            return peers, got_first, got_second
    peers, got_first, got_second = asyncio.run(scenario())
    assert len(got_first) == len(got_second) == 5
    assert got_first | got_second == peers
