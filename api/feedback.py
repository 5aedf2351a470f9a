"""CDS Hooks feedback, stored durably: an embedded SQLite file by default, any SQLAlchemy URL
(PostgreSQL for several replicas). A row is acknowledged only after its transaction committed."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, event, insert, select
from sqlalchemy.engine import Engine

from .cds_models import FeedbackEntry

__all__ = ["FeedbackStore", "store_for", "reset_cache"]

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


class FeedbackStore:
    def __init__(self, url: str):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, future=True, **kwargs)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:   # durable on power loss; several processes
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()
        metadata.create_all(self.engine)
        self._lock = threading.Lock()

    def add(self, service_id: str, entries: list[FeedbackEntry]) -> int:
        """Store every entry in one transaction; returns the number stored once committed."""
        now = datetime.now(timezone.utc)
        rows = [{"service_id": service_id, "card": e.card, "outcome": e.outcome,
                 "outcome_timestamp": e.outcomeTimestamp,
                 "accepted_suggestions": json.dumps([s.model_dump() for s in e.acceptedSuggestions]),
                 "override_reason": json.dumps(e.overrideReason.model_dump(exclude_none=True))
                 if e.overrideReason else None,
                 "received_at": now} for e in entries]
        with self._lock, self.engine.begin() as conn:
            conn.execute(insert(feedback_table), rows)
        return len(rows)

    def export(self) -> Iterator[dict[str, Any]]:
        """Every row, oldest first, as JSON-ready dictionaries."""
        with self.engine.connect() as conn:
            for row in conn.execute(select(feedback_table).order_by(feedback_table.c.id)):
                r = dict(row._mapping)
                r["accepted_suggestions"] = json.loads(r["accepted_suggestions"])
                r["override_reason"] = json.loads(r["override_reason"]) if r["override_reason"] else None
                r["received_at"] = r["received_at"].isoformat() if r["received_at"] else None
                yield r


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
