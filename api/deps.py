"""What routes need, handed out in one place: the engine, the settings, body reading, the base URL."""
from __future__ import annotations

from typing import Any, Callable, Coroutine, Iterable, Optional

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from leukodx.engine import Engine, get_engine

from .config import Settings
from .problems import ProblemError

__all__ = ["engine", "settings", "read_body", "base_url", "LeanRoute", "LeanRoutes", "JSON_TYPES", "YAML_TYPES",
           "FHIR_TYPES", "CDS_TYPES"]

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
FHIR_TYPES = ("application/fhir+json", "application/json")
CDS_TYPES = ("application/json", "application/fhir+json")     # CDS Hooks: the client POSTs JSON


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


class LeanRoute(APIRoute):
    """A route whose endpoint is called with the request and its path parameters, and nothing else:
    no dependencies solved, no body parsed, no answer validated against ``response_model`` (which
    still documents it in OpenAPI). For an endpoint that reads its own body and returns a Response:
    FastAPI's handler around a CDS call cost 1.6% of its instructions (valgrind)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request=request, **request.path_params)
        return handler


class LeanRoutes:
    """The innermost middleware: a request for a :class:`LeanRoute` goes to its endpoint from here, past
    FastAPI's exit-stack layer, the router's match over every route, and the route's own request and
    exception wrappers (4% of a CDS call's instructions, valgrind). Exceptions are answered by the
    application's handlers through Starlette's ExceptionMiddleware, as for any other route; the scope
    gets the route, endpoint, path parameters and router the router would have set."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app, self.fastapi = app, fastapi
        self._lane: Optional[ASGIApp] = None
        self._routes: list[LeanRoute] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._lane is None:   # on the first request: handlers and routes are all added by then
                self._routes = [r for r in self.fastapi.router.routes if isinstance(r, LeanRoute)]
                handlers = {k: v for k, v in self.fastapi.exception_handlers.items() if k not in (500, Exception)}
                self._lane = ExceptionMiddleware(_call_endpoint, handlers=handlers, debug=self.fastapi.debug)
            for route in self._routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope.setdefault("router", self.fastapi.router)
                    await self._lane(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _call_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    response = await scope["endpoint"](request=Request(scope, receive, send), **scope["path_params"])
    await response(scope, receive, send)


_BASES: dict[tuple[Any, ...], str] = {}


def base_url(request: Request) -> str:
    """The request's own base URL (Starlette builds a URL object for it, 2% of a call), remembered for
    the few (scheme, Host, server, root path) a worker sees; a Host header is the caller's, so the
    memory is bounded."""
    scope = request.scope
    key = (scope.get("scheme"), request.headers.get("host"), tuple(scope.get("server") or ()),
           scope.get("app_root_path", scope.get("root_path", "")))
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) >= 64:
            _BASES.clear()
        base = _BASES[key] = str(request.base_url).rstrip("/")
    return base
