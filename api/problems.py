"""Errors as RFC 9457 problem details (application/problem+json), never a stack trace."""
from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from leukodx.engine import CaseError, Problem

__all__ = ["problem", "problem_body", "send_problem", "fhir_wanted", "ProblemError", "install", "PROBLEM_JSON",
           "pointer"]

PROBLEM_JSON = "application/problem+json"


def pointer(loc: str) -> str:
    """`labs[2].unit` -> JSON Pointer `/labs/2/unit`."""
    if not loc:
        return ""
    parts = loc.replace("[", ".").replace("]", "").split(".")
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts if p != "")


FHIR_ROUTES = ("/v1/assess", "/v1/assess/fhir")


def fhir_wanted(path: str, accept: str) -> bool:
    """Does a client of an assess route ask for FHIR (so that its errors are OperationOutcomes)?"""
    if path.rstrip("/") not in FHIR_ROUTES or "fhir" not in accept.lower():
        return False
    from .fhir.answer import negotiate
    return negotiate(accept) == "fhir"


def problem_body(status: int, title: str, detail: str = "", errors: Optional[list[Problem]] = None,
                 **extra: Any) -> dict[str, Any]:
    """The one shape of every problem leukodx answers (routes, exception handlers, ASGI middleware)."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = [{"pointer": pointer(p.loc), "loc": p.loc, "detail": p.msg} for p in errors]
    body.update(extra)
    return body


def problem(status: int, title: str, detail: str = "", errors: Optional[list[Problem]] = None,
            headers: Optional[dict[str, str]] = None, **extra: Any) -> JSONResponse:
    return JSONResponse(problem_body(status, title, detail, errors, **extra), status_code=status,
                        media_type=PROBLEM_JSON, headers=headers)


async def send_problem(send: Any, status: int, title: str, detail: str = "", **extra: Any) -> None:
    """Answer with a problem from raw ASGI middleware (outside FastAPI's exception handling)."""
    body = json.dumps(problem_body(status, title, detail, **extra)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str = "", errors: Optional[list[Problem]] = None):
        self.status, self.title, self.detail, self.errors = status, title, detail, errors


def install(app: FastAPI) -> None:
    @app.exception_handler(CaseError)
    async def _case(request: Request, exc: CaseError) -> JSONResponse:
        return problem(422, "The case cannot be assessed",
                       f"{len(exc.problems)} problem(s) in the case; each is listed in `errors`.", exc.problems)

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [Problem(".".join(str(x) for x in e["loc"] if x != "body"), e["msg"]) for e in exc.errors()]
        return problem(422, "Invalid request", "", errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Request body too large",
                  415: "Unsupported media type", 401: "Unauthorized"}
        if fhir_wanted(request.url.path, request.headers.get("accept", "")):
            from .fhir.answer import FHIR_MEDIA_TYPE, operation_outcome
            return JSONResponse(operation_outcome(exc.status_code, titles.get(exc.status_code, "Error"),
                                                  str(exc.detail or "")), status_code=exc.status_code,
                                media_type=FHIR_MEDIA_TYPE, headers=getattr(exc, "headers", None))
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail or ""),
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging
        logging.getLogger("leukodx.api").error("unhandled error", extra={"error_type": type(exc).__name__})
        return problem(500, "Internal error", "The request could not be completed; it has been logged.")
