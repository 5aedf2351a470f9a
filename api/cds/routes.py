"""CDS Hooks 2.0.1: discovery, the patient-view / order-select / order-sign services, feedback.

A call: check the JWT -> validate the request -> gather the patient's data (prefetch, or the EHR's
FHIR server with the bearer token it gave) -> map FHIR to a case (api/fhir/) -> engine.assess ->
cards (cards.py; an order hook's drafts and their cards: orders.py). Prefetch semantics (spec 2.0.1,
"Prefetch template"): a key with `null` means the EHR has no such data; a missing key, or an
OperationOutcome, means it could not be provided, so the service fetches it; if it cannot, it answers
412 with an OperationOutcome.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from functools import lru_cache, partial
from typing import Any, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from leukodx.engine import Assessment, CaseError, Engine, NotAssessed, Problem
from leukodx.engine.render import to_json_pieces
from leukodx.engine.parse import load_json_document, problems_from_validation

from .. import audit, fhir, metrics
from ..config import Settings
from ..deps import CDS_TYPES, LeanRoute, base_url, engine, read_body
from ..deps import settings as app_settings
from ..offload import INLINE_MAX_BYTES, run_cpu
from ..problems import ProblemError
from ..reports import answers_first, store_report
from ..tracing import traced
from . import cards as C
from . import signals
from .auth import AuthError, JwtVerifier, verifier_from_settings
from .gather import ORDER_DATA, gather, medications_unknown, named
from .models import Card, CardsResponse, FeedbackRequest, HookRequest
from .orders import draft_orders, order_cards, unmatched_selections
from .prefetch import templates as _templates

router = APIRouter(tags=["CDS Hooks"])
log = logging.getLogger("leukodx.cds")

SERVICES: dict[str, dict[str, str]] = {
    "leukodx-patient-view": {
        "hook": "patient-view", "title": "leukodx: leukopenia and neutropenia assessment",
        "description": "Assesses the latest CBC: neutrophil risk tier with CTCAE grades, alerts (febrile neutropenia, "
                       "agranulocytosis), ranked causes with their evidence, and next diagnostic steps, each traced to "
                       "its guideline."},
    "leukodx-order-select": {
        "hook": "order-select", "title": "leukodx: thiopurine and clozapine order check",
        "description": "When a thiopurine (azathioprine, mercaptopurine, thioguanine) or clozapine is selected: the "
                       "CPIC TPMT/NUDT15 recommendation or the clozapine ANC threshold, with the latest CBC assessment."},
    "leukodx-order-sign": {
        "hook": "order-sign", "title": "leukodx: thiopurine and clozapine order check at signing",
        "description": "Before a thiopurine or clozapine order is signed: the CPIC-adjusted dose (or cancelling the order "
                       "for a poor metabolizer), genotyping when the status is unknown, and the clozapine ANC threshold."},
}


@lru_cache(maxsize=4)
def _verifier(issuers: str, allowlist: str) -> JwtVerifier:
    return verifier_from_settings(issuers, [u.strip() for u in allowlist.split(",") if u.strip()])


async def _authorize(request: Request, settings: Settings) -> Optional[dict[str, Any]]:
    """The verified token's claims (for the audit record), or None when CDS authentication is off."""
    if settings.cds_auth.lower() == "off":
        return None
    audience = (settings.cds_public_base_url.rstrip("/") + request.url.path) if settings.cds_public_base_url \
        else str(request.url.replace(query=""))
    try:
        return await _verifier(settings.cds_issuers, settings.cds_jku_allowlist).verify_async(
            request.headers.get("authorization"), audience)
    except AuthError as e:
        log.warning("cds auth refused", extra={"reason": e.reason, "path": request.url.path})
        audit.note_reason(f"unauthorized: {e.reason}")
        raise ProblemError(401, "Unauthorized") from None
    except ValueError:
        log.error("cds auth misconfigured: LEUKODX_CDS_ISSUERS is not valid")
        audit.note_reason("unauthorized: LEUKODX_CDS_ISSUERS is not valid")
        raise ProblemError(401, "Unauthorized") from None


