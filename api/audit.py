"""The audit log: one structured record per CDS Hooks call (and card feedback) and per REST assessment.

Written for a privacy officer (docs/audit.md says what is in a record, what never is, and how to
find a patient's records). A record says when, which client (the JWT's ``iss``, ``sub`` and
``tenant`` when CDS authentication is on), which service, hook and ``hookInstance``, a keyed hash of
the patient reference (HMAC-SHA256 under ``LEUKODX_AUDIT_KEY``; never the reference itself), the
card uuids returned with their indicators, the risk tier and alerts of an assessment, the rejection
reason when the call was refused, and the knowledge-base version.

* :class:`AuditTrail` (ASGI middleware) opens a record for each audited request, puts it in a
  context variable for the route to fill (the ``note_*`` functions; a no-op outside an audited
  request), and writes it once the answer has been sent, refusals (401, 400, 404, 412, 413, 415,
  422) and errors (500) included.
* Records go to the logger ``leukodx.audit``, not to the access log (``leukodx.access``). With
  ``LEUKODX_AUDIT_LOG_FILE`` they go only to that file, opened with ``O_APPEND`` (each record is
  one ``write``, so the records of several worker processes never interleave) and never truncated
  or rewritten by leukodx.
* ``python -m leukodx.api.audit hash Patient/123`` prints the hash of a reference under the key in
  ``LEUKODX_AUDIT_KEY``: how a privacy officer finds a patient's records.
"""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Auditor", "AuditTrail", "AuditRecord", "patient_hash", "key_id", "open_append_only", "configure",
           "current", "note_client", "note_call", "note_reason", "note_cards", "note_feedback", "note_assessment",
           "note_engine", "patient_reference", "LOGGER"]

LOGGER = "leukodx.audit"
_HANDLER = "leukodx-audit-file"
_KEY_ID_MESSAGE = b"leukodx audit key id"
_REF = re.compile(r"\b([A-Z][A-Za-z]+)/[^\s,;:()'\"]+")
_MAX_REASON = 300
_MAX_CARDS = 50


# -- the keyed hash ---------------------------------------------------------------------------------

def patient_reference(value: str, kind: str = "Patient") -> str:
    """``123``, ``Patient/123`` and `` Patient/123 `` are one reference: ``Patient/123``."""
    value = value.strip()
    return value if value.startswith(f"{kind}/") else f"{kind}/{value}"


