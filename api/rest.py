"""REST: assess a case (or a FHIR Bundle), and browse the knowledge base.

Bodies are parsed by media type, never guessed: JSON (``application/json``) or YAML
(``application/yaml``, ``text/yaml``) on ``/v1/assess``, JSON only on ``/v1/assess/fhir``. The size,
nesting and value-count limits are checked before the parser runs (engine/parse.py), and the
parsing, mapping and assessing run in a worker thread (api/offload.py), never on the event loop.

Both assess routes negotiate the answer on ``Accept``: with ``application/fhir+json`` (preferred at
least as much as ``application/json``) the Assessment is a FHIR R4 Bundle (api/fhir/answer.py) and
every error the route raises is an ``OperationOutcome`` (``_Negotiated``, a route class, so the
app-wide problem-details handlers of api/problems.py stay as they are for every other request).
"""
from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from leukodx.engine import Engine
from leukodx.engine.assessment import Assessment
from leukodx.engine.case import Case
from leukodx.engine.errors import CaseError, Problem
from leukodx.engine.parse import load_json_document, load_yaml_document
from leukodx.engine.render import to_json

from .config import Settings
from .fhir import answer
from .deps import FHIR_TYPES, JSON_TYPES, YAML_TYPES, engine, read_body, settings
from .offload import INLINE_MAX_BYTES, run_cpu
from .problems import PROBLEM_JSON, ProblemError

_PROBLEM = {"content": {PROBLEM_JSON: {}}, "description": "Problem details (RFC 9457)"}
_ERRORS = {413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 500: _PROBLEM}
_OUTCOME = {"schema": {"type": "object", "description": "FHIR R4 OperationOutcome (Accept: application/fhir+json)"}}
_NEGOTIATED = {
    200: {"content": {"application/fhir+json": {"schema": {
        "type": "object", "description": "FHIR R4 Bundle (collection) when Accept asks for application/fhir+json: "
                                         "RiskAssessment, DetectedIssue, ServiceRequest, Provenance"}}}},
    **{status: {"content": {PROBLEM_JSON: {}, "application/fhir+json": _OUTCOME},
                "description": "Problem details (RFC 9457); an OperationOutcome when Accept asks for FHIR"}
       for status in (406, 413, 415, 422, 500)}}
Ctcae = Optional[Literal["5.0", "6.0"]]
VARY = {"Vary": "Accept"}


def _json_response(text: str) -> Response:
    return Response(text, media_type="application/json", headers=VARY)


# ---- content negotiation: Accept: application/fhir+json -------------------------------------------


class NotAcceptable(Exception):
    """Accept names only FHIR versions other than R4."""


def wants_fhir(request: Request) -> bool:
    """True when Accept asks for FHIR R4 (:func:`answer.negotiate`); raises :class:`NotAcceptable`
    when it names FHIR only in other versions and accepts nothing else leukodx answers."""
    choice = answer.negotiate(request.headers.get("accept", ""))
    if choice is None:
        raise NotAcceptable()
    return choice == "fhir"


class _InputProblem(ProblemError):
    """A ProblemError that keeps the parsed input, so an OperationOutcome can name FHIRPath locations."""

    def __init__(self, status: int, title: str, detail: str = "", errors: Optional[list[Problem]] = None,
                 root: Any = None):
        super().__init__(status, title, detail, errors)
        self.root = root


_TITLES = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 413: "Request body too large",
           415: "Unsupported media type"}


def _outcome(status: int, title: str, detail: str = "", problems: Optional[list[Problem]] = None,
             root: Any = None) -> Response:
    body = answer.operation_outcome(status, title, detail, problems or [], root)
    return Response(json.dumps(body), status_code=status, media_type=answer.FHIR_MEDIA_TYPE, headers=VARY)