@router.get("/cds-services", summary="CDS Hooks discovery")
def discovery(eng: Engine = Depends(engine)) -> dict[str, Any]:
    prefetch = _templates(eng)
    return {"services": [{"id": sid, **spec, "prefetch": prefetch} for sid, spec in SERVICES.items()]}


def _operation_outcome(status: int, text: str, diagnostics: str) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "details": {"text": text}, "diagnostics": diagnostics}]},
        status_code=status, media_type="application/fhir+json")


_PROBLEM = {"content": {"application/problem+json": {}}, "description": "Problem details (RFC 9457)"}
_CALL_ERRORS = {400: _PROBLEM, 401: _PROBLEM, 404: _PROBLEM, 413: _PROBLEM,
                412: {"content": {"application/fhir+json": {}},
                      "description": "OperationOutcome: the data the service needs could not be had"}}


async def call_service(service_id: str, request: Request) -> Response:
    """A CDS service call (a LeanRoute, registered below: it takes the engine and settings itself and
    returns its cards serialized)."""
    await answers_first()                            # the answers already made go out before this call's work
    eng, settings = await engine(request), await app_settings(request)
    audit.note_client(await _authorize(request, settings))
    if service_id not in SERVICES:
        raise ProblemError(404, "Not found", f"No CDS service {service_id!r}.")
    body = await read_body(request, CDS_TYPES)   # JSON only: a form or text/plain POST needs no CORS preflight
    answer = await _answer(service_id, body, request, eng, settings)
    if isinstance(answer, Response):                 # the data it asked for could not be had (412)
        return answer
    cards, report = answer
    if report is not None:                           # the call's objects are freed while its report is written
        await _link_report(*report, request, settings)
    metrics.cards_returned(service_id, cards)   # counted by indicator, and their uuids in the audit record
    answer = CardsResponse(cards=cards)
    return Response(answer.__pydantic_serializer__.to_json(answer, exclude_none=True), media_type="application/json")


