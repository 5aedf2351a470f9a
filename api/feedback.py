"""The service's one database: CDS Hooks feedback, the JWT ids already used (replay protection), and
the reports behind the CDS cards' links. One module on purpose: every table of the database and
every query on it in one place, beside the schema its migrations make (api/migrations/).

An embedded SQLite file by default; PostgreSQL for several replicas (``postgresql://`` or
``postgresql+psycopg://``, driver from ``pip install 'leukodx[postgres]'``: psycopg 3); other
SQLAlchemy URLs at the operator's risk. Every worker process and every replica pointing at the same
database shares both tables:

* ``cds_feedback``: a row is acknowledged only after its transaction committed;
* ``cds_jti``: one row per accepted ``(iss, jti)`` (a SHA-256 of the pair), kept until the token
  could no longer be accepted. A token is accepted by one ``INSERT ... ON CONFLICT (key) DO UPDATE
  ... WHERE expires_at <= now RETURNING key`` on the primary key: a new key is inserted, an expired
  one taken over, a live one left alone (no row returned: a replay). Of two connections racing for
  one key, the second waits for the first's row lock and then finds it live, so only one wins.
  Expired rows are purged at most once a minute per process.

The schema is Alembic's (api/migrations/): opening a store brings the database to the newest
revision first, under the database's write lock, or refuses a database a newer leukodx migrated.

SQLite, several processes on one file: the file is in WAL mode, every connection waits up to 30 s
for a lock (busy timeout), and every transaction starts with ``BEGIN IMMEDIATE`` so that a writer
never has to upgrade a read lock (an upgrade that fails at once, without waiting, with "database is
locked"); writes in one process are serialised. A write that still finds the database locked is
retried a few times before the error reaches the caller. The report link's copies are the exception
(``FeedbackStore.try_insert``): written from the event loop through a connection of their own that
waits at most 5 ms for the lock and does not flush to disk, the log copied into the file by a thread
(``checkpoint``). PostgreSQL: a pool per process whose
connections are checked before use (a database restart or fail-over costs no request), a 10 s
connect timeout, and no per-process write lock.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence, TypeVar, Union

from sqlalchemy import (Column, DateTime, Float, Integer, LargeBinary, MetaData, String, Table, Text, create_engine,
                        delete, event, insert, select, update)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from leukodx.engine.render import SharedJson

from . import migrations
from .cds.models import FeedbackEntry

__all__ = ["FeedbackStore", "SqlReplayStore", "ReportStore", "ReportIncomplete", "StoreError", "engine_url",
           "make_engine", "store_for", "report_store_for", "reset_cache"]

# The tables as the queries below see them; their schema is made by api/migrations/ (kept equal to
# this by tests/test_postgres.py::test_migrations_from_empty_to_head_give_the_schema_the_code_uses).
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
reports_table = Table(                                          # written until 0003; read and purged
    "cds_reports", metadata,
    Column("key", String(64), primary_key=True),               # sha256(token), hex
    Column("expires_at", Float, nullable=False, index=True),   # POSIX seconds
    Column("body", Text, nullable=False),                      # the Assessment, JSON
)
report_links_table = Table(
    "cds_report_links", metadata,
    Column("key", String(64), primary_key=True),               # sha256(token), hex
    Column("expires_at", Float, nullable=False, index=True),   # POSIX seconds
    Column("body", LargeBinary, nullable=False),               # the Assessment, JSON, shared parts by digest
)
report_parts_table = Table(
    "cds_report_parts", metadata,
    Column("digest", String(32), primary_key=True),            # sha256(body), first 32 hex digits
    Column("body", LargeBinary, nullable=False),               # a step's or a source's JSON
)
jti_table = Table(
    "cds_jti", metadata,
    Column("key", String(64), primary_key=True),            # sha256(iss NUL jti), hex
    Column("expires_at", Float, nullable=False, index=True),  # POSIX seconds
)

T = TypeVar("T")
Report = Union[str, bytes, Sequence[bytes]]    # JSON whole, or in pieces (engine/render.py to_json_pieces)
_RETRIES = 4
SQLITE_BUSY_SECONDS = 30      # how long an SQLite connection waits for another's lock
WAL_RESTART_BYTES = 64 * 1024 * 1024
# try_insert's wait for another connection's write lock (a report insert holds it for about 0.1 ms):
# long enough for most, short enough to hold an event loop no longer than a request does.
FAST_LOCK_WAIT_MS = 5
PURGE_EVERY_SECONDS = 60.0
_UPSERT_DIALECTS = {"postgresql"} | ({"sqlite"} if sqlite3.sqlite_version_info >= (3, 35) else set())  # RETURNING


class StoreError(RuntimeError):
    """The database URL cannot be used as it is; the message says what to do."""


def _locked(e: Exception) -> bool:
    """SQLite's "database is locked" or "busy", from SQLAlchemy's error or sqlite3's own."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).lower()
    return "locked" in text or "busy" in text


