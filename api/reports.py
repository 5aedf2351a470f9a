"""The full assessment behind a CDS card's report link: ``/report/<token>`` opens leukodx's own page,
which reads ``/v1/reports/<token>``. The token is unguessable and names no patient; the assessment is
kept in the feedback database for LEUKODX_REPORT_LINK_MINUTES, keyed by the token's hash
(api/feedback.py ReportStore). An expired or unknown token is a 404."""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from .config import Settings
from .deps import settings as app_settings
from .problems import ProblemError

__all__ = ["router", "store_report"]

router = APIRouter(tags=["CDS Hooks"])
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
_PAGE = Path(__file__).parent / "static" / "index.html"


def _store(db_url: str):   # noqa: ANN202 - ReportStore, loaded on first use (SQLAlchemy)
    from .feedback import report_store_for
    return report_store_for(db_url)


def store_report(settings: Settings, assessment_json: str) -> str:
    """Keep an assessment for the report link; returns the token."""
    return _store(settings.feedback_db_url).put(assessment_json, settings.report_link_minutes)


@router.get("/report/{token}", include_in_schema=False)
def report_page(token: str) -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store",
                                                                    "Referrer-Policy": "no-referrer"})


@router.get("/v1/reports/{token}", summary="The full assessment behind a CDS card's report link",
            responses={404: {"description": "Expired or unknown"}})
def report(token: str, settings: Settings = Depends(app_settings)) -> Response:
    body = _store(settings.feedback_db_url).get(token) if _TOKEN.match(token) else None
    if body is None:
        raise ProblemError(404, "Not found", "This report has expired or does not exist.")
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})