async def _answer(service_id: str, body: bytes, request: Request, eng: Engine,
                  settings: Settings) -> Response | tuple[list[Card], Optional[tuple[Card, list[bytes]]]]:
    """The cards of a call, and the card to link to its report with the report's body (the assessment as
    JSON) when there is one; or the OperationOutcome saying why there can be no cards."""
    small = len(body) <= INLINE_MAX_BYTES           # parsed, mapped and assessed on the loop (api/offload.py)
    try:
        raw = await run_cpu(traced("leukodx.parse", load_json_document), body, "CDS Hooks request",
                            settings.cds_max_body_bytes, settings.max_depth, settings.max_fhir_nodes, inline=small)
        hook = HookRequest.model_validate(raw)
    except CaseError as e:
        raise ProblemError(400, "Invalid CDS Hooks request", str(e.problems[0].msg) if e.problems else "") from None
    except ValidationError as e:
        raise ProblemError(400, "Invalid CDS Hooks request", "", problems_from_validation(e)) from None
    audit.note_call(hook.hook, hook.hookInstance, hook.context.get("patientId"))
    if hook.hook != SERVICES[service_id]["hook"]:
        raise ProblemError(400, "Invalid CDS Hooks request",
                           f"service {service_id} answers {SERVICES[service_id]['hook']}, not {hook.hook}")
    patient_id = hook.context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        raise ProblemError(400, "Invalid CDS Hooks request", "context.patientId is required")

    resources, missing, notes, fetched, first_page_only, unhad = await gather(hook, settings, _templates(eng))
    small = small and not fetched                   # what a FHIR server sent can be of any size
    if missing:
        why = "; ".join(missing) + _prefetch_mismatch(hook, _templates(eng), patient_id)
        # the log gets what was missing, never the mismatch's patient ids or key names (an id with a comma or a
        # parenthesis had been logged in part): the caller's OperationOutcome says it all
        log.warning("cds no data", extra={"hook_instance": hook.hookInstance, "service": service_id,
                                          "reason": _REF.sub(r"\1/-", "; ".join(missing))[:500]})
        audit.note_reason("no data: " + "; ".join(missing))
        return _operation_outcome(412, "leukodx cannot assess this patient without the data it asked for.",
                                  "Prefetch missing and the FHIR server could not be used: " + why)
    drafts = draft_orders(hook)
    resources += draft_orders(hook, "Medication")   # after the prefetch keys: named as draftOrders
    today = datetime.now(timezone.utc).date()
    # an order being written starts today (the mapping dates a draft so; one of another status is dated here),
    # on copies: the drafts themselves go back unchanged in the cards' update actions
    # and a draft naming no subject is the hook's patient's (the order is written in that patient's chart): it had been
    # left out of the assessment while the order check took it as the patient's
    # and an order being signed is a draft whatever status the EHR gave it (one sent "active" had counted as a drug
    # already taken on the patient's card: an urgent hold of a drug never given)
    dated = [{**d, **({} if "authoredOn" in d else {"authoredOn": today.isoformat()}),
              **({} if d.get("subject") else {"subject": {"reference": f"Patient/{patient_id}"}}), "status": "draft"}
             for d in drafts]
    assessment: Optional[Assessment] = None   # the patient's assessment
    ordered: Optional[Assessment] = None      # the same with the draft orders counted as taken (the order check)
    left_out: list[str] = list(notes)
    counts_unread = True           # whether a value that could give the ANC was left unread (set once assessed)
    anc_unread = False             # whether one that gives it (a WBC too) was
    problems: list[str] = []
    where: list[str] = []            # what was left out or refused, by place only (for the log)
    mismatch = False
    weight: Optional[float] = None   # the patient's, for the order check's mg/kg/day
    cautions: list[str] = []         # what must be checked before acting on any card (a deceased patient)
    mapped: Optional[fhir.Mapped] = None
    try:
        # the case is named by the call, not by the patient: the report behind the card's link keeps no patient id
        mapped = await run_cpu(traced("leukodx.map", partial(fhir.map_bundle, resources + dated, kb=eng.kb,
                                                             case_id=f"cds-call-{hook.hookInstance}"[:200],
                                                             patient_id=patient_id, as_of=today, include_draft=True)),
                               inline=small)
        left_out += [_left_out_text(n) for n in mapped.not_assessed]
        if medications_unknown(hook, unhad):
            mapped.case["history"] = {**mapped.case.get("history", {}), "medications_unknown": True}
        weight, cautions = mapped.case["patient"].get("weight_kg"), mapped.cautions
        ordered = assessment = await run_cpu(partial(eng.assess, mapped.case, partial=True), inline=small)
        if mapped.drafts:          # the patient's card: the drafts being signed are not taken yet (Mapped.without_drafts)
            try:
                assessment = await run_cpu(partial(eng.assess, mapped.without_drafts(), partial=True), inline=small)
            except CaseError:      # the drafts were all there was (no count, no other drug): no patient card
                assessment = None
        read = assessment or ordered
        left_out += [_left_out_text(n) for n in read.not_assessed]
        anc_unread = signals.neutrophil_value_unread((*mapped.not_assessed, *read.not_assessed), eng.kb.loinc)
        counts_unread = anc_unread or any("observation" in n.field.lower() for n in mapped.not_assessed)
        left_out += [f"{u.text}: not a {u.kind} leukodx knows" + (f" (did you mean {' or '.join(u.suggestions)}?)"
                                                                  if u.suggestions else "")
                     for u in read.unrecognised]
        where += [named(n.field) for n in (*mapped.not_assessed, *read.not_assessed)]
        where += [f"{u.field} (an unknown {u.kind})" for u in read.unrecognised]
    except fhir.FhirMappingError as e:
        mismatch = any(p.loc == "subject" for p in e.problems)
        # an ANC or WBC that could not be read, and nothing else: not a patient with nothing to flag (an ANC of 0.3 in
        # a unit leukodx does not read had been an information card)
        anc_unread = signals.neutrophil_value_unread([NotAssessed(field=p.loc or "Observation", reason=p.msg)
                                                for p in e.problems], eng.kb.loinc)
        # no lab Observation at all (nothing skipped, nobody else's): nothing to assess and nothing hidden
        nothing = len(e.problems) == 1 and e.problems[0].loc == "" and not notes
        problems = [] if nothing else _problem_texts(e.problems)
        where += [named(p.loc) or "the data" for p in e.problems]
    except CaseError as e:       # nothing the engine could read: a count among what it refused is a warning
        problems = [str(p) for p in e.problems]
        where += [p.loc for p in e.problems]
        labs = (mapped.case.get("labs") or []) if mapped is not None else []
        refused = [labs[int(m.group(1))] for p in e.problems for m in [_LAB_AT.match(p.loc)]
                   if m and int(m.group(1)) < len(labs)]
        anc_unread = signals.neutrophil_value_unread([NotAssessed(field="labs", reason="", value=str(
            lab.get("test") or lab.get("loinc") or "")) for lab in refused], eng.kb.loinc)
    if problems or left_out:   # where, never what: no case value, drug or condition text, id or patient reference
        log.warning("cds partial data", extra={
            "hook_instance": hook.hookInstance, "service": service_id, "assessed": assessment is not None,
            "patient_mismatch": mismatch, "left_out": len(left_out), "notes": len(notes),
            # places only: a place's closing "(Type/id)" masked whole (an id with a comma had been logged in part)
            "where": _REF.sub(r"\1/-", "; ".join(_PLACE_REF.sub(r"(\1/-)", w) for w in where[:10]))[:500]})
    cards: list[Card] = []
    report: Optional[tuple[Card, list[bytes]]] = None
    if assessment is None and problems:
        cards.append(C.unassessed_card(hook.hookInstance, problems + notes,
                                       "warning" if mismatch or anc_unread else "info"))
    elif assessment is None:
        pass                           # the EHR has no blood count for this patient: nothing to say
    elif not assessment.cbc.current and not assessment.alerts and not signals.urgent_steps(assessment) \
            and not signals.cytopenia_without_white_count(assessment) \
            and (anc_unread or not signals.percentage_without_white_count(assessment)):   # a WBC sent unread: named below
        if assessment.cbc.tests:   # an old count alone says nothing acute; a temperature with no count, nothing
            cards.append(C.stale_card(assessment, hook.hookInstance, "observations" in first_page_only))
    else:
        cards += traced("leukodx.cards", C.assessment_cards)(assessment, hook.hookInstance, patient_id, anc_unread)
        if cards and settings.report_link_minutes > 0:
            report = cards[0], to_json_pieces(assessment)
    cards += traced("leukodx.orders", order_cards)(eng, drafts, ordered, resources, hook, patient_id, weight,
                                                   frozenset(ORDER_DATA[k] for k in unhad if k in ORDER_DATA))
    unmatched = unmatched_selections(hook)
    if unmatched:
        cards.append(C.unmatched_selection_card(hook.hookInstance, unmatched, eng.kb.version))
    drugs_alone = mapped is not None and mapped.drugs_alone()
    if drugs_alone and not cards:   # drugs alone, nothing to flag: as with no lab at all, or with none readable
        if len(mapped.labs_unread) > 1 or notes:    # (the first: "no lab value ...")
            cards.append(C.unassessed_card(hook.hookInstance, _problem_texts(mapped.labs_unread) + notes,
                                           "warning" if anc_unread else "info"))
    elif left_out:
        if not cards and assessment is not None and not assessment.cbc.tests:
            # a temperature or a differential, and no count to check: a warning when a count sent was unread
            cards.append(C.unassessed_card(hook.hookInstance, left_out, "warning" if anc_unread else "info"))
        else:
            if not cards and assessment is not None:
                cards.append(C.checked_card(assessment, hook.hookInstance, counts_unread, anc_unread))
            C.note_left_out(cards, [i for i in left_out if i not in notes])   # what the EHR could not give: first
            C.note_cautions(cards, [f"{n}." for n in notes if n in left_out], "Could not be had")
    C.note_cautions(cards, cautions)
    return cards, report