@functools.lru_cache(maxsize=16)
def _insert_sql(table: Table, columns: tuple[str, ...], or_ignore: bool = False) -> str:
    """SQLite's INSERT into ``table``'s ``columns`` (names checked against the table); ``or_ignore``: a row
    whose key is there already is left out."""
    unknown = set(columns) - set(table.c.keys())
    if unknown:
        raise ValueError(f"not columns of {table.name}: {sorted(unknown)}")
    return (f"INSERT{' OR IGNORE' if or_ignore else ''} INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


def engine_url(url: str) -> URL:
    """The URL SQLAlchemy is given: ``postgresql://`` and ``postgres://`` mean psycopg 3 here (SQLAlchemy
    alone would pick psycopg2, which leukodx does not ship)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str) -> Engine:
    """An engine with leukodx's connection settings; creates and migrates nothing."""
    u = engine_url(url)
    sqlite = u.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS}
        if u.database in (None, "", ":memory:"):   # one in-memory database shared by every thread
            kwargs["poolclass"] = StaticPool
    elif u.get_backend_name() == "postgresql":
        kwargs["pool_pre_ping"] = True
        if u.get_driver_name() == "psycopg":
            kwargs["connect_args"] = {"connect_timeout": 10, "application_name": "leukodx"}
    try:
        engine = create_engine(u, **kwargs)
    except ModuleNotFoundError as e:
        extra = " Install it with: pip install 'leukodx[postgres]'" if u.get_backend_name() == "postgresql" else ""
        raise StoreError(f"the database URL needs the Python module {e.name!r}, which is not installed.{extra}") \
            from None
    if sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            conn.isolation_level = None              # transactions are begun below, IMMEDIATE
            cur = conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
            cur.execute("PRAGMA synchronous=FULL")   # durable on power loss
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


