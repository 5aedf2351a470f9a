"""Schema migrations of the service database (the tables of api/feedback.py), with Alembic.

**When they run.** Every process that opens the database (:class:`~leukodx.api.feedback.FeedbackStore`:
the first CDS call or feedback of a worker, ``leukodx feedback export``, ``python -m
leukodx.api.migrations upgrade``) brings it to :data:`HEAD` before using it, on SQLite and on
PostgreSQL alike: one schema history for both. A database already at HEAD costs one ``SELECT`` and
Alembic is not even imported. Otherwise the upgrade runs in one transaction that holds the
database's write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``pg_advisory_xact_lock``, and its DDL
is transactional), so workers and replicas starting together on an empty database migrate it once
and the others find it done. A database whose revision this version does not know (a newer leukodx
migrated it) is refused with :class:`SchemaError` naming both revisions; nothing is changed.

A database made before migrations existed (tables, no ``alembic_version``) is adopted: the first
revision creates only what is missing.

**Adding a migration.** ``python -m leukodx.api.migrations revision -m "what and why"`` writes
``versions/NNNN_*.py`` (``--autogenerate --db URL`` compares api/feedback.py's tables with a
database); then set :data:`HEAD` to its id (tests/test_postgres.py checks they agree). A migration
must keep the previous release working while replicas are replaced one by one (add, never rename or
drop in the same release), and use ``op.batch_alter_table`` for SQLite (env.py renders batches).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, ContextManager, Optional

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

__all__ = ["HEAD", "SchemaError", "current", "ensure", "upgrade", "downgrade", "offline_sql", "alembic_config"]

HEAD = "0003"                      # the newest revision in versions/ (tests/test_postgres.py checks it)
LOCK_KEY = 7_412_331_016_452       # PostgreSQL advisory lock held while migrating ("leukodx" migrations)
VERSION_TABLE = "alembic_version"


class SchemaError(RuntimeError):
    """The database cannot be brought to this version's schema; the message says why and what to do."""


def location() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def alembic_config(connection: Optional[Connection] = None, url: Optional[str] = None) -> Any:
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", location())
    cfg.set_main_option("path_separator", "os")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def current(engine: Engine) -> Optional[str]:
    """The database's revision; None for a database never migrated (or empty)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise SchemaError(f"the database has several schema heads ({', '.join(sorted(rows))}); "
                          "it was migrated by a branch of leukodx this version does not know")
    return rows[0] if rows else None


def ensure(engine: Engine, lock: Optional[ContextManager[Any]] = None) -> None:
    """Bring the database to HEAD unless it is there already (the common case: one SELECT)."""
    if current(engine) == HEAD:
        return
    with lock or contextlib.nullcontext():
        upgrade(engine)


def _locked(conn: Connection) -> None:
    """Hold the migration lock until the transaction ends (SQLite: BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


def _check_known(conn: Connection, cfg: Any) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    unknown = [r for r in MigrationContext.configure(conn).get_current_heads() if r not in known]
    if unknown:
        raise SchemaError(
            f"the database's schema is at revision {', '.join(unknown)}, which this leukodx does not know (its "
            f"newest is {HEAD}): a newer leukodx has migrated it. Run that version (or newer) against this "
            "database; nothing was changed.")


def upgrade(engine: Engine, target: str = "head") -> None:
    """Run the migrations up to ``target`` in one transaction holding the migration lock; logs the
    change (logger ``leukodx.db``) when there was one."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    with engine.begin() as conn:
        _locked(conn)
        cfg = alembic_config(conn)
        _check_known(conn, cfg)
        before = MigrationContext.configure(conn).get_current_heads()
        command.upgrade(cfg, target)
        after = MigrationContext.configure(conn).get_current_heads()
    if before != after:
        logging.getLogger("leukodx.db").info("database schema migrated", extra={
            "database": engine.url.render_as_string(hide_password=True), "from_revision": ",".join(before) or None,
            "to_revision": ",".join(after)})


def downgrade(engine: Engine, target: str) -> None:
    """Undo migrations down to ``target`` ("base": no tables); for tests and for a rollback by hand."""
    from alembic import command
    with engine.begin() as conn:
        _locked(conn)
        cfg = alembic_config(conn)
        _check_known(conn, cfg)
        command.downgrade(cfg, target)


def offline_sql(url: str, target: str = "head", start: Optional[str] = None) -> None:
    """Print the SQL of the migrations (from ``start``, default the beginning) for a DBA to review or
    apply by hand; nothing is connected to. ``url`` picks the dialect."""
    from alembic import command
    command.upgrade(alembic_config(url=url), f"{start}:{target}" if start else target, sql=True)
