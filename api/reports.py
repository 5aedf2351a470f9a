"""The full assessment behind a CDS card's report link: ``/report/<token>`` opens leukodx's own page,
which reads ``/v1/reports/<token>``. The token is unguessable and names no patient; the assessment is
kept in the feedback database for LEUKODX_REPORT_LINK_MINUTES, keyed by the token's hash
(api/feedback.py ReportStore). An expired or unknown token is a 404.

With SQLite reports are written on the event loop, in well under a millisecond (waiting at most 5 ms
for another process's write lock), those of the calls that reach this point in the same turn of the
loop in one transaction; when the lock is held longer, the queued ones go together once it is free.
Other databases: written in a thread, in the same batches. Each call waits for its own report's commit
before its card links to it: a link never leads to a report that was not stored. Expired reports are
deleted, and SQLite's log copied into the database file, by a thread, as each falls due.

Answers first: a call whose report was just committed resumes in the loop's next turn, behind the
calls that arrived meanwhile; each of those would run its whole assessment before the answers already
made went out. A new call therefore waits one turn while such answers wait (:func:`answers_first`), so
each call's answer leaves as soon as its report is stored, at the cost of one turn of the loop."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from .config import Settings
from .deps import settings as app_settings
from .offload import loop_local, run_cpu
from .problems import ProblemError

if TYPE_CHECKING:                    # api/feedback.py imports SQLAlchemy: loaded on first use (_store)
    from .feedback import Report

__all__ = ["router", "store_report", "open_report_store", "answers_first"]

router = APIRouter(tags=["CDS Hooks"])
log = logging.getLogger("leukodx.reports")
LOCK_WAIT_SECONDS = 30.0       # as long as a thread's write would wait (the SQLite busy timeout)
LOCK_RETRY_SECONDS = 0.001
CHECKPOINT_EVERY = 100         # reports (about 400 pages of 4 KiB at 13 KB a report), however batched
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
_PAGE = Path(__file__).parent / "static" / "index.html"


def _store(db_url: str):   # noqa: ANN202 - ReportStore, loaded on first use (SQLAlchemy)
    from .feedback import report_store_for
    return report_store_for(db_url)


class _Batch:
    """The reports of one database and lifetime in one event loop, queued for the task writing them:
    those of one turn of the loop together, and all that waited while the database was locked."""

    def __init__(self, db_url: str, minutes: float) -> None:
        self.db_url, self.minutes = db_url, minutes
        self.waiting: list[tuple[Report, asyncio.Future[str]]] = []
        self.writing = False
        self.housekeeping: Optional[asyncio.Task[None]] = None   # purge or checkpoint, in a thread
        self.store: Any = None          # ReportStore, opened in a thread (it may migrate the database)
        self.opening: Optional[asyncio.Task[Any]] = None
        self.inline = False             # an SQLite file: written on the loop
        self.unflushed = 0              # reports written since the last checkpoint (SQLite)

    async def open(self) -> None:
        """Open the store in a thread, once, however many calls wait for it."""
        if self.opening is None:
            self.opening = asyncio.get_running_loop().create_task(run_cpu(_store, self.db_url))
        try:
            store = await asyncio.shield(self.opening)
        except Exception:
            if self.opening.done():             # the database unreachable now: the next call tries again
                self.opening = None
            raise
        if self.store is None:
            self.store, self.inline = store, store.store.sqlite and not store.store.memory

    async def add(self, body: Report) -> str:
        if self.store is None:
            await self.open()
        # Queued for the writer task, which runs once the calls ready in this turn of the event loop
        # have queued theirs: under load one transaction takes several reports (a transaction's
        # BEGIN and COMMIT cost twice the insert of a 13 KB report).
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting.append((body, future))
        if not self.writing:
            self.writing = True
            asyncio.get_running_loop().create_task(self._write())
        try:
            return await future
        finally:
            if future.done() and not future.cancelled() and future.exception() is None:
                _resuming()[0] -= 1          # set by _write: this call has resumed

    async def _write(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    tokens = await self._put([b for b, _ in batch])
                except Exception as e:   # noqa: BLE001 - each caller decides (the CDS route leaves the link out)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                resuming = _resuming()
                for (_, future), token in zip(batch, tokens):
                    if not future.done():            # its caller may have gone (cancelled)
                        future.set_result(token)
                        resuming[0] += 1
        finally:
            self.writing = False

    async def _put(self, bodies: list[Report]) -> list[str]:
        """The queued reports in one transaction. An SQLite file: on the event loop, tried again every
        millisecond while another process holds the write lock (for up to LOCK_WAIT_SECONDS), so no
        thread has to win the GIL back from a busy loop (that hand-over cost 5-20 ms a write under
        load). Other databases: in a thread."""
        store = self.store
        if not self.inline:
            return await run_cpu(store.put_many, bodies, self.minutes)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LOCK_WAIT_SECONDS
        while (tokens := store.try_put_many(bodies, self.minutes)) is None:
            if loop.time() > give_up:
                raise TimeoutError(f"the report database stayed locked for {LOCK_WAIT_SECONDS:.0f} s")
            await asyncio.sleep(LOCK_RETRY_SECONDS)
        self._housekeeping(len(bodies))
        return tokens

    def _housekeeping(self, written: int) -> None:
        """In a thread, one task at a time, as each falls due: delete expired reports, copy the log
        into the database file (both take milliseconds or more, so neither runs on the loop)."""
        self.unflushed += written
        if self.housekeeping is not None and not self.housekeeping.done():
            return
        now = time.time()
        purge, checkpoint = self.store.purge_due(now), self.inline and self.unflushed >= CHECKPOINT_EVERY
        if purge or checkpoint:
            if checkpoint:
                self.unflushed = 0
            self.housekeeping = asyncio.get_running_loop().create_task(
                run_cpu(self._housework, now, purge, checkpoint))

    def _housework(self, now: float, purge: bool, checkpoint: bool) -> None:
        try:
            if purge:
                self.store.purge(now)
            if checkpoint:
                self.store.store.checkpoint()
        except Exception as e:   # noqa: BLE001 - tried again when next due; the reports are stored
            log.warning("report housekeeping failed (%s): %s", "purge" if purge else "checkpoint", type(e).__name__)


_BATCHES: dict[Any, tuple[asyncio.AbstractEventLoop, Any]] = {}
_RESUMING: dict[Any, tuple[asyncio.AbstractEventLoop, Any]] = {}


def _resuming() -> list[int]:
    """The running loop's count of calls whose report is stored and that have not resumed yet."""
    return loop_local(_RESUMING, None, lambda: [0])