def patient_hash(key: bytes, reference: str) -> str:
    """HMAC-SHA256 of the reference under the key, in hex: the same for one key, unrelated across keys,
    and not reversible without the key (a plain hash of a medical record number is: there are few)."""
    return hmac.new(key, reference.encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short name of the key (not the key): which key hashed a record, for key rotation."""
    return hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:8]


# -- the record -------------------------------------------------------------------------------------

@dataclass
class AuditRecord:
    event: str                                  # cds.call, cds.feedback, rest.assess, rest.assess_fhir
    time: str                                   # when the request arrived (UTC, ISO 8601)
    request_id: Optional[str]
    service: Optional[str] = None
    hook: Optional[str] = None
    hook_instance: Optional[str] = None
    auth: Optional[str] = None                  # jwt | off | none (REST has no caller identity of its own)
    client: Optional[dict[str, Optional[str]]] = None
    patient: Optional[str] = None               # the raw reference: used for the hash, never written
    cards: list[dict[str, Optional[str]]] = field(default_factory=list)
    feedback: list[dict[str, Optional[str]]] = field(default_factory=list)
    tier: Optional[str] = None
    alerts: list[str] = field(default_factory=list)
    reason: Optional[str] = None
    kb_version: Optional[str] = None
    started: float = field(default_factory=time.perf_counter)

    def channel(self) -> str:
        return self.event.split(".")[0] if self.event != "rest.assess_fhir" else "rest_fhir"


_CURRENT: contextvars.ContextVar[Optional[AuditRecord]] = contextvars.ContextVar("leukodx_audit", default=None)
_KB_VERSION: list[Optional[str]] = [None]     # the running knowledge base's version, for records made before it is read


def current() -> Optional[AuditRecord]:
    """The record of the request being answered (also in its worker threads), or None."""
    return _CURRENT.get()


def note_client(claims: Optional[dict[str, Any]]) -> None:
    """The verified JWT's claims (None: CDS authentication is off)."""
    rec = _CURRENT.get()
    if rec is None:
        return
    if claims is None:
        rec.auth = "off"
        return
    rec.auth = "jwt"
    rec.client = {k: (str(claims[k])[:200] if claims.get(k) is not None else None) for k in ("iss", "sub", "tenant")}


def note_call(hook: Optional[str], hook_instance: Optional[str], patient_id: Any) -> None:
    rec = _CURRENT.get()
    if rec is None:
        return
    rec.hook = str(hook)[:100] if hook else None
    rec.hook_instance = str(hook_instance)[:100] if hook_instance else None
    if isinstance(patient_id, str) and patient_id.strip():
        rec.patient = patient_reference(patient_id)


def note_reason(reason: str) -> None:
    """Why the call was refused (no patient reference: they are replaced by ``Type/-``)."""
    rec = _CURRENT.get()
    if rec is not None:
        rec.reason = reason


def note_cards(cards: Iterable[Any]) -> None:
    rec = _CURRENT.get()
    if rec is not None:
        rec.cards = [{"uuid": getattr(c, "uuid", None), "indicator": getattr(c, "indicator", None)}
                     for c in list(cards)[:_MAX_CARDS]]


def note_feedback(items: Iterable[Any]) -> None:
    rec = _CURRENT.get()
    if rec is not None:
        rec.feedback = [{"card": getattr(f, "card", None), "outcome": getattr(f, "outcome", None)}
                        for f in list(items)[:_MAX_CARDS]]


def note_assessment(assessment: Any) -> None:
    """What the engine concluded (tier, alert ids, knowledge-base version); the subject of a REST
    assessment is its case id (a FHIR Bundle's Patient id on /v1/assess/fhir)."""
    rec = _CURRENT.get()
    if rec is None:
        return
    rec.tier = assessment.risk_tier.tier
    rec.alerts = [a.id for a in assessment.alerts]
    rec.kb_version = assessment.kb_version
    if rec.patient is None and assessment.case_id not in ("", "case", "fhir"):   # not the defaults of an id-less case
        rec.patient = patient_reference(assessment.case_id, "Patient" if rec.event == "rest.assess_fhir" else "Case")


def note_engine(kb_version: str) -> None:
    _KB_VERSION[0] = kb_version


# -- writing ----------------------------------------------------------------------------------------

def open_append_only(path: str) -> int:
    """The audit file opened for appending only (created 0600 if absent): every write goes to its end,
    whatever another process wrote meanwhile; leukodx never truncates, seeks or rewrites it."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


class AppendOnlyFileHandler(logging.Handler):
    """One ``os.write`` per record on an O_APPEND descriptor (no buffering that could split a line)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = open_append_only(path)

    def emit(self, record: logging.LogRecord) -> None:   # an OSError (disk full) reaches Auditor.write
        data = (self.format(record) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        try:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        finally:
            super().close()


def configure(path: str) -> logging.Logger:
    """The ``leukodx.audit`` logger: to ``path`` only (append-only), else with the other leukodx logs."""
    from .middleware import JsonFormatter
    log = logging.getLogger(LOGGER)
    for h in [h for h in log.handlers if h.get_name() == _HANDLER]:
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    if path:
        handler = AppendOnlyFileHandler(path)
        handler.set_name(_HANDLER)
        handler.setFormatter(JsonFormatter())
        log.addHandler(handler)
        log.propagate = False
    else:
        log.propagate = True
    return log


class Auditor:
    """Turns a finished :class:`AuditRecord` into a log line: the patient reference becomes its keyed
    hash (or nothing, without a key) and is scrubbed from every other field."""

    def __init__(self, key: str, path: str = "") -> None:
        self._key = key.encode("utf-8") if key else b""
        self.key_id = key_id(self._key) if self._key else None
        self.log = configure(path)
        self.failures = 0

    def fields(self, rec: AuditRecord, status: int, problem: Optional[str]) -> dict[str, Any]:
        outcome = "answered" if status < 400 else ("error" if status >= 500 else "rejected")
        reason = (rec.reason or problem) if outcome != "answered" else None
        if reason and rec.patient:   # never the patient's id, even where a message quoted it
            bare = re.escape(rec.patient.split("/", 1)[1])
            reason = re.sub(rf"(?<![A-Za-z0-9.\-]){bare}(?![A-Za-z0-9.\-])", "-", reason)
        out: dict[str, Any] = {
            "event": rec.event, "time": rec.time, "request_id": rec.request_id, "outcome": outcome, "status": status,
            "service": rec.service, "hook": rec.hook, "hook_instance": rec.hook_instance, "auth": rec.auth,
            "client": rec.client,
            "patient_hmac": patient_hash(self._key, rec.patient) if (rec.patient and self._key) else None,
            "hmac_key_id": self.key_id if (rec.patient and self._key) else None,
            "cards": rec.cards, "tier": rec.tier, "alerts": rec.alerts,
            "reason": _REF.sub(r"\1/-", reason)[:_MAX_REASON] if reason else None,
            "kb_version": rec.kb_version or _KB_VERSION[0],
            "duration_ms": round((time.perf_counter() - rec.started) * 1000, 2)}
        if rec.event == "cds.feedback":
            out["feedback"] = rec.feedback
        return out

    def write(self, rec: AuditRecord, status: int, problem: Optional[str]) -> None:
        fields = self.fields(rec, status, problem)
        try:
            self.log.info("audit", extra=fields)
        except Exception as e:   # noqa: BLE001 - a full disk must not take the answer down; it is counted
            self.failures += 1
            from . import metrics
            metrics.AUDIT_FAILURES.inc()
            logging.getLogger("leukodx.api").error("audit record not written", extra={"error_type": type(e).__name__})
            return
        from . import metrics
        metrics.labelled(metrics.AUDIT_RECORDS, fields["event"], fields["outcome"]).inc()


# -- the middleware ---------------------------------------------------------------------------------

def _event(scope: Scope) -> Optional[tuple[str, Optional[str]]]:
    """(event, service) for an audited request, else None."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path: str = scope.get("path", "")
    if path == "/v1/assess":
        return "rest.assess", None
    if path == "/v1/assess/fhir":
        return "rest.assess_fhir", None
    if path.startswith("/cds-services/"):
        parts = path[len("/cds-services/"):].split("/")
        if len(parts) == 1 and parts[0]:
            return "cds.call", parts[0][:100]
        if len(parts) == 2 and parts[1] == "feedback" and parts[0]:
            return "cds.feedback", parts[0][:100]
    return None


def _problem_reason(status: int, body: bytes) -> Optional[str]:
    """The title (and detail) of a problem document, or an OperationOutcome's issue text."""
    if status < 400:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {status}"
    if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
        issue = (doc.get("issue") or [{}])[0]
        text = (issue.get("details") or {}).get("text") if isinstance(issue, dict) else None
        return str(text) if text else f"HTTP {status}"
    if isinstance(doc, dict) and isinstance(doc.get("title"), str):
        return doc["title"] + (f": {doc['detail']}" if isinstance(doc.get("detail"), str) and doc["detail"] else "")
    return f"HTTP {status}"


class AuditTrail:
    """Opens, hands to the route and writes the audit record of each audited request (POST
    /v1/assess, /v1/assess/fhir, /cds-services/{id} and its feedback); inside RequestContext (for
    the request id) and outside the body limit (so a 413 is audited too)."""

    def __init__(self, app: ASGIApp, auditor: Auditor):
        self.app = app
        self.auditor = auditor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        what = _event(scope)
        if what is None:
            await self.app(scope, receive, send)
            return
        event, service = what
        rec = AuditRecord(event=event, service=service,
                          time=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                          request_id=(scope.get("state") or {}).get("request_id"),
                          auth="none" if event.startswith("rest.") else None)
        token = _CURRENT.set(rec)
        status = 500
        error_body: list[bytes] = []
        size = 0

        async def audited_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and size < 65536:
                chunk = message.get("body", b"")
                error_body.append(chunk)
                size += len(chunk)
            await send(message)

        problem: Optional[str] = None
        try:
            await self.app(scope, receive, audited_send)
        except Exception as e:
            status, problem = 500, f"internal error ({type(e).__name__})"
            raise
        finally:
            _CURRENT.reset(token)
            if problem is None:
                problem = _problem_reason(status, b"".join(error_body))
            self.auditor.write(rec, status, problem)


# -- python -m leukodx.api.audit hash REFERENCE -----------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "hash":
        print("usage: python -m leukodx.api.audit hash REFERENCE   (e.g. Patient/123; key from LEUKODX_AUDIT_KEY)",
              file=sys.stderr)
        return 2
    key = os.environ.get("LEUKODX_AUDIT_KEY", "")
    if not key:
        print("LEUKODX_AUDIT_KEY is not set", file=sys.stderr)
        return 2
    kind = "Case" if args[1].startswith("Case/") else "Patient"
    ref = patient_reference(args[1], kind)
    k = key.encode("utf-8")
    print(json.dumps({"reference_hmac": patient_hash(k, ref), "hmac_key_id": key_id(k)}))
    return 0


if __name__ == "__main__":   # pragma: no cover - run as a module
    sys.exit(main())
