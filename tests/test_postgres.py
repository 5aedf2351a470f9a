"""Issue 16, item 1: the feedback store and the JWT replay table on a real PostgreSQL server, and the
schema migrations (Alembic) on PostgreSQL and SQLite.

The server is a throwaway cluster this module starts itself: initdb and pg_ctl from Debian's
``postgresql`` package (``.ci/run`` installs it), a data folder under a temporary directory, a free
loopback port, no Unix socket, trust authentication, fsync off. initdb refuses to run as root, so
as root the cluster belongs to the ``postgres`` user (else ``nobody``) and its commands run as that
user (``subprocess`` ``user=``/``group=``). Skipped, with the reason, only where no PostgreSQL
server binaries exist. Each test gets its own database, dropped afterwards.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, inspect, insert, text

from conftest import CASES, LEUKODX, free_port, start_server, stop_server
from leukodx.api import migrations
from leukodx.api.cds.models import FeedbackEntry
from leukodx.api.feedback import (FeedbackStore, SqlReplayStore, StoreError, engine_url, feedback_table, jti_table,
                                  make_engine, metadata)

ISS = "https://ehr.example.org"


# ---- the throwaway cluster ----------------------------------------------------------------------

def pg_bindir() -> Optional[Path]:
    """The newest PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<major>/bin), else PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