def _problem_texts(problems: list[Problem]) -> list[str]:
    return [p.msg if p.loc in ("", "subject") else f"{named(p.loc)}: {p.msg}" for p in problems]


def add_call_route(app: FastAPI) -> None:
    """The service call on the application's own router, ahead of the included routers (whose routes a
    request reaches only after FastAPI has matched the router: 3% of a call's instructions, measured)."""
    app.router.add_api_route("/cds-services/{service_id}", call_service, methods=["POST"], tags=["CDS Hooks"],
                             route_class_override=LeanRoute, summary="Call a CDS service", response_model=CardsResponse,
                             response_model_exclude_none=True, responses=_CALL_ERRORS)


async def _link_report(card: Card, report: list[bytes], request: Request, settings: Settings) -> None:
    """Link the card to the full assessment in leukodx's own page. If the report cannot be stored the
    cards still go out, without the link: the link is a convenience, the cards are not."""
    base = settings.cds_public_base_url.rstrip("/") or base_url(request)
    try:
        token = await store_report(settings, report)   # batched with others (reports.py)
    except Exception as e:   # noqa: BLE001 - the database down or locked must not cost the cards
        log.warning("report link left out: the report could not be stored (%s)", type(e).__name__)
        return
    C.add_report_link(card, f"{base}/report/{token}", settings.report_link_minutes)