class _Negotiated(APIRoute):
    """The assess routes: when the client asked for FHIR, every error is an OperationOutcome (the
    same statuses, titles and locations as the problem details the app answers otherwise)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                fhir_wanted = wants_fhir(request)
            except NotAcceptable:
                return _outcome(406, "Not acceptable", "leukodx answers FHIR R4 (application/fhir+json; "
                                                       "fhirVersion=4.0) or application/json.")
            if not fhir_wanted:
                return await handler(request)
            try:
                return await handler(request)
            except CaseError as e:
                return _outcome(422, "The case cannot be assessed", "", e.problems)
            except ProblemError as e:
                return _outcome(e.status, e.title, e.detail, e.errors, getattr(e, "root", None))
            except RequestValidationError as e:
                return _outcome(422, "Invalid request", "", [
                    Problem(".".join(str(x) for x in err["loc"] if x != "body"), err["msg"]) for err in e.errors()])
            except StarletteHTTPException as e:
                return _outcome(e.status_code, _TITLES.get(e.status_code, "Error"), str(e.detail or ""))
            except Exception as e:  # noqa: BLE001 - never a stack trace, as api/problems.py does
                logging.getLogger("leukodx.api").error("unhandled error", extra={"error_type": type(e).__name__})
                return _outcome(500, "Internal error", "The request could not be completed; it has been logged.")

        return route


router = APIRouter(prefix="/v1", tags=["assessment"], route_class=_Negotiated)   # the assess routes
kb_router = APIRouter(prefix="/v1", tags=["knowledge base"])
_ASSESS_RESPONSES = {**_ERRORS, **_NEGOTIATED}


View = Literal["full", "compact"]
_VIEW = ("full: the whole Assessment; compact: the count, tier, alerts, causes and steps only "
         "(engine/assessment.py CompactAssessment)")


def _case_subject(case_id: str) -> dict[str, Any]:
    return {"identifier": {"system": "urn:leukodx:case-id", "value": case_id},
            "display": "the patient of the assessed case"}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@router.post("/assess", summary="Assess a case", response_model=Assessment, responses=_ASSESS_RESPONSES,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/Case"}},
                 "application/yaml": {"schema": {"$ref": "#/components/schemas/Case"}}}}})
async def assess(request: Request, ctcae: Ctcae = Query(None, description="CTCAE version (default 5.0)"),
                 partial: bool = Query(False, description="leave out what cannot be read (listed in not_assessed) "
                                                          "and assess the rest, instead of answering 422"),
                 view: View = Query("full", description=_VIEW),
                 eng: Engine = Depends(engine)) -> Response:
    """A case in the case contract (JSON or YAML) in; the Assessment out, exactly as the engine
    returns it. Strict by default: any problem in the case is a 422 naming every field. With
    ``Accept: application/fhir+json``: a FHIR R4 Bundle, and errors as an OperationOutcome."""
    config: Settings = request.app.state.settings
    fhir_wanted = wants_fhir(request)
    body = await read_body(request, JSON_TYPES + YAML_TYPES)
    yaml_body = _media_type(request) in YAML_TYPES
    if yaml_body and len(body) > config.max_yaml_bytes:
        raise ProblemError(413, "Request body too large",
                           f"A YAML case is at most {config.max_yaml_bytes} bytes (send larger cases as JSON).")

    def work() -> str:
        if yaml_body:
            doc = load_yaml_document(body, "case", config.max_yaml_bytes, config.max_depth, config.max_case_nodes)
        else:
            doc = load_json_document(body, "case", config.max_body_bytes, config.max_depth, config.max_case_nodes)
        a = eng.assess(doc, ctcae_version=ctcae, partial=partial)
        if fhir_wanted:
            return json.dumps(answer.assessment_bundle(a, _case_subject(a.case_id)), ensure_ascii=False)
        return a.compact().model_dump_json() if view == "compact" else to_json(a, indent=None)

    text = await run_cpu(work, inline=len(body) <= INLINE_MAX_BYTES)   # small bodies on the loop (api/offload.py)
    return Response(text, media_type=answer.FHIR_MEDIA_TYPE, headers=VARY) if fhir_wanted else _json_response(text)


@router.post("/assess/fhir", summary="Assess a FHIR R4 Bundle", response_model=Assessment,
             responses=_ASSESS_RESPONSES, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/fhir+json": {"schema": {"type": "object", "description": "FHIR R4 Bundle"}}}}})
async def assess_fhir(request: Request,
                      patient: Optional[str] = Query(None, description="Patient id when the Bundle holds several"),
                      as_of: Optional[date] = Query(None, description="date to judge at (default: latest lab)"),
                      ctcae: Ctcae = Query(None),
                      partial: bool = Query(True, description="leave out resources that cannot be read (listed in "
                                                              "not_assessed) and assess the rest; false: 422"),
                      view: View = Query("full", description=_VIEW),
                      eng: Engine = Depends(engine), config: Settings = Depends(settings)) -> Response:
    """A FHIR R4 Bundle (Patient, Observation, MedicationRequest, MedicationStatement, Condition) in;
    the Assessment out. EHR data is assessed partially by default: what could not be read is listed in
    ``not_assessed`` (and the mapping's notes in ``warnings``); 422 only when nothing could be assessed.

    With ``Accept: application/fhir+json``: a FHIR R4 Bundle (RiskAssessment, DetectedIssue,
    ServiceRequest, Provenance; see api/fhir/answer.py), and errors as an OperationOutcome whose
    issues locate each problem in the Bundle (``Bundle.entry[3].resource``)."""
    from . import fhir
    fhir_wanted = wants_fhir(request)
    body = await read_body(request, FHIR_TYPES)

    def work() -> str:   # JSON only: a FHIR route never parses YAML
        data = load_json_document(body, "FHIR Bundle", config.fhir_max_body_bytes, config.max_depth,
                                  config.max_fhir_nodes)
        try:
            mapped = fhir.map_bundle(data, kb=eng.kb, patient_id=patient, as_of=as_of)
        except fhir.FhirMappingError as e:
            raise _InputProblem(422, "The FHIR data cannot be mapped to a case", str(e), e.problems, data) from None
        if mapped.not_assessed and not partial:
            raise _InputProblem(422, "The FHIR data cannot be mapped to a case", "",
                                [Problem(n.field, n.reason) for n in mapped.not_assessed], data)
        a = mapped.noted_in(eng.assess(mapped.case, ctcae_version=ctcae, partial=partial))
        if fhir_wanted:
            return json.dumps(answer.assessment_bundle(a, answer.patient_reference(data, patient), root=data),
                              ensure_ascii=False)
        return a.compact().model_dump_json() if view == "compact" else to_json(a, indent=None)

    text = await run_cpu(work, inline=len(body) <= INLINE_MAX_BYTES)   # small bodies on the loop (api/offload.py)
    return Response(text, media_type=answer.FHIR_MEDIA_TYPE, headers=VARY) if fhir_wanted else _json_response(text)


def _entry(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")


@kb_router.get("/rules", summary="All rules")
def rules(eng: Engine = Depends(engine)) -> list[dict[str, Any]]:
    from leukodx.engine import conditions as C
    return [{"id": r.id, "family": r.family, "stage": r.stage, "statement": r.statement,
             "condition": C.describe(r.condition), "then": [c.model_dump(exclude_none=True) for c in r.then],
             "sources": list(r.sources)} for r in eng.kb.rules]


@kb_router.get("/rules/{rule_id}", summary="One rule", responses={404: _PROBLEM})
def rule(rule_id: str, eng: Engine = Depends(engine)) -> dict[str, Any]:
    from leukodx.engine import conditions as C
    try:
        r = eng.kb.rule(rule_id)
    except KeyError:
        raise ProblemError(404, "Not found", f"No rule {rule_id!r}.") from None
    return {"id": r.id, "family": r.family, "stage": r.stage, "statement": r.statement, "rationale": r.rationale,
            "condition": C.describe(r.condition), "when": r.durable, "file": r.file,
            "then": [c.model_dump(exclude_none=True) for c in r.then],
            "sources": [_entry(eng.kb.sources[s]) for s in r.sources]}


@kb_router.get("/sources", summary="The source catalogue")
def sources(eng: Engine = Depends(engine)) -> list[dict[str, Any]]:
    return [_entry(s) for s in eng.kb.sources.values()]


@kb_router.get("/sources/{source_id}", summary="One source", responses={404: _PROBLEM})
def source(source_id: str, eng: Engine = Depends(engine)) -> dict[str, Any]:
    if source_id not in eng.kb.sources:
        raise ProblemError(404, "Not found", f"No source {source_id!r}.")
    return _entry(eng.kb.sources[source_id])


@kb_router.get("/causes", summary="The causes leukodx ranks")
def causes(eng: Engine = Depends(engine)) -> list[dict[str, Any]]:
    return [_entry(c) for c in eng.kb.causes.values()]


@kb_router.get("/drugs", summary="Drug names the vocabulary knows (generic and brand), for autocomplete")
def drugs(eng: Engine = Depends(engine)) -> list[str]:
    return eng.drugs.names()


@kb_router.get("/steps", summary="The diagnostic steps leukodx proposes")
def steps(eng: Engine = Depends(engine)) -> list[dict[str, Any]]:
    return [_entry(s) for s in eng.kb.steps.values()]


def case_schema() -> dict[str, Any]:
    return Case.model_json_schema(ref_template="#/components/schemas/{model}")


EXAMPLES = Path(__file__).parent / "examples"   # cases from the case library, without their `expect`


def document_views(schema: dict[str, Any]) -> None:
    """``?view=compact`` answers a CompactAssessment: the 200 answer of both assess calls is either."""
    from leukodx.engine.assessment import CompactAssessment
    defs = CompactAssessment.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema["components"]["schemas"]
    for name, sub in defs.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components["CompactAssessment"] = defs
    for path in ("/v1/assess", "/v1/assess/fhir"):
        body = schema["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
        body["schema"] = {"anyOf": [body["schema"], {"$ref": "#/components/schemas/CompactAssessment"}]}


def add_examples(schema: dict[str, Any]) -> None:
    """Request examples for POST /v1/assess (JSON and YAML) from api/examples/, and the response the
    engine gives the first of them: the OpenAPI document shows real cases and real answers."""
    import yaml
    from leukodx.engine import assess as assess_case

    op = schema["paths"]["/v1/assess"]["post"]
    content = op["requestBody"]["content"]
    for i, path in enumerate(sorted(EXAMPLES.glob("*.yaml"))):
        text = path.read_text(encoding="utf-8")
        case = json.loads(json.dumps(yaml.safe_load(text), default=lambda v: v.isoformat()))
        name, summary = path.stem, case.get("title", path.stem)
        content["application/json"].setdefault("examples", {})[name] = {"summary": summary, "value": case}
        content["application/yaml"].setdefault("examples", {})[name] = {"summary": summary, "value": text}
        if i == 0:
            answer = json.loads(to_json(assess_case(text.encode())))
            op["responses"]["200"]["content"]["application/json"]["examples"] = {name: {"summary": summary,
                                                                                        "value": answer}}

