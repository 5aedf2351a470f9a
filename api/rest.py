"""REST: assess a case (or a FHIR Bundle), and browse the knowledge base.

Bodies are parsed by media type, never guessed: JSON (``application/json``) or YAML
(``application/yaml``, ``text/yaml``) on ``/v1/assess``, JSON only on ``/v1/assess/fhir``. The size,
nesting and value-count limits are checked before the parser runs (engine/parse.py), and the
parsing, mapping and assessing run in a worker thread (api/offload.py), never on the event loop.
"""
from __future__ import annotations

from datetime import date
from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from leukodx.engine import Engine
from leukodx.engine.assessment import Assessment
from leukodx.engine.case import Case
from leukodx.engine.errors import Problem
from leukodx.engine.parse import load_json_document, load_yaml_document
from leukodx.engine.render import to_json

from .config import Settings
from .deps import FHIR_TYPES, JSON_TYPES, YAML_TYPES, engine, read_body, settings
from .offload import run_cpu
from .problems import PROBLEM_JSON, ProblemError

router = APIRouter(prefix="/v1", tags=["assessment"])
kb_router = APIRouter(prefix="/v1", tags=["knowledge base"])

_PROBLEM = {"content": {PROBLEM_JSON: {}}, "description": "Problem details (RFC 9457)"}
_ERRORS = {413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 500: _PROBLEM}
Ctcae = Optional[Literal["5.0", "6.0"]]


def _json_response(text: str) -> Response:
    return Response(text, media_type="application/json")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@router.post("/assess", summary="Assess a case", response_model=Assessment, responses=_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/Case"}},
                 "application/yaml": {"schema": {"$ref": "#/components/schemas/Case"}}}}})
async def assess(request: Request, ctcae: Ctcae = Query(None, description="CTCAE version (default 5.0)"),
                 partial: bool = Query(False, description="leave out what cannot be read (listed in not_assessed) "
                                                          "and assess the rest, instead of answering 422"),
                 eng: Engine = Depends(engine)) -> Response:
    """A case in the case contract (JSON or YAML) in; the Assessment out, exactly as the engine
    returns it. Strict by default: any problem in the case is a 422 naming every field."""
    config: Settings = request.app.state.settings
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
        return to_json(eng.assess(doc, ctcae_version=ctcae, partial=partial), indent=None)

    return _json_response(await run_cpu(work))


@router.post("/assess/fhir", summary="Assess a FHIR R4 Bundle", response_model=Assessment, responses=_ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/fhir+json": {"schema": {"type": "object", "description": "FHIR R4 Bundle"}}}}})
async def assess_fhir(request: Request,
                      patient: Optional[str] = Query(None, description="Patient id when the Bundle holds several"),
                      as_of: Optional[date] = Query(None, description="date to judge at (default: latest lab)"),
                      ctcae: Ctcae = Query(None),
                      partial: bool = Query(True, description="leave out resources that cannot be read (listed in "
                                                              "not_assessed) and assess the rest; false: 422"),
                      eng: Engine = Depends(engine), config: Settings = Depends(settings)) -> Response:
    """A FHIR R4 Bundle (Patient, Observation, MedicationRequest, MedicationStatement, Condition) in;
    the Assessment out. EHR data is assessed partially by default: what could not be read is listed in
    ``not_assessed`` (and the mapping's notes in ``warnings``); 422 only when nothing could be assessed."""
    from . import fhir
    body = await read_body(request, FHIR_TYPES)

    def work() -> str:   # JSON only: a FHIR route never parses YAML
        data = load_json_document(body, "FHIR Bundle", config.fhir_max_body_bytes, config.max_depth,
                                  config.max_fhir_nodes)
        try:
            mapped = fhir.map_bundle(data, kb=eng.kb, patient_id=patient, as_of=as_of)
        except fhir.FhirMappingError as e:
            raise ProblemError(422, "The FHIR data cannot be mapped to a case", str(e), e.problems) from None
        if mapped.not_assessed and not partial:
            raise ProblemError(422, "The FHIR data cannot be mapped to a case", "",
                               [Problem(n.field, n.reason) for n in mapped.not_assessed])
        a = eng.assess(mapped.case, ctcae_version=ctcae, partial=partial)
        return to_json(a.model_copy(update={
            "warnings": [f"FHIR: {w}" for w in mapped.warnings] + a.warnings,
            "not_assessed": mapped.not_assessed + a.not_assessed}), indent=None)

    return _json_response(await run_cpu(work))


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
