"""create_app(registry, settings): the Quart app. State lives on the app, not in globals."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from ..config import ServerSettings
from ..engine import EngineRegistry
from . import health, routes_engines, routes_openai
from .errors import APIError
from .http import json_response
from .observe import UNMATCHED_ROUTE, Metrics, RequestRecord, new_request_id
from .openapi import openapi_document

logger = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/", "/health", "/v1/health", "/openapi.json"}) | health.PROBE_PATHS
STATIC_DIR = Path(__file__).resolve().parent / "static"


def supplied_key() -> bytes:
    """The key from ``Authorization: Bearer`` (preferred) or ``X-API-Key``."""
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip().encode()
    return request.headers.get("X-API-Key", "").encode()


def key_matches(supplied: bytes, keys: list[bytes]) -> bool:
    """Constant time: every key is compared, no early exit on a match."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(supplied, key)
    return valid


def is_management(method: str, path: str) -> bool:
    """Loading and deleting engines (reading their status stays an API-key call)."""
    return method in ("POST", "DELETE") and (path.startswith("/engines") or path.startswith("/v1/engines"))


def create_app(registry: EngineRegistry, settings: ServerSettings) -> Quart:
    app = Quart("kolosal")
    app.config["REGISTRY"] = registry
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = 60
    app.config["RESPONSE_TIMEOUT"] = None
    app.register_blueprint(routes_openai.blueprint)
    app.register_blueprint(routes_engines.blueprint)
    metrics = Metrics(registry)
    app.config["METRICS"] = metrics
    api_keys = [key.encode() for key in settings.api_keys if key]
    admin_keys = [key.encode() for key in settings.admin_keys if key]

    @app.before_request
    async def start_record() -> None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        g.record = RequestRecord(metrics, new_request_id(request.headers.get("X-Request-Id")),
                                 request.method, request.path, route)

    @app.before_request
    async def check_keys() -> None:
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS:
            return
        supplied = supplied_key()
        if admin_keys and is_management(request.method, request.path):
            if key_matches(supplied, admin_keys):
                return
            if key_matches(supplied, api_keys):
                raise APIError(403, "Managing engines requires an admin key.",
                               type="permission_error", code="admin_key_required")
            raise APIError(401, "Incorrect or missing admin key. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")
        if not api_keys or key_matches(supplied, api_keys) or key_matches(supplied, admin_keys):
            return
        raise APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                       code="invalid_api_key")

    health.register(app)  # probes; after SIGTERM, new work is refused with 503 server_draining

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

    @app.after_request
    async def finish_record(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None:
            response.headers["X-Request-Id"] = record.request_id
            if response.mimetype != "text/event-stream":  # streams finish when they end
                record.finish(response.status_code)
        return response

    chat_page = (STATIC_DIR / "index.html").read_bytes()
    openapi = openapi_document()

    @app.get("/")
    async def index() -> Response:
        """The built-in chat page: static HTML + JS, no build step, no CDN."""
        return Response(chat_page, content_type="text/html; charset=utf-8")

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        return json_response(openapi)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    async def add_cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and ("*" in settings.cors_origins or origin in settings.cors_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = ("Authorization, Content-Type, X-API-Key, "
                                                                "X-Request-Id")
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        return response

    @app.errorhandler(APIError)
    async def api_error(error: APIError) -> Response:
        return json_response(error.body(), status=error.status, headers=error.headers)

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

    return app