async def answers_first() -> None:
    """Wait one turn of the loop while calls whose reports were just stored wait to send their answers
    (the module's docstring): called by a CDS call before it starts its own work."""
    if _resuming()[0] > 0:
        await asyncio.sleep(0)


def _batch(settings: Settings) -> _Batch:
    db_url, minutes = settings.feedback_db_url, settings.report_link_minutes
    return loop_local(_BATCHES, (db_url, minutes), lambda: _Batch(db_url, minutes))


async def store_report(settings: Settings, assessment_json: Report) -> str:
    """Keep an assessment for the report link (its JSON: text, UTF-8, or engine/render.py's pieces, whose
    shared parts the database keeps once); returns the token once the report is committed."""
    return await _batch(settings).add(assessment_json)


def open_report_store(settings: Settings) -> Optional[asyncio.Task[None]]:
    """Start opening the report store in the background (a worker at start-up): the first calls
    after a restart under load then do not wait for SQLAlchemy and the database's migration check
    (over a second, measured, when the busy loop kept the opening thread from the GIL)."""
    if settings.report_link_minutes <= 0:
        return None

    async def opened() -> None:
        try:
            await _batch(settings).open()
        except Exception as e:   # noqa: BLE001 - the first CDS call tries again, and says so if it fails
            log.warning("the report store could not be opened yet (%s); report links wait for it", type(e).__name__)
    return asyncio.get_running_loop().create_task(opened())


@router.get("/report/{token}", include_in_schema=False)
def report_page(token: str) -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store",
                                                                    "Referrer-Policy": "no-referrer"})


@router.get("/v1/reports/{token}", summary="The full assessment behind a CDS card's report link",
            responses={404: {"description": "Expired or unknown"}})
def report(token: str, settings: Settings = Depends(app_settings)) -> Response:
    from .feedback import ReportIncomplete
    try:
        body = _store(settings.feedback_db_url).get(token) if _TOKEN.match(token) else None
    except ReportIncomplete as e:
        log.error("report %s... could not be put back together: %s", token[:6], e)
        raise ProblemError(500, "Report incomplete", "This report could not be read back whole from the database; "
                           "the card it came with stands on its own.") from None
    if body is None:
        raise ProblemError(404, "Not found", "This report has expired or does not exist.")
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})