class FeedbackStore:
    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = make_engine(url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self.memory = self.sqlite and self.engine.url.database in (None, "", ":memory:")
        # SQLite: one writer per process at a time (and the memory database's one connection).
        # PostgreSQL locks rows, not the database: writes from one process run side by side.
        self._lock: ContextManager[Any] = threading.Lock() if self.sqlite else contextlib.nullcontext()
        self._fast: Optional[sqlite3.Connection] = None     # try_insert's own connection
        self._fast_lock = threading.Lock()
        self._migrate()
        self.replay = SqlReplayStore(self)

    def _migrate(self) -> None:
        """This version's schema, made or checked once whatever the number of processes starting together: while
        another process migrates a fresh SQLite file, the others retry for as long as a lock is waited for (their
        five quick retries had run out under load, and a worker had failed with "database is locked")."""
        deadline = time.monotonic() + SQLITE_BUSY_SECONDS
        for attempt in itertools.count():
            try:
                if self.sqlite and not self.memory:     # WAL is a property of the file: set once, outside a transaction
                    raw = self.engine.raw_connection()
                    try:
                        raw.cursor().execute("PRAGMA journal_mode=WAL")
                    finally:
                        raw.close()
                migrations.ensure(self.engine, self._lock)
                return
            except OperationalError as e:
                if time.monotonic() > deadline or not (self.sqlite and _locked(e)):
                    raise
                time.sleep(min(0.5, 0.05 * (attempt + 1)))

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

    def try_insert(self, table: Table, rows: list[dict[str, Any]],
                   shared: Optional[tuple[Table, list[dict[str, Any]]]] = None) -> bool:
        """Insert ``rows`` (and first the rows of ``shared``, each unless its key is there already) in one
        transaction, waiting at most :data:`FAST_LOCK_WAIT_MS` for a lock
        (an SQLite file only): True once committed, False while another connection holds the
        database's write lock longer. Short writes can then run on the event loop, which must never
        sleep long in a lock wait. It uses a connection of its own that does not wait for the disk
        (``synchronous=NORMAL``, WAL): the rows survive a crash of leukodx, and the last ones can be
        lost if the machine itself goes down; for rows that are copies kept for convenience (the
        report links), not for the records. Nor does it copy the log into the database file: call
        :meth:`checkpoint` from a thread."""
        assert self.sqlite and not self.memory, "try_insert is for an SQLite file"
        lock: Any = self._fast_lock
        if not lock.acquire(blocking=False):
            return False
        try:
            if self._fast is None:
                self._fast = sqlite3.connect(self.engine.url.database or "", isolation_level=None,
                                             check_same_thread=False)
                for pragma in (f"busy_timeout={FAST_LOCK_WAIT_MS}", "synchronous=NORMAL", "wal_autocheckpoint=0"):
                    self._fast.execute(f"PRAGMA {pragma}")
            fast = self._fast
            try:
                fast.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _locked(e):
                    return False
                raise
            try:
                for into, values, or_ignore in ((*(shared or (table, [])), True), (table, rows, False)):
                    if values:
                        columns = tuple(values[0])
                        fast.executemany(_insert_sql(into, columns, or_ignore),
                                         [tuple(r[c] for c in columns) for r in values])
                fast.execute("COMMIT")
            except BaseException:
                fast.execute("ROLLBACK")
                raise
            return True
        finally:
            lock.release()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file (SQLite). PASSIVE, which holds no writer
        back; once the log holds more than :data:`WAL_RESTART_BYTES` of pages, RESTART, which waits for
        the writer of the moment and lets the next one start the log again (PASSIVE alone never caught
        up with two busy workers: the log grew past 270 MB in 8 s). The log's pages, not its file's size:
        the file keeps its largest size, so once it had passed the limit every checkpoint had been a
        RESTART, holding the workers' writes back ten times a second. :meth:`try_insert` leaves this to a
        thread: it takes milliseconds and flushes to disk."""
        if not self.sqlite or self.memory:
            return
        with self.engine.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
            _, log_pages, _ = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if log_pages * raw.execute("PRAGMA page_size").fetchone()[0] > WAL_RESTART_BYTES:
                raw.execute("PRAGMA wal_checkpoint(RESTART)")

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


class _Expiring:
    """A table of rows with ``expires_at`` (or several): expired rows are deleted at most every
    ``purge_every`` seconds per process, not on every write."""
    table: Table
    also_purged: tuple[Table, ...] = ()

    def __init__(self, store: FeedbackStore, purge_every: float = PURGE_EVERY_SECONDS):
        self.store = store
        self.purge_every = purge_every
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()

    def purge(self, now: float) -> None:
        """Delete the expired rows, unless that was done less than ``purge_every`` seconds ago."""
        with self._purge_lock:
            if now < self._next_purge:
                return
            self._next_purge = now + self.purge_every
        def purge(conn: Any) -> None:
            for table in (self.table, *self.also_purged):
                conn.execute(delete(table).where(table.c.expires_at <= now))
        self.store.write(purge)

    def purge_due(self, now: float) -> bool:
        return now >= self._next_purge


class SqlReplayStore(_Expiring):
    """Seen ``(iss, jti)`` pairs in the shared database (the ``ReplayStore`` of cds/auth.py)."""
    table = jti_table

    @staticmethod
    def key(iss: str, jti: str) -> str:
        return hashlib.sha256(iss.encode("utf-8", "surrogatepass") + b"\0" + jti.encode("utf-8", "surrogatepass")
                              ).hexdigest()

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> bool:
        """Remember ``key`` until ``expires_at``; False if it is remembered and not expired (a replay).
        Atomic across processes and replicas: of concurrent callers, exactly one gets True."""
        digest = self.key(*key)
        self.purge(now)
        dialect = self.store.engine.dialect.name
        if dialect in _UPSERT_DIALECTS:
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            ins = dialect_insert(jti_table).values(key=digest, expires_at=expires_at)
            stmt = ins.on_conflict_do_update(index_elements=[jti_table.c.key],
                                             set_={"expires_at": ins.excluded.expires_at},
                                             where=jti_table.c.expires_at <= now).returning(jti_table.c.key)
            return self.store.write(lambda conn: conn.execute(stmt).first() is not None)
        try:      # other databases: INSERT on the unique key, else take over an expired row
            self.store.write(lambda conn: conn.execute(insert(jti_table).values(key=digest, expires_at=expires_at)))
            return True
        except IntegrityError:
            pass
        taken = self.store.write(lambda conn: conn.execute(
            update(jti_table).where(jti_table.c.key == digest, jti_table.c.expires_at <= now)
            .values(expires_at=expires_at)).rowcount)
        return taken == 1

    def __len__(self) -> int:
        with self.store.engine.connect() as conn:
            return len(conn.execute(select(jti_table.c.key)).all())


class ReportIncomplete(RuntimeError):
    """A stored report names a shared part the database does not hold (nothing in leukodx deletes one)."""


class ReportStore(_Expiring):
    """Full assessments behind the CDS card's report link, for ``minutes`` each. The link's token is 32
    random bytes (unguessable, no patient identifier in it); the database keeps only its SHA-256, so a
    copy of the database opens no report. ``get`` never returns an expired row; expired rows are
    deleted as new ones are written, at most once a minute.

    A report given in pieces (engine/render.py ``to_json_pieces``) is kept with each shared piece (a
    step's or a source's JSON, the same in every report that has it: over half of a report's bytes) in
    ``cds_report_parts``, once per database, named in the report by its digest after a NUL byte (which
    JSON text never holds); ``get`` puts the report back together, the same bytes. Parts are never
    deleted: a few hundred per knowledge base, a few hundred KB. Reports written before revision 0003
    (``cds_reports``, whole) are still read until they expire."""
    table = report_links_table
    also_purged = (reports_table,)
    MARK = b"\0"

    def __init__(self, store: FeedbackStore, purge_every: float = PURGE_EVERY_SECONDS):
        super().__init__(store, purge_every)
        self._parts_stored: set[str] = set()     # digests committed to this database (by this process)

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()

    def put(self, body: Report, minutes: float, now: Optional[float] = None) -> str:
        return self.put_many([body], minutes, now)[0]

    def put_many(self, bodies: Sequence[Report], minutes: float, now: Optional[float] = None) -> list[str]:
        """Keep several assessments (JSON: text, UTF-8 or render's pieces) in one transaction (one commit,
        one flush to disk); their tokens, in order, once committed."""
        now = time.time() if now is None else now
        tokens, rows, parts = self._rows(bodies, minutes, now)
        self.purge(now)

        def write(conn: Any) -> None:
            if parts:
                self._insert_parts(conn, parts)
            conn.execute(insert(report_links_table), rows)
        self.store.write(write)
        self._parts_stored.update(p["digest"] for p in parts)
        return tokens

    def try_put_many(self, bodies: Sequence[Report], minutes: float,
                     now: Optional[float] = None) -> Optional[list[str]]:
        """:meth:`put_many` waiting at most a few milliseconds for a lock (an SQLite file;
        FeedbackStore.try_insert): the tokens, or None while the database is busy. Expired rows are
        not purged here (``purge``, in a thread)."""
        tokens, rows, parts = self._rows(bodies, minutes, time.time() if now is None else now)
        if not self.store.try_insert(report_links_table, rows, (report_parts_table, parts)):
            return None
        self._parts_stored.update(p["digest"] for p in parts)
        return tokens

    def _rows(self, bodies: Sequence[Report], minutes: float,
              now: float) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
        """The tokens, the rows, and the shared parts not yet known to be stored."""
        import secrets
        tokens = [secrets.token_urlsafe(32) for _ in bodies]
        parts: dict[str, bytes] = {}
        rows = [{"key": self._key(t), "expires_at": now + minutes * 60, "body": self._body(b, parts)}
                for t, b in zip(tokens, bodies)]
        return tokens, rows, [{"digest": d, "body": p} for d, p in parts.items() if d not in self._parts_stored]

    def _body(self, report: Report, parts: dict[str, bytes]) -> bytes:
        if isinstance(report, (str, bytes)):
            body = report.encode() if isinstance(report, str) else report
            if self.MARK in body:
                raise ValueError("a report is JSON text, which holds no NUL byte")
            return body
        out: list[bytes] = []
        for piece in report:
            if type(piece) is SharedJson:        # (getattr with a default costs an exception on plain bytes)
                out += (self.MARK, piece.digest.encode("ascii"))
                parts[piece.digest] = piece
            else:
                out.append(piece)
        return b"".join(out)

    def _insert_parts(self, conn: Any, parts: list[dict[str, Any]]) -> None:
        """Each part unless the database holds it already (another process or replica may have stored it)."""
        dialect = conn.dialect.name
        if dialect in ("postgresql", "sqlite"):
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            conn.execute(dialect_insert(report_parts_table).on_conflict_do_nothing(), parts)
            return
        held = set(conn.execute(select(report_parts_table.c.digest).where(
            report_parts_table.c.digest.in_([p["digest"] for p in parts]))).scalars())
        missing = [p for p in parts if p["digest"] not in held]
        if missing:
            conn.execute(insert(report_parts_table), missing)

    def get(self, token: str, now: Optional[float] = None) -> Optional[str]:
        """The report as JSON text, or None once expired or if unknown; :class:`ReportIncomplete` if a
        shared part it names is not in the database."""
        now = time.time() if now is None else now
        key = self._key(token)
        with self.store.engine.connect() as conn:
            for table in (report_links_table, reports_table):
                row = conn.execute(select(table.c.body).where(table.c.key == key, table.c.expires_at > now)).first()
                if row is not None:
                    break
            else:
                return None
            body = row[0].encode() if isinstance(row[0], str) else bytes(row[0])
            if self.MARK not in body:
                return body.decode()
            head, *rest = body.split(self.MARK)
            digests = {piece[:32].decode("ascii") for piece in rest}
            parts = dict(conn.execute(select(report_parts_table.c.digest, report_parts_table.c.body).where(
                report_parts_table.c.digest.in_(sorted(digests)))).all())
        if digests - set(parts):
            raise ReportIncomplete(f"{len(digests - set(parts))} of the report's {len(digests)} shared parts "
                                   "are missing from the database")
        return b"".join([head] + [bytes(parts[p[:32].decode("ascii")]) + p[32:] for p in rest]).decode()


_STORES: dict[str, FeedbackStore] = {}
_STORES_LOCK = threading.Lock()


def store_for(url: str) -> FeedbackStore:
    with _STORES_LOCK:
        if url not in _STORES:
            _STORES[url] = FeedbackStore(url)
        return _STORES[url]


_REPORTS: dict[str, ReportStore] = {}


def report_store_for(url: str) -> ReportStore:
    """One ReportStore per database and process, so its purge runs at most once a minute."""
    store = store_for(url)
    with _STORES_LOCK:
        if url not in _REPORTS or _REPORTS[url].store is not store:
            _REPORTS[url] = ReportStore(store)
        return _REPORTS[url]


def reset_cache() -> None:
    """Forget open stores (tests)."""
    with _STORES_LOCK:
        _STORES.clear()
        _REPORTS.clear()
