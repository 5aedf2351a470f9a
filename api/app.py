"""The FastAPI application: REST and CDS Hooks over one engine per worker process.

Run it with `leukodx serve` (uvicorn). The engine is built in the lifespan hook, after uvicorn has
forked its workers, once per process.
"""
from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from leukodx.engine import get_engine
from leukodx.engine import ENGINE_VERSION

from . import audit, metrics, problems, reports, rest, tracing
from .cds import auth as cds_auth
from .cds import routes as cds_routes
from .config import Settings, check_deployment, get_settings
from .deps import LeanRoutes
from .middleware import CSP_DOCS, BodyLimit, RequestContext, configure_logging

__all__ = ["create_app", "app"]


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    db_url = settings.feedback_db_url

    def replay_store() -> cds_auth.ReplayStore:
        from .feedback import store_for   # SQLAlchemy is loaded on first use, not at start-up
        return store_for(db_url).replay

    # Token ids live in the feedback database, shared by every worker and replica (api/feedback.py).
    cds_auth.configure_replay_store(replay_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.note_engine(get_engine())   # build the rules engine in this worker process, after any fork
        if settings.cds_auth.lower() == "off":
            logging.getLogger("leukodx.api").warning(
                "CDS Hooks JWT checks are OFF (LEUKODX_CDS_AUTH=off): any caller can use the CDS services. "
                "Development only.")
        elif not settings.cds_public_base_url:
            logging.getLogger("leukodx.api").warning(
                "LEUKODX_CDS_PUBLIC_BASE_URL is not set: the JWT audience is taken from the request's Host header "
                "(LEUKODX_CDS_AUDIENCE_FROM_REQUEST). Development only.")
        if settings.fhir_allow_loopback:
            logging.getLogger("leukodx.api").warning(
                "LEUKODX_FHIR_ALLOW_LOOPBACK is on: a CDS call may make leukodx fetch from this machine. "
                "Development only.")
        if not settings.audit_key.get_secret_value():
            logging.getLogger("leukodx.api").warning(
                "LEUKODX_AUDIT_KEY is not set: audit records carry no patient hash, so a patient's records cannot be "
                "found (docs/audit.md). Development only.")
        _settle_heap()
        logging.getLogger("leukodx.api").info("ready", extra={"kb_version": get_engine().kb.version})
        opening = reports.open_report_store(settings)     # in a thread, while the worker already answers
        if opening is not None:        # SQLAlchemy, alembic and the store: 42,000 more objects for life
            opening.add_done_callback(lambda _: _settle_heap())
        yield
        if opening is not None and not opening.done():
            opening.cancel()

    # FastAPI's own telemetry off: leukodx alone decides what leaves the process (api/tracing.py scrubs the
    # query string, which names the patient; FastAPI's would export it, its metrics and its log records
    # when FASTAPI_OTEL_AUTO_CONFIGURE=true or a global provider is set); it also read the environment
    # three times a request.
    app = FastAPI(title="leukodx", version=ENGINE_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
                  generate_unique_id_function=lambda route: route.name,   # operation ids: assess, call_service ...
                  description="Leukopenia decision support: risk tier, ranked causes and next diagnostic steps, "
                              "each traced to its source. Supports and does not replace clinical judgement.")
    app.state.settings = settings
    # Routes get the worker's engine wrapped for metrics, spans and the audit record (api/metrics.py).
    app.state.engine_provider = metrics.observed_engine
    problems.install(app)
    cds_routes.add_call_route(app)      # first: the busiest route
    app.include_router(rest.router)
    app.include_router(rest.kb_router)
    app.include_router(cds_routes.router)
    app.include_router(reports.router)

    static = resources.files("fastapi_offline") / "static"
    app.mount("/static/docs", StaticFiles(directory=str(static)), name="docs-static")
    page = resources.files(__package__) / "static"
    app.mount("/static/app", StaticFiles(directory=str(page)), name="app-static")

    @app.get("/", include_in_schema=False)
    def clinician_page() -> HTMLResponse:
        """The page for clinicians: a case form, or a pasted/uploaded case or FHIR Bundle."""
        return HTMLResponse((page / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> HTMLResponse:
        """The page's icon, where browsers look for it (api/static/favicon.ico)."""
        return HTMLResponse((page / "favicon.ico").read_bytes(), media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="leukodx API",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png")
        page.headers["content-security-policy"] = CSP_DOCS.decode()   # Swagger UI starts with an inline script
        return page

    @app.get("/healthz", tags=["operations"], summary="Alive")
    async def healthz() -> dict[str, str]:   # on the event loop itself: it answers whenever the loop is free
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Rules loaded and engine answering")
    def readyz() -> JSONResponse:
        eng = metrics.note_engine(get_engine())
        ok = eng.healthy and bool(eng.kb.rules)
        return JSONResponse({"status": "ready" if ok else "not ready", "kb_version": eng.kb.version,
                             "rules": len(eng.kb.rules), "engine_version": ENGINE_VERSION},
                            status_code=200 if ok else 503)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            defs = rest.case_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["Case"] = defs
            _document_errors_and_security(schema)
            rest.document_views(schema)
            rest.add_examples(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def limit_for(path: str) -> int:
        if path.startswith("/cds-services") and not path.endswith("/feedback"):   # feedback: the 1 MiB of others
            return settings.cds_max_body_bytes
        return settings.fhir_max_body_bytes if path == "/v1/assess/fhir" else settings.max_body_bytes

    # The last middleware added is the outermost: CORS headers go on every answer, 413s and 500s included;
    # the audit record and the HTTP metrics see 413s and 500s too.
    app.add_middleware(LeanRoutes, fastapi=app)
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(audit.AuditTrail, auditor=audit.Auditor(settings.audit_key.get_secret_value(),
                                                               settings.audit_log_file))
    app.add_middleware(RequestContext,   # it also times and counts each request for /metrics
                       observe=metrics.http_observer(lambda: app.routes) if settings.metrics else None)
    if settings.metrics:
        metrics.install(app)
    origins = Settings.origins_of(settings.cors_origins)
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Request-ID"])
    tracing.configure(app)   # only when the OTEL_* variables ask for it (api/tracing.py)
    return app


def _settle_heap() -> None:
    """Move everything alive now (the engine, the knowledge base, the web framework, the database
    layer once opened), which lives as long as the worker, out of the garbage collector's reach: a
    full collection then walks only per-request objects. Left in reach, the 42,000 objects of the
    report store's database layer (SQLAlchemy, alembic) were walked by every full collection, which
    took 33 ms over 49,000 objects here; a serving worker's full collections now walk 5,000-10,000
    objects in 1-5 ms (measured at 64 clients)."""
    gc.collect()
    gc.freeze()


def app() -> FastAPI:
    """Factory for uvicorn (`leukodx serve`, or `uvicorn --factory leukodx.api.app:app`). Refuses settings
    that are unsafe to serve with (:func:`~leukodx.api.config.check_deployment`)."""
    settings = get_settings()
    check_deployment(settings)
    return create_app(settings)


_PROBLEM_SCHEMA = {
    "type": "object", "description": "RFC 9457 problem details; `errors` names every field and why.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "pointer": {"type": "string", "description": "JSON Pointer into the request body"},
            "loc": {"type": "string"}, "detail": {"type": "string"}}}}}}


def _document_errors_and_security(schema: dict[str, Any]) -> None:
    """The Problem schema behind every application/problem+json answer, and the CDS Hooks bearer JWT
    (CDS Hooks 2.0.1, "Trusting CDS Clients") on the service and feedback calls."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    components.setdefault("securitySchemes", {})["cdsHooksJwt"] = {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A JWT signed by a trusted CDS Client (ES384 or RS384), aud = the called URL, jti once."}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if "application/problem+json" in content:
                    content["application/problem+json"] = {"schema": {"$ref": "#/components/schemas/Problem"}}
            if path.startswith("/cds-services/"):
                operation["security"] = [{"cdsHooksJwt": []}]
