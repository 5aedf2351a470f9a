"""ASGI middleware: request ids and structured access logs (no patient data), body size limits,
security headers."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any, Callable, Optional

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import fhir_wanted, send_problem

__all__ = ["RequestContext", "BodyLimit", "configure_logging", "JsonFormatter", "masked_path"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# a report link's token is a bearer credential (api/reports.py): never logged or traced (the access log had kept it whole,
# so that a copy of the log opened the report the database keeps only hashes for)
# wherever it is in the path and however spelt: a 404 for "//report/T", "/Report/T" or "/x/../report/T" had kept it
_REPORT_TOKEN = re.compile(r"(?i)(/reports?/+)[^/?#]+")


def masked_path(path: str) -> str:
    """``path`` with what follows a ``report`` or ``reports`` segment (a report link's token) replaced by ``-``."""
    return _REPORT_TOKEN.sub(r"\1-", path)
# the page runs no inline script (api/static/app.js): none is allowed; Swagger UI's /docs page sets its own (CSP_DOCS)
CSP = b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'"
CSP_DOCS = CSP.replace(b"script-src 'self'", b"script-src 'self' 'unsafe-inline'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", CSP),
]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extra fields."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
    _ENCODER = json.JSONEncoder(default=str)    # one encoder (json.dumps with an argument makes one per call)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD})
        return self._ENCODER.encode(out)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on standard error for the `leukodx` loggers (replacing only leukodx's own handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name("leukodx-json")
    root = logging.getLogger("leukodx")
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "leukodx-json"] + [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RequestContext:
    """Gives every request an id (a safe incoming X-Request-ID, else a new one), returns it in the
    response, adds security headers, and logs method, path, status and duration. Never the body,
    the query string or the Authorization header. ``observe(scope, status, seconds)``, when given,
    is called with the same status and duration (the HTTP metrics, api/metrics.py)."""

    def __init__(self, app: ASGIApp, observe: Optional[Callable[[Scope, int, float], None]] = None):
        self.app = app
        self.observe = observe
        self.log = logging.getLogger("leukodx.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        method = scope.get("method")
        if method == "HEAD":   # a GET without its body, as Starlette's own routes take it (FastAPI's answered 405 to
            scope = {**scope, "method": "GET"}     # uptime probes' HEAD of /, /healthz, /cds-services)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if method == "HEAD" and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        tracked = _Tracked(send_wrapper)
        try:
            await self.app(scope, receive, tracked)
        except Exception as e:   # answer here, inside CORS, with the request id: never a stack trace
            logging.getLogger("leukodx.api").error("unhandled error", extra={"request_id": request_id,
                                                                            "error_type": type(e).__name__})
            if not tracked.started:
                await send_problem(send_wrapper, 500, "Internal error",
                                   "The request could not be completed; it has been logged.", request_id=request_id)
        finally:
            seconds = time.perf_counter() - start
            if self.observe is not None:
                self.observe(scope, status, seconds)
            self.log.info("request", extra={"request_id": request_id, "method": method,
                                            "path": masked_path(scope.get("path") or ""), "status": status,
                                            "duration_ms": round(seconds * 1000, 2)})


CLIENT_CLOSED = 499     # nginx's "client closed request": the client went away before the answer


class BodyLimit:
    """Refuses bodies above a limit with 413: by Content-Length at once, else as the route reads the
    stream. The body is not read ahead of the route, so a route that checks its caller first (a CDS
    service's JWT) never reads an unauthorised body: buffering it here had let unauthenticated callers
    hold 32 MiB per request in a worker's memory (security red-team: 230 MiB -> 2.1 GiB). A client that
    goes away while sending its body is recorded as status 499, not as an error of leukodx."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit, scope)
            return
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise _TooLarge()
            return message

        tracked = _Tracked(send)
        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not tracked.started:
                await _too_large(send, limit, scope)
        except ClientDisconnect:      # nothing reaches the client; the status is for the access log, audit and metrics
            if not tracked.started:
                await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
                await send({"type": "http.response.body", "body": b""})


class _Tracked:
    """A send that remembers whether the response has started (an error can still be answered until then)."""

    def __init__(self, send: Send) -> None:
        self.send, self.started = send, False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class _TooLarge(Exception):
    """The body being read passed the route's limit."""


async def _too_large(send: Send, limit: int, scope: Scope) -> None:
    detail = f"The body exceeds {limit} bytes."
    accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
    if fhir_wanted(scope.get("path", ""), accept):     # a FHIR client gets its errors as FHIR
        from .fhir.answer import FHIR_MEDIA_TYPE, operation_outcome
        body = json.dumps(operation_outcome(413, "Request body too large", detail)).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", FHIR_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    await send_problem(send, 413, "Request body too large", detail)
