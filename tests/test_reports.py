"""The report behind a CDS card's link (api/reports.py): written in batches, on the event loop for
SQLite, never sleeping in a lock wait there, and committed before its token is handed out."""
from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from leukodx.api import reports
from leukodx.api.config import Settings
from leukodx.api.feedback import ReportStore, report_store_for, reset_cache


@pytest.fixture
def settings(tmp_path):
    reset_cache()
    yield Settings(cds_auth="off", feedback_db_url=f"sqlite:///{tmp_path}/fb.db", report_link_minutes=5)
    reset_cache()


def test_reports_of_concurrent_calls_go_in_one_transaction_and_each_opens_its_own(settings, monkeypatch):
    transactions = []
    real = ReportStore.try_put_many

    def counted(self, bodies, minutes, now=None):
        transactions.append(len(bodies))
        return real(self, bodies, minutes, now)
    monkeypatch.setattr(ReportStore, "try_put_many", counted)

    async def calls() -> list[str]:
        return await asyncio.gather(*(reports.store_report(settings, json.dumps({"call": i})) for i in range(30)))
    tokens = asyncio.run(calls())
    store = report_store_for(settings.feedback_db_url)
    assert [json.loads(store.get(t))["call"] for t in tokens] == list(range(30))   # committed, each its own
    assert len(set(tokens)) == 30
    assert sum(transactions) == 30 and len(transactions) < 30


def test_a_report_waits_for_another_process_lock_without_holding_the_event_loop(settings):
    """Another process holds SQLite's write lock: the report is written once it lets go, and the
    event loop runs other work meanwhile (a write sleeping in SQLite's lock wait would stop it)."""
    report_store_for(settings.feedback_db_url)                 # the database exists, migrated
    other = sqlite3.connect(settings.feedback_db_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")                           # the other process's write transaction

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
    report_store_for(settings.feedback_db_url)
    other = sqlite3.connect(settings.feedback_db_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TimeoutError, match="stayed locked"):
            asyncio.run(reports.store_report(settings, '{"x": 1}'))
    finally:
        other.execute("ROLLBACK")
        other.close()
