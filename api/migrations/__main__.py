"""``python -m leukodx.api.migrations``: the service database's schema, by hand.

    upgrade  [--db URL]      bring the database to this version's schema (what every process does on opening it)
    current  [--db URL]      print the database's revision and this version's newest
    sql      [--db URL] [--from REV]   print the migrations' SQL for a DBA, connecting to nothing
    revision -m MESSAGE [--autogenerate --db URL]   (developers) write a new migration file

URL: --db, else LEUKODX_FEEDBACK_DB_URL, else the default SQLite file. Exit 0 done, 1 the database
cannot be migrated (the message says why), 2 usage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import HEAD, SchemaError, alembic_config, current, offline_sql


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leukodx.api.migrations", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["upgrade", "current", "sql", "revision"])
    p.add_argument("--db", help="SQLAlchemy URL (default: LEUKODX_FEEDBACK_DB_URL)")
    p.add_argument("--from", dest="start", help="sql: the revision the database is at (default: empty)")
    p.add_argument("-m", "--message", help="revision: what the migration does and why")
    p.add_argument("--autogenerate", action="store_true", help="revision: compare the tables with --db")
    args = p.parse_args(argv)
    from leukodx.api.config import get_settings
    from sqlalchemy.exc import SQLAlchemyError

    from leukodx.api.feedback import FeedbackStore, StoreError, engine_url, make_engine
    url = args.db or get_settings().feedback_db_url
    try:
        if args.action == "upgrade":
            store = FeedbackStore(url)
            print(f"{store.engine.url.render_as_string(hide_password=True)}: at {current(store.engine)} (head {HEAD})")
        elif args.action == "current":
            engine = make_engine(url)
            print(f"database {current(engine) or 'not migrated'}; this leukodx {HEAD}")
        elif args.action == "sql":
            offline_sql(url, start=args.start)
        else:
            if not args.message:
                p.error("revision needs -m MESSAGE")
            from alembic import command
            rev_id = f"{int(HEAD) + 1:04d}"
            command.revision(alembic_config(url=url), message=args.message, rev_id=rev_id,
                             autogenerate=args.autogenerate)
            print(f"now set HEAD = {rev_id!r} in leukodx/api/migrations/__init__.py")
    except (SchemaError, StoreError) as e:
        print(f"leukodx migrations: {e}", file=sys.stderr)
        return 1
    except SQLAlchemyError as e:            # unreachable, refused, no rights: the driver's first line
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        where = engine_url(url).render_as_string(hide_password=True)
        print(f"leukodx migrations: cannot use the database {where}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
