"""What routes need, handed out in one place: the engine, the settings, body reading."""
from __future__ import annotations

from typing import Iterable

from fastapi import Request

from leukodx.engine import Engine, get_engine

from .config import Settings
from .problems import ProblemError

__all__ = ["engine", "settings", "read_body", "JSON_TYPES", "YAML_TYPES", "FHIR_TYPES"]

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
FHIR_TYPES = ("application/fhir+json", "application/json")


# Dependencies are `async def` (FastAPI runs a plain `def` dependency in a worker thread: a thread
# hop per dependency per request), and the engine comes from the app's own provider rather than from
# `app.dependency_overrides` (FastAPI rebuilds an overridden dependency's signature on every request).

async def engine(request: Request) -> Engine:
    """The worker's engine (built after the fork, at start-up; rebuilt if it failed), as the app
    provides it (create_app: wrapped for metrics, spans and the audit record)."""
    provide = getattr(request.app.state, "engine_provider", None)
    return provide() if provide is not None else get_engine()


async def settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def read_body(request: Request, accepted: Iterable[str]) -> bytes:
    """The request body, after checking its media type (415 otherwise)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accepted = tuple(accepted)
    if media not in accepted:
        raise ProblemError(415, "Unsupported media type",
                           f"Send the body as {' or '.join(accepted)} (got {media or 'no content type'}).")
    return await request.body()