def _prefetch_mismatch(hook: HookRequest, templates: dict[str, str], patient_id: str) -> str:
    """What a 412 should also say about a prefetch: keys the service did not ask for, and a Patient in
    it that is not the context patient (some test clients send both)."""
    prefetch = hook.prefetch or {}
    out = ""
    unknown = sorted(k for k in prefetch if k not in templates)
    if unknown:
        out += (f"; the prefetch has keys leukodx did not ask for ({', '.join(unknown[:10])}), which are not read: "
                f"use the keys of the discovery document ({', '.join(templates)})")
    given = [v for v in prefetch.values() if isinstance(v, dict)]
    others = sorted({f"Patient/{r.get('id')}" for r in fhir.resources_of_type(given, "Patient")
                     if r.get("id") and r.get("id") != patient_id.removeprefix("Patient/")})
    if others:
        out += (f"; the prefetch holds {', '.join(others[:3])}, not the context patient Patient/"
                f"{patient_id.removeprefix('Patient/')}: another patient's data is never used")
    return out


# a reference in a log line, masked up to the label's end (an id with spaces had been logged in part)
_REF = re.compile(r"\b([A-Z][A-Za-z]+)/[^,;()]+")
_PLACE_REF = re.compile(r"\(([A-Z][A-Za-z]+)/.*\)$")    # a place's own reference, its last part
_LAB_AT = re.compile(r"labs\[(\d+)\]")        # a case problem's place: the lab it is about


def _left_out_text(n: NotAssessed) -> str:
    return f"{named(n.field)}" + (f" ({n.value})" if n.value else "") + f": {n.reason}"


@router.post("/cds-services/{service_id}/feedback", summary="Feedback on cards",
             responses={400: _PROBLEM, 401: _PROBLEM, 404: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM})
async def feedback(service_id: str, request: Request, settings: Settings = Depends(app_settings)) -> JSONResponse:
    audit.note_client(await _authorize(request, settings))
    if service_id not in SERVICES:
        raise ProblemError(404, "Not found", f"No CDS service {service_id!r}.")
    # JSON only, as the service calls: a text/plain POST (no CORS preflight) had been stored; above its own body
    # limit a 413, as the calls get
    raw = await read_body(request, CDS_TYPES)
    if len(raw) > settings.max_body_bytes:
        raise ProblemError(413, "Feedback too large", f"feedback is larger than {settings.max_body_bytes} bytes")
    try:
        body = FeedbackRequest.model_validate(load_json_document(raw, "feedback", settings.max_body_bytes,
                                                                 settings.max_depth))
    except CaseError as e:
        raise ProblemError(400, "Invalid feedback", e.problems[0].msg if e.problems else "") from None
    except ValidationError as e:
        raise ProblemError(400, "Invalid feedback", "", problems_from_validation(e)) from None
    from ..feedback import store_for   # SQLAlchemy is loaded on first feedback, not at start-up
    stored = await store_for(settings.feedback_db_url).add_async(service_id, body.feedback)   # committed first
    audit.note_feedback(body.feedback)
    return JSONResponse({"stored": stored})
