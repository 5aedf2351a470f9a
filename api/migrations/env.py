"""Alembic's environment for leukodx: migrations run on the connection leukodx gives (inside its
locked transaction, see __init__.py), or, for ``revision --autogenerate`` and offline SQL, on the
configured URL."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from leukodx.api.feedback import engine_url, metadata

config = context.config


def _configure(**kw) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kw)


if context.is_offline_mode():
    url = engine_url(config.get_main_option("sqlalchemy.url") or "sqlite://")
    _configure(url=url, literal_binds=True, render_as_batch=url.get_backend_name() == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:      # the developer's `revision --autogenerate --db URL`
        engine = create_engine(engine_url(config.get_main_option("sqlalchemy.url") or "sqlite://"))
        with engine.begin() as connection:
            _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
            context.run_migrations()
        engine.dispose()
    else:
        _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():   # leukodx's transaction is already open: this one is nested in it
            context.run_migrations()
