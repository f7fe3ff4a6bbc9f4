"""create_app(registry, settings): the Quart app. State lives on the app, not in globals;
the routes come from the one route table (``endpoints.ROUTES``), each concern installs its
own hooks (records, auth, drain, guards), and this module only puts them together in order."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from ..config import ServerSettings
from ..engine import EngineError, EngineRegistry
from . import auth, drain, guards, records
from .endpoints import ROUTES
from .errors import APIError, from_engine_error
from .http import json_response
from .observe import Metrics
from .openapi import openapi_document
from .routing import quiet_rules, register

logger = logging.getLogger(__name__)
CORS_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-Id"
# A preflight's Access-Control-Request-Headers is echoed when it is a plain header list (the
# OpenAI SDKs send their own x-stainless-* headers, and more with each release).
HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


def create_app(registry: EngineRegistry, settings: ServerSettings) -> Quart:
    app = Quart("kolosal")
    app.config.update(REGISTRY=registry, SETTINGS=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes,
                      BODY_TIMEOUT=60, RESPONSE_TIMEOUT=None, METRICS=Metrics(registry),
                      OPENAPI=openapi_document())
    register(app, ROUTES)
    # before_request hooks run in this order: the record first, so even a refused request
    # is counted and logged
    records.install(app, app.config["METRICS"], quiet_rules(ROUTES))
    auth.install(app, settings)
    drain.install(app)  # after SIGTERM, new work is refused with 503 server_draining
    guards.install(app, settings)  # client gone, JSON bodies, Origin/Host without keys
    install_idle_unloader(app, registry)
    install_cors(app, settings)
    install_error_handlers(app, settings)
    return app


def install_idle_unloader(app: Quart, registry: EngineRegistry) -> None:
    """The registry's idle-unload task runs while the app serves."""

    @app.before_serving
    async def start_idle_unloader() -> None:
        app.config["IDLE_UNLOADER"] = asyncio.create_task(registry.run_idle_unloader())

    @app.after_serving
    async def stop_idle_unloader() -> None:
        task = app.config.pop("IDLE_UNLOADER", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # an unload it started runs to its end (it is shielded)


def install_cors(app: Quart, settings: ServerSettings) -> None:
    """An allowed origin is echoed (never ``*``, so credentialed requests work when
    --cors-credentials allows them); a preflight gets the headers it asks for."""
    @app.after_request
    async def add_cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and ("*" in settings.cors_origins or origin in settings.cors_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            asked = request.headers.get("Access-Control-Request-Headers", "").strip()
            fits = asked and len(asked) <= 4096 and HEADER_LIST.fullmatch(asked)
            response.headers["Access-Control-Allow-Headers"] = asked if fits else CORS_HEADERS
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
            if settings.cors_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        return response


def install_error_handlers(app: Quart, settings: ServerSettings) -> None:
    """Every error leaves as an OpenAI error object; a bug is a logged 500, never a trace."""

    @app.errorhandler(APIError)
    async def api_error(error: APIError) -> Response:
        return json_response(error.body(), status=error.status, headers=error.headers)

    @app.errorhandler(EngineError)
    async def engine_error(error: EngineError) -> Response:
        """An engine refusal that escaped a handler: its meaning from the one error table."""
        api_error = from_engine_error(error)
        return json_response(api_error.body(), status=api_error.status, headers=api_error.headers)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {404: f"Unknown route: {request.method} {request.path}",
                   405: f"Method {request.method} is not allowed on {request.path}",
                   413: f"Request body too large (limit {settings.max_body_bytes} bytes)"}.get(
                       status, error.description or "HTTP error")
        kind = "invalid_request_error" if status < 500 else "server_error"
        return json_response(APIError(status, message, type=kind).body(), status=status)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(APIError(500, "internal server error", type="server_error").body(),
                             status=500)
