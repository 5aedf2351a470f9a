"""The service's one database: CDS Hooks feedback, and the JWT ids already used (replay protection).

An embedded SQLite file by default, any SQLAlchemy URL (PostgreSQL for several replicas). Every
worker process and every replica pointing at the same database shares both tables:

* ``cds_feedback``: a row is acknowledged only after its transaction committed;
* ``cds_jti``: one row per accepted ``(iss, jti)`` (a SHA-256 of the pair), kept until the token
  could no longer be accepted. A token is accepted by the INSERT of its row, on a unique key, so
  two workers (or replicas) cannot both accept it; a key whose row has expired is taken over by a
  conditional UPDATE. Expired rows are purged at most once a minute per process.

SQLite, several processes on one file: tables are created with ``CREATE TABLE IF NOT EXISTS``
inside one ``BEGIN IMMEDIATE`` transaction (two workers starting on a fresh file used to race
between "no table yet" and ``CREATE TABLE`` and one got ``OperationalError``), the file is in WAL
mode, every connection waits up to 30 s for a lock (busy timeout), and every transaction starts
with ``BEGIN IMMEDIATE`` so that a writer never has to upgrade a read lock (an upgrade that fails
at once, without waiting, with "database is locked"). A write that still finds the database
locked is retried a few times before the error reaches the caller.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import (Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, delete, event,
                        insert, select, update)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable

from .cds.models import FeedbackEntry

__all__ = ["FeedbackStore", "SqlReplayStore", "store_for", "reset_cache"]

metadata = MetaData()
feedback_table = Table(
    "cds_feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(200), nullable=False),
    Column("card", String(200), nullable=False, index=True),
    Column("outcome", String(20), nullable=False),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),
    Column("override_reason", Text, nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
jti_table = Table(
    "cds_jti", metadata,
    Column("key", String(64), primary_key=True),            # sha256(iss NUL jti), hex
    Column("expires_at", Float, nullable=False, index=True),  # POSIX seconds
)

T = TypeVar("T")
_RETRIES = 4
PURGE_EVERY_SECONDS = 60.0


def _locked(e: OperationalError) -> bool:
    text = str(e.orig).lower() if e.orig is not None else str(e).lower()
    return "locked" in text or "busy" in text


class FeedbackStore:
    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.memory = self.sqlite and (":memory:" in url or url in ("sqlite://", "sqlite:///"))
        kwargs: dict[str, Any] = {}
        if self.sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if self.memory:     # one in-memory database shared by every thread (not one per thread)
            kwargs["poolclass"] = StaticPool
        self.engine: Engine = create_engine(url, future=True, **kwargs)
        if self.sqlite:
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:
                conn.isolation_level = None              # transactions are begun below, IMMEDIATE
                cur = conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA synchronous=FULL")   # durable on power loss
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        self._lock = threading.Lock()          # one writer per process at a time (and the memory database's one connection)
        self._create_tables()
        self.replay = SqlReplayStore(self)

    def _create_tables(self) -> None:
        """Every table and index, created once whatever the number of processes starting together."""
        for attempt in range(_RETRIES + 1):
            try:
                if self.sqlite and not self.memory:     # WAL is a property of the file: set once, outside a transaction
                    raw = self.engine.raw_connection()
                    try:
                        raw.cursor().execute("PRAGMA journal_mode=WAL")
                    finally:
                        raw.close()
                with self._lock, self.engine.begin() as conn:
                    for table in metadata.sorted_tables:
                        conn.execute(CreateTable(table, if_not_exists=True))
                        for index in sorted(table.indexes, key=lambda i: i.name or ""):
                            conn.execute(CreateIndex(index, if_not_exists=True))
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                # PostgreSQL: two CREATE TABLE IF NOT EXISTS at once can still collide; SQLite: locked
                if attempt == _RETRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)`` in one write transaction, retried while the database is locked."""
        for attempt in range(_RETRIES + 1):
            try:
                with self._lock, self.engine.begin() as conn:
                    return work(conn)
            except OperationalError as e:
                if attempt == _RETRIES or not _locked(e):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def add(self, service_id: str, entries: list[FeedbackEntry]) -> int:
        """Store every entry in one transaction; returns the number stored once committed."""
        now = datetime.now(timezone.utc)
        rows = [{"service_id": service_id, "card": e.card, "outcome": e.outcome,
                 "outcome_timestamp": e.outcomeTimestamp,
                 "accepted_suggestions": json.dumps([s.model_dump() for s in e.acceptedSuggestions]),
                 "override_reason": json.dumps(e.overrideReason.model_dump(exclude_none=True))
                 if e.overrideReason else None,
                 "received_at": now} for e in entries]
        self.write(lambda conn: conn.execute(insert(feedback_table), rows))
        return len(rows)

    async def add_async(self, service_id: str, entries: list[FeedbackEntry]) -> int:
        """:meth:`add` in a worker thread, so a slow disk or a lock wait never holds the event loop."""
        from starlette.concurrency import run_in_threadpool
        return await run_in_threadpool(self.add, service_id, entries)

    def export(self) -> Iterator[dict[str, Any]]:
        """Every row, oldest first, as JSON-ready dictionaries."""
        with self.engine.connect() as conn:
            for row in conn.execute(select(feedback_table).order_by(feedback_table.c.id)):
                r = dict(row._mapping)
                r["accepted_suggestions"] = json.loads(r["accepted_suggestions"])
                r["override_reason"] = json.loads(r["override_reason"]) if r["override_reason"] else None
                r["received_at"] = r["received_at"].isoformat() if r["received_at"] else None
                yield r


class SqlReplayStore:
    """Seen ``(iss, jti)`` pairs in the shared database (the ``ReplayStore`` of cds/auth.py)."""

    def __init__(self, store: FeedbackStore, purge_every: float = PURGE_EVERY_SECONDS):
        self.store = store
        self.purge_every = purge_every
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()

    @staticmethod
    def key(iss: str, jti: str) -> str:
        return hashlib.sha256(iss.encode("utf-8", "surrogatepass") + b"\0" + jti.encode("utf-8", "surrogatepass")
                              ).hexdigest()

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        """Remember ``key`` until ``expires_at``; False if it is remembered and not expired (a replay).
        Atomic across processes: the INSERT succeeds for exactly one of two concurrent callers."""
        digest = self.key(*key)
        self._purge(now)
        try:
            self.store.write(lambda conn: conn.execute(insert(jti_table).values(key=digest, expires_at=expires_at)))
            return True
        except IntegrityError:
            pass
        # The key is there. Accept only if its row has expired (and only one caller can win this UPDATE).
        taken = self.store.write(lambda conn: conn.execute(
            update(jti_table).where(jti_table.c.key == digest, jti_table.c.expires_at <= now)
            .values(expires_at=expires_at)).rowcount)
        return taken == 1

    def _purge(self, now: float) -> None:
        with self._purge_lock:
            if now < self._next_purge:
                return
            self._next_purge = now + self.purge_every
        self.store.write(lambda conn: conn.execute(delete(jti_table).where(jti_table.c.expires_at <= now)))

    def __len__(self) -> int:
        with self.store.engine.connect() as conn:
            return len(conn.execute(select(jti_table.c.key)).all())


_STORES: dict[str, FeedbackStore] = {}
_STORES_LOCK = threading.Lock()


def store_for(url: str) -> FeedbackStore:
    with _STORES_LOCK:
        if url not in _STORES:
            _STORES[url] = FeedbackStore(url)
        return _STORES[url]


def reset_cache() -> None:
    """Forget open stores (tests)."""
    with _STORES_LOCK:
        _STORES.clear()