class Cluster:
    def __init__(self, bindir: Path):
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="leukodx-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.as_user: dict = {}
        if os.geteuid() == 0:        # initdb: "cannot be run as root"
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.port = 0

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
                              **self.as_user)

    def start(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "leukodx", "-E", "UTF8", "--no-sync")
        assert done.returncode == 0, done.stderr
        for _ in range(3):           # the free port may be taken between finding it and binding it
            self.port = free_port()
            done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                             f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                             "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
                             "start")
            if done.returncode == 0:
                return
        raise AssertionError(f"PostgreSQL did not start: {done.stderr}\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", scheme: str = "postgresql") -> str:
        return f"{scheme}://leukodx@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        engine = create_engine(engine_url(self.url()), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(sql))
        engine.dispose()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH; "
                    "`.ci/run` installs Debian's postgresql package")
    c = Cluster(bindir)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def pg_url(cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database of the cluster (``postgresql://``, as an operator writes it)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    cluster.admin(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    cluster.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/migrations.db"
    return request.getfixturevalue("pg_url")


def entry(card: str, outcome: str = "overridden") -> FeedbackEntry:
    return FeedbackEntry(card=card, outcome=outcome, outcomeTimestamp="2026-01-02T03:04:05Z",
                         overrideReason={"reason": {"code": "patient-declined", "system": "https://example.org/r",
                                                    "display": "Patient declined"}, "userComment": "déjà vu"}
                         if outcome == "overridden" else None,
                         acceptedSuggestions=[{"id": str(uuid.uuid4())}] if outcome == "accepted" else [])


# ---- the URL and the driver (no server needed) --------------------------------------------------

def test_postgresql_urls_mean_psycopg_3():
    for url in ("postgresql://u:p@db.example.org:5432/leukodx", "postgres://u:p@db.example.org:5432/leukodx",
                "postgresql+psycopg://u:p@db.example.org:5432/leukodx"):
        assert engine_url(url).drivername == "postgresql+psycopg", url
        assert make_engine(url).dialect.driver == "psycopg"      # creating the engine connects to nothing
    assert engine_url("sqlite:///x.db").drivername == "sqlite"


def test_without_the_driver_the_message_says_what_to_install():
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from leukodx.api.feedback import FeedbackStore, StoreError\n"
            "try:\n    FeedbackStore('postgresql://u@127.0.0.1:1/x')\n"
            "except StoreError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'leukodx[postgres]'" in out.stdout, out.stdout + out.stderr
    assert StoreError.__mro__[1] is RuntimeError


def test_an_unreachable_database_stops_the_migration_step_with_one_line():
    url = f"postgresql://leukodx:s3cret@127.0.0.1:{free_port()}/leukodx"      # nothing listens there
    out = subprocess.run([sys.executable, "-m", "leukodx.api.migrations", "upgrade", "--db", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("leukodx migrations: cannot use the database postgresql+psycopg://leukodx:***@")
    assert "s3cret" not in out.stderr and len(out.stderr.splitlines()) == 1


def test_head_is_the_newest_migration():
    from alembic.script import ScriptDirectory
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [migrations.HEAD]     # a new migration must also move HEAD


# ---- migrations ---------------------------------------------------------------------------------

def test_migrations_from_empty_to_head_give_the_schema_the_code_uses(any_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    engine = make_engine(any_url)
    assert migrations.current(engine) is None
    migrations.upgrade(engine)
    assert migrations.current(engine) == migrations.HEAD
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        assert tables == {"alembic_version", "cds_feedback", "cds_jti", "cds_reports", "cds_report_links",
                          "cds_report_parts"}
        assert {i["name"] for i in inspect(conn).get_indexes("cds_reports")} == {"ix_cds_reports_expires_at"}
        assert {i["name"] for i in inspect(conn).get_indexes("cds_report_links")} == {"ix_cds_report_links_expires_at"}
        assert {i["name"] for i in inspect(conn).get_indexes("cds_jti")} == {"ix_cds_jti_expires_at"}
        assert {i["name"] for i in inspect(conn).get_indexes("cds_feedback")} == {"ix_cds_feedback_card"}
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []                                # the migrated schema is the one the queries expect
    migrations.downgrade(engine, "base")             # and back: nothing of leukodx's is left
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    assert migrations.current(engine) is None
    FeedbackStore(any_url)                           # opening the store migrates again
    assert migrations.current(engine) == migrations.HEAD
    engine.dispose()


def test_a_database_migrated_by_a_newer_leukodx_is_refused(any_url):
    FeedbackStore(any_url).engine.dispose()
    engine = make_engine(any_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(migrations.SchemaError, match=r"revision 9999.*newer leukodx.*nothing was changed"):
        FeedbackStore(any_url)
    assert migrations.current(engine) == "9999"
    engine.dispose()


def test_a_database_from_before_migrations_is_adopted_with_its_rows(any_url):
    engine = make_engine(any_url)
    metadata.create_all(engine)                      # what leukodx made itself before Alembic
    with engine.begin() as conn:
        conn.execute(insert(jti_table).values(key="k" * 64, expires_at=time.time() + 600))
    store = FeedbackStore(any_url)
    assert migrations.current(engine) == migrations.HEAD
    assert len(store.replay) == 1
    store.engine.dispose()
    engine.dispose()


def test_replicas_starting_together_on_an_empty_database_migrate_it_once(pg_url):
    stores, errors = [], []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            stores.append(FeedbackStore(pg_url))     # its own engine and connections, as a replica has
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 4
    assert migrations.current(stores[0].engine) == migrations.HEAD
    for s in stores:
        s.engine.dispose()


# ---- the feedback store and the replay table on PostgreSQL --------------------------------------

def test_feedback_is_stored_and_read_back_by_another_replica(pg_url):
    writer, reader = FeedbackStore(pg_url), FeedbackStore(pg_url)
    cards = [str(uuid.uuid4()) for _ in range(3)]
    assert writer.add("leukodx-patient-view", [entry(cards[0]), entry(cards[1], "accepted")]) == 2
    assert writer.add("leukodx-order-sign", [entry(cards[2])]) == 1
    rows = list(reader.export())
    assert [r["card"] for r in rows] == cards and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert rows[0]["service_id"] == "leukodx-patient-view" and rows[2]["service_id"] == "leukodx-order-sign"
    assert rows[0]["override_reason"]["userComment"] == "déjà vu"
    assert rows[0]["override_reason"]["reason"]["code"] == "patient-declined"
    assert rows[1]["outcome"] == "accepted" and len(rows[1]["accepted_suggestions"]) == 1
    assert rows[1]["override_reason"] is None
    assert all(r["received_at"].endswith("+00:00") for r in rows)     # timestamptz, read back in UTC
    json.dumps(rows)                                                  # JSON-ready, as `feedback export` writes
    writer.engine.dispose()
    reader.engine.dispose()


def test_two_connections_racing_for_one_jti_only_one_wins(pg_url):
    a, b = FeedbackStore(pg_url), FeedbackStore(pg_url)
    now = time.time()
    # Forced interleaving: A has inserted the key and not committed; B's attempt waits for A's row lock,
    # then sees A's committed row and loses.
    digest = SqlReplayStore.key(ISS, "contested")
    result: list[bool] = []
    with a.engine.connect() as conn:
        tx = conn.begin()
        conn.execute(insert(jti_table).values(key=digest, expires_at=now + 300))
        t = threading.Thread(target=lambda: result.append(b.replay.add((ISS, "contested"), now + 300, now)))
        t.start()
        t.join(0.5)
        assert t.is_alive() and result == []        # B waits on A's uncommitted row
        tx.commit()
    t.join(30)
    assert result == [False]
    # And if A rolls back, B's waiting attempt wins.
    digest = SqlReplayStore.key(ISS, "abandoned")
    result.clear()
    with a.engine.connect() as conn:
        tx = conn.begin()
        conn.execute(insert(jti_table).values(key=digest, expires_at=now + 300))
        t = threading.Thread(target=lambda: result.append(b.replay.add((ISS, "abandoned"), now + 300, now)))
        t.start()
        t.join(0.5)
        assert t.is_alive()
        tx.rollback()
    t.join(30)
    assert result == [True]
    # Free races: four stores (four connection pools) at once on each of 100 fresh ids, and on 50
    # expired ones that each may take over once.
    stores = [a, b, FeedbackStore(pg_url), FeedbackStore(pg_url)]
    with a.engine.begin() as conn:
        conn.execute(insert(jti_table), [{"key": SqlReplayStore.key(ISS, f"old-{i}"), "expires_at": now - 1}
                                         for i in range(50)])
    keys = [f"new-{i}" for i in range(100)] + [f"old-{i}" for i in range(50)]
    wins: dict[str, int] = {k: 0 for k in keys}
    lock, barrier = threading.Lock(), threading.Barrier(len(stores))

    def race(store: FeedbackStore) -> None:
        replay = SqlReplayStore(store, purge_every=3600)     # no purge: the expired rows must be taken over
        replay._next_purge = now + 3600
        barrier.wait()
        for k in keys:
            if replay.add((ISS, k), now + 300, now):
                with lock:
                    wins[k] += 1

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {k: n for k, n in wins.items() if n != 1} == {}       # every id accepted exactly once
    for s in stores:
        s.engine.dispose()


def test_an_expired_jti_is_purged_and_may_be_used_again(pg_url):
    store = FeedbackStore(pg_url)
    replay = SqlReplayStore(store, purge_every=0)
    assert replay.add((ISS, "a"), 100.0, 10.0) and replay.add((ISS, "b"), 500.0, 10.0)
    assert not replay.add((ISS, "a"), 200.0, 50.0)             # live: a replay
    assert replay.add((ISS, "a"), 300.0, 150.0)                # its row had expired at 100
    assert len(replay) == 2
    assert replay.add((ISS, "c"), 900.0, 600.0)                # purges every row expired by 600
    assert len(replay) == 1
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cds_jti WHERE expires_at <= 600")).scalar() == 0
    store.engine.dispose()


# ---- two replicas of `leukodx serve` on one database --------------------------------------------

def test_two_replicas_share_feedback_and_refuse_a_token_replayed_across_them(pg_url):
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", alg="ES384", use="sig")
    base = "https://cds.example.org"                 # both behind one TLS proxy: one public URL
    aud = f"{base}/cds-services/leukodx-patient-view/feedback"

    def token(jti: str) -> str:
        now = int(time.time())
        return jwt.encode({"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": jti}, key,
                          algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})

    env = {"LEUKODX_CDS_PUBLIC_BASE_URL": base,
           "LEUKODX_CDS_ISSUERS": json.dumps([{"iss": ISS, "jwks": {"keys": [public]}}])}
    ports = [free_port(), free_port()]
    servers = [start_server(p, pg_url, **env) for p in ports]
    try:
        import httpx

        def post(port: int, bearer: str, card: str) -> httpx.Response:
            body = {"feedback": [{"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-01-02T03:04:05Z",
                                  "acceptedSuggestions": [{"id": str(uuid.uuid4())}]}]}
            return httpx.post(f"http://127.0.0.1:{port}/cds-services/leukodx-patient-view/feedback", json=body,
                              headers={"Authorization": f"Bearer {bearer}"}, timeout=30)

        cards = [str(uuid.uuid4()) for _ in range(2)]
        once = token("once")
        first = post(ports[0], once, cards[0])
        assert first.status_code == 200 and first.json() == {"stored": 1}, first.text
        again = post(ports[1], once, str(uuid.uuid4()))     # the same token, on the other replica
        assert again.status_code == 401, again.text      # (the reason is logged, not told to the caller)
        assert post(ports[1], token("another"), cards[1]).status_code == 200
    finally:
        for s in servers:
            stop_server(s)
    out = subprocess.run([LEUKODX, "feedback", "export", "--db", pg_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["card"] for line in out.stdout.splitlines()] == cards
    out = subprocess.run([sys.executable, "-m", "leukodx.api.migrations", "current", "--db", pg_url],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"database {migrations.HEAD}; this leukodx {migrations.HEAD}", out.stderr


def test_report_links_of_concurrent_calls_are_stored_in_postgresql(pg_url):
    """With PostgreSQL the reports are written in a thread, the calls of the moment batched: each
    token opens its own report once its call has it."""
    import asyncio
    from leukodx.api import reports
    from leukodx.api.config import Settings
    from leukodx.api.feedback import report_store_for, reset_cache
    reset_cache()
    settings = Settings(cds_auth="off", feedback_db_url=pg_url, report_link_minutes=5)

    from leukodx.engine import get_engine
    from leukodx.engine.render import to_json_bytes, to_json_pieces
    assessed = get_engine().assess(yaml.safe_load((CASES / "tiers" / "tier-severe-anc-exactly-0-1.yaml").read_text()))

    async def calls() -> list[str]:
        return await asyncio.gather(*(reports.store_report(settings, json.dumps({"call": i})) for i in range(12)),
                                    *(reports.store_report(settings, to_json_pieces(assessed)) for _ in range(3)))
    try:
        tokens = asyncio.run(calls())
        store = report_store_for(pg_url)
        assert [json.loads(store.get(t))["call"] for t in tokens[:12]] == list(range(12))
        # render's pieces: the shared parts kept once (ON CONFLICT DO NOTHING), each report read back whole
        assert [store.get(t) for t in tokens[12:]] == [to_json_bytes(assessed).decode()] * 3
    finally:
        report_store_for(pg_url).store.engine.dispose()
        reset_cache()
