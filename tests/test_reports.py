"""The report behind a CDS card's link (api/reports.py): written on the event loop for
SQLite, the reports of calls ready in the same turn of the loop in one transaction and, behind
another process's lock, queued and batched, never sleeping in a lock wait there, and committed
before its token is handed out."""
from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from sqlalchemy import delete, func, insert, select

from leukodx.api import reports
from leukodx.api.config import Settings
from leukodx.api.feedback import ReportStore, report_store_for, reset_cache


@pytest.fixture
def settings(tmp_path):
    reset_cache()
    yield Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path}/fb.db", report_link_minutes=5)
    reset_cache()


def _other_process_writing(settings: Settings) -> sqlite3.Connection:
    """Another process's write transaction on the same database (it holds SQLite's write lock)."""
    report_store_for(settings.feedback_db_url)                 # the database exists, migrated
    other = sqlite3.connect(settings.feedback_db_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_reports_queued_behind_a_lock_go_in_one_transaction_and_each_opens_its_own(settings, monkeypatch):
    written = []
    real = ReportStore.try_put_many

    def counted(self, bodies, minutes, now=None):
        tokens = real(self, bodies, minutes, now)
        if tokens is not None:
            written.append(len(bodies))
        return tokens
    monkeypatch.setattr(ReportStore, "try_put_many", counted)
    first = asyncio.run(reports.store_report(settings, '{"call": "alone"}'))   # alone: a transaction of its own
    assert written == [1] and json.loads(report_store_for(settings.feedback_db_url).get(first)) == {"call": "alone"}

    other = _other_process_writing(settings)

    async def calls() -> list[str]:
        pending = asyncio.gather(*(reports.store_report(settings, json.dumps({"call": i})) for i in range(30)))
        for _ in range(5):
            await asyncio.sleep(0.01)
        other.execute("COMMIT")
        return await pending
    tokens = asyncio.run(calls())
    other.close()
    store = report_store_for(settings.feedback_db_url)
    assert [json.loads(store.get(t))["call"] for t in tokens] == list(range(30))   # committed, each its own
    assert len(set(tokens)) == 30
    assert sum(written[1:]) == 30 and len(written[1:]) < 30


def test_reports_of_calls_in_the_same_turn_of_the_loop_share_one_transaction(settings, monkeypatch):
    written = []
    real = ReportStore.try_put_many

    def counted(self, bodies, minutes, now=None):
        tokens = real(self, bodies, minutes, now)
        written.append(len(bodies) if tokens is not None else 0)
        return tokens
    monkeypatch.setattr(ReportStore, "try_put_many", counted)

    async def calls() -> list[str]:
        alone = await reports.store_report(settings, json.dumps({"call": "alone"}))
        together = await asyncio.gather(*(reports.store_report(settings, json.dumps({"call": i})) for i in range(8)))
        return [alone, *together]
    tokens = asyncio.run(calls())
    assert written == [1, 8]                      # one transaction each time, none refused
    store = report_store_for(settings.feedback_db_url)
    assert [json.loads(store.get(t))["call"] for t in tokens] == ["alone", *range(8)] and len(set(tokens)) == 9


def test_answers_whose_reports_are_stored_go_out_before_a_new_call_starts_its_work(settings):
    """A call that arrives in the loop's turn in which earlier calls' reports are committed waits one turn,
    so those calls send their answers first (without it, its work ran before they resumed); a call
    arriving when no answer waits does not wait, and a cancelled caller leaves no answer waiting."""
    events: list[str] = []

    async def earlier(i: int) -> None:
        await reports.store_report(settings, json.dumps({"call": i}))
        events.append(f"answer {i}")

    async def arriving() -> None:
        await reports.answers_first()
        events.append("new work")

    async def scenario() -> tuple[list[str], list[int], list[str]]:
        await reports.store_report(settings, "{}")               # the store opened and the writer idle
        house = reports._batch(settings).housekeeping            # and its first purge over: a purge holding the
        if house is not None:                                    # database's lock made the writer retry a turn
            await house                                          # later (the test failed once on a busy machine)
        calls = [asyncio.get_running_loop().create_task(earlier(i)) for i in range(3)]
        await asyncio.sleep(0)            # the calls queued their reports; the writer runs in the next turn
        new = asyncio.get_running_loop().create_task(arriving())    # in the writer's turn, behind it
        await asyncio.gather(*calls, new)
        after = list(reports._resuming())
        alone: list[str] = []
        start = asyncio.get_running_loop().create_task(arriving())  # nothing waits: no turn lost
        start.add_done_callback(lambda _: alone.append("done"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        cancelled = asyncio.get_running_loop().create_task(reports.store_report(settings, "{}"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        await asyncio.sleep(0.01)
        return after, list(reports._resuming()), alone
    after, after_cancel, alone = asyncio.run(scenario())
    assert events[:4] == ["answer 0", "answer 1", "answer 2", "new work"]
    assert after == [0] and after_cancel == [0]
    assert alone == ["done"]


def test_a_report_waits_for_another_process_lock_without_holding_the_event_loop(settings):
    """Another process holds SQLite's write lock: the report is written once it lets go, and the
    event loop runs other work meanwhile (a write sleeping in SQLite's lock wait would stop it)."""
    other = _other_process_writing(settings)

    async def scenario() -> tuple[bool, str]:
        write = asyncio.ensure_future(reports.store_report(settings, '{"x": 1}'))
        for _ in range(5):                                     # the loop is free while the write waits
            await asyncio.sleep(0.01)
        finished_while_locked = write.done()
        other.execute("COMMIT")
        return finished_while_locked, await write
    finished_while_locked, token = asyncio.run(scenario())
    other.close()
    assert finished_while_locked is False
    assert report_store_for(settings.feedback_db_url).get(token) == '{"x": 1}'


def test_a_report_gives_up_when_the_database_stays_locked(settings, monkeypatch):
    monkeypatch.setattr(reports, "LOCK_WAIT_SECONDS", 0.05)
    other = _other_process_writing(settings)
    try:
        with pytest.raises(TimeoutError, match="stayed locked"):
            asyncio.run(reports.store_report(settings, '{"x": 1}'))
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_the_log_is_copied_into_the_database_in_a_thread_and_durable_writes_keep_their_settings(settings, monkeypatch):
    """The report insert runs on the loop with relaxed settings (no lock wait, no flush, no
    checkpoint); the pooled connection goes back with the durable ones that feedback and token ids
    are written with, and the checkpoint runs in a worker thread."""
    import threading
    from leukodx.api.feedback import FeedbackStore
    monkeypatch.setattr(reports, "CHECKPOINT_EVERY", 3)
    loop_threads, checkpoint_threads = [], []
    real = FeedbackStore.checkpoint

    def recorded(self):
        checkpoint_threads.append(threading.current_thread())
        return real(self)
    monkeypatch.setattr(FeedbackStore, "checkpoint", recorded)

    async def writes() -> None:
        loop_threads.append(threading.current_thread())
        for i in range(4):
            await reports.store_report(settings, json.dumps({"call": i}))
            batch = next(b for (loop, b) in reports._BATCHES.values() if loop is asyncio.get_running_loop())
            if batch.housekeeping:
                await batch.housekeeping                     # the first write's purge, the third's checkpoint
    database = Path(settings.feedback_db_url.removeprefix("sqlite:///"))
    report_store_for(settings.feedback_db_url)
    before = database.stat().st_size
    asyncio.run(writes())
    assert len(checkpoint_threads) == 1 and checkpoint_threads[0] is not loop_threads[0]
    assert database.stat().st_size > before + 3 * 4096          # the reports reached the database file
    engine = report_store_for(settings.feedback_db_url).store.engine
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2            # FULL
        assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000


def test_a_restart_checkpoint_only_when_the_log_holds_more_than_the_limit(settings, monkeypatch):
    """RESTART holds the workers' writes back, so it is for a log that PASSIVE could not keep short; the
    log file keeps its largest size after a restart, so its size is not how much the log holds."""
    from sqlalchemy import event
    from leukodx.api import feedback
    from leukodx.api.feedback import reports_table
    store = report_store_for(settings.feedback_db_url).store
    store.engine.dispose()
    statements: list[str] = []
    event.listen(store.engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append))
    monkeypatch.setattr(feedback, "WAL_RESTART_BYTES", 100 * 1024)
    rows = [{"key": f"{i:064x}", "expires_at": 2e9, "body": "x" * 13_000} for i in range(20)]
    assert store.try_insert(reports_table, rows)                 # about 260 KB in the log
    store.checkpoint()
    assert [s for s in statements if "wal_checkpoint" in s] == ["PRAGMA wal_checkpoint(PASSIVE)",
                                                                "PRAGMA wal_checkpoint(RESTART)"]
    wal = Path(settings.feedback_db_url.removeprefix("sqlite:///") + "-wal")
    assert store.try_insert(reports_table, [{"key": "f" * 64, "expires_at": 2e9, "body": "small"}])
    assert wal.stat().st_size > 100 * 1024                       # the file kept its size; the log starts again
    statements.clear()
    store.checkpoint()
    assert [s for s in statements if "wal_checkpoint" in s] == ["PRAGMA wal_checkpoint(PASSIVE)"]


def test_a_store_that_cannot_be_opened_is_tried_again_by_the_next_call(settings, monkeypatch):
    """The database unreachable when the worker starts (or at the first call): that call's card goes
    without the link, and a later call opens the store once the database is back."""
    failures = [RuntimeError("database down")]
    real = reports._store

    def flaky(db_url):
        if failures:
            raise failures.pop()
        return real(db_url)
    monkeypatch.setattr(reports, "_store", flaky)

    async def two_calls() -> str:
        with pytest.raises(RuntimeError, match="database down"):
            await reports.store_report(settings, '{"call": 1}')
        return await reports.store_report(settings, '{"call": 2}')
    token = asyncio.run(two_calls())
    assert report_store_for(settings.feedback_db_url).get(token) == '{"call": 2}'


def test_a_report_given_as_utf8_is_stored_as_it_is_and_read_back_as_the_same_text(settings):
    """The CDS route hands the serializer's UTF-8 to the store (no text made only to be encoded again);
    the report page reads the same JSON back as text, a non-ASCII letter of a citation included, and
    the bytes are those of the assessment's canonical JSON."""
    from leukodx.engine import get_engine
    from leukodx.engine.render import to_json, to_json_bytes
    from conftest import CASES
    case = yaml.safe_load((CASES / "thiopurine" / "tpmt-poor-azathioprine-severe-neutropenia.yaml").read_text())
    a = get_engine().assess(case)
    assert to_json_bytes(a) == to_json(a, indent=None).encode()
    body = json.dumps({"citation": "Christen D, Brümmendorf T", "n": 1}, ensure_ascii=False)
    token = asyncio.run(reports.store_report(settings, body.encode()))
    stored = report_store_for(settings.feedback_db_url).get(token)
    assert stored == body and isinstance(stored, str)


def _assessed(*names: str) -> list:
    from leukodx.engine import get_engine
    from conftest import CASES
    return [get_engine().assess(yaml.safe_load((CASES / name).read_text())) for name in names]


def test_a_report_in_pieces_keeps_each_shared_part_once_and_reads_back_the_same_bytes(settings):
    """The CDS route hands render's pieces to the store: each shared step's and source's JSON is kept once in
    the database however many reports have it, each report's own row holds the rest, and the report read
    back is the assessment's canonical JSON, byte for byte; on the event loop's path and the thread's."""
    from leukodx.api.feedback import report_links_table, report_parts_table
    from leukodx.engine.render import SharedJson, to_json_bytes, to_json_pieces
    first, second = _assessed("thiopurine/tpmt-poor-azathioprine-severe-neutropenia.yaml",
                              "drugs/clozapine-restarted-after-anc-0-3-on-earlier-course.yaml")
    pieces = [to_json_pieces(a) for a in (first, first, second)]
    shared = {p.digest: bytes(p) for ps in pieces for p in ps if isinstance(p, SharedJson)}
    assert len(shared) > 10 and all(hashlib.sha256(b).hexdigest()[:32] == d for d, b in shared.items())

    async def stored() -> list[str]:
        return [await reports.store_report(settings, ps) for ps in pieces]          # one at a time
    tokens = asyncio.run(stored())
    store = report_store_for(settings.feedback_db_url)
    tokens.append(store.put_many([pieces[2]], minutes=5)[0])                        # the thread's path
    for token, a in zip(tokens, (first, first, second, second)):
        assert store.get(token) == to_json_bytes(a).decode()
    with store.store.engine.connect() as conn:
        parts = dict(conn.execute(select(report_parts_table.c.digest, report_parts_table.c.body)).all())
        rows = conn.execute(select(report_links_table.c.key, report_links_table.c.body)).all()
    assert {d: bytes(b) for d, b in parts.items()} == shared                        # each once
    own = dict(rows)[store._key(tokens[0])]                 # a NUL and a 32-digit digest for each shared piece
    named = [p for p in pieces[0] if isinstance(p, SharedJson)]
    assert len(rows) == 4 and len(own) == len(to_json_bytes(first)) - sum(map(len, named)) + 33 * len(named)

    # another process (its own store, knowing of no part) stores the same pieces: nothing twice, no error
    reset_cache()
    other = report_store_for(settings.feedback_db_url)
    assert other.get(other.put(pieces[0], minutes=5)) == to_json_bytes(first).decode()
    with other.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(report_parts_table)).scalar() == len(shared)


def test_a_report_missing_a_shared_part_is_a_500_problem_not_a_partial_report(settings):
    """A report names a part the database does not hold (nothing in leukodx deletes one, but a database can be
    restored from a copy): the page's request gets a problem saying so, never the report with a piece missing."""
    from fastapi.testclient import TestClient
    from leukodx.api.app import create_app
    from leukodx.api.feedback import ReportIncomplete, report_parts_table
    from leukodx.engine.render import to_json_pieces
    (a,) = _assessed("thiopurine/tpmt-poor-azathioprine-severe-neutropenia.yaml")
    token = asyncio.run(reports.store_report(settings, to_json_pieces(a)))
    store = report_store_for(settings.feedback_db_url)
    store.store.write(lambda conn: conn.execute(delete(report_parts_table).where(
        report_parts_table.c.digest == conn.execute(select(report_parts_table.c.digest)).scalars().first())))
    with pytest.raises(ReportIncomplete, match="1 of the report's"):
        store.get(token)
    with TestClient(create_app(settings)) as client:
        r = client.get(f"/v1/reports/{token}")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["title"] == "Report incomplete" and '"steps"' not in r.text


def test_reports_written_before_revision_0003_are_still_read_then_purged(settings):
    """A report kept whole in ``cds_reports`` by the previous release (a rolling upgrade) opens until it
    expires, and the purge deletes the expired rows of both tables."""
    from leukodx.api.feedback import report_links_table, reports_table
    store = report_store_for(settings.feedback_db_url)
    store.store.write(lambda conn: conn.execute(insert(reports_table).values(
        key=store._key("old-token-0123456789abcdef"), expires_at=1060.0, body='{"old": true}')))
    new = store.put('{"new": true}', minutes=1, now=1000.0)
    assert store.get("old-token-0123456789abcdef", now=1059.0) == '{"old": true}'
    assert store.get(new, now=1059.0) == '{"new": true}'
    store.purge(1061.0)
    with store.store.engine.connect() as conn:
        for table in (reports_table, report_links_table):
            assert conn.execute(select(func.count()).select_from(table)).scalar() == 0, table.name


def test_a_whole_report_with_a_nul_byte_is_refused(settings):
    """NUL marks a shared part in a stored report, and JSON text never holds one: a body with one is not JSON."""
    store = report_store_for(settings.feedback_db_url)
    with pytest.raises(ValueError, match="NUL"):
        store.put('{"x": "\0"}', minutes=1)
