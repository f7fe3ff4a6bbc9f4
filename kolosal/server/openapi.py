"""GET /openapi.json: the route table (``endpoints.ROUTES``) described. Request schemas come
from the pydantic models that validate the bodies, response schemas from the TypedDicts
the handlers build (``json_schema``), and error statuses from what each route declares
and what its method, auth and body imply, so none of it can drift from the code.
tests/server/test_fuzz.py fuzzes the server from this document (schemathesis),
tests/server/test_openapi_responses.py checks a real answer of every operation against
it, and tests/server/test_hardening_http.py checks every route of the app is described."""
from __future__ import annotations

from typing import Any

from .. import __version__
from .endpoints import ROUTES
from .errors import ErrorBody
from .json_schema import type_schema, typed_dict_schema
from .routing import PARAMETER, Route

STATUS_TEXT = {400: "invalid request (param names the field)", 401: "missing or wrong API key",
               403: "forbidden: admin key required, path outside --models-dir, or (no API key "
                    "configured) a foreign Origin or a non-loopback Host",
               404: "unknown model, engine, response or model file", 409: "the engine id exists",
               413: "body over --max-body-bytes", 415: "Content-Type is not application/json",
               500: "inference or engine load failure",
               503: "engine_overloaded / engine_stopped / insufficient_memory / server_draining "
                    "(Retry-After)",
               504: "deadline_exceeded: the request's timeout passed"}
STRING: dict[str, Any] = {"type": "string"}


def error_statuses(route: Route) -> list[int]:
    statuses = set(route.errors)
    if not route.public:
        statuses.add(401)
    if route.method != "get":
        statuses |= {403, 503}   # Origin/Host or admin key; draining
    if route.request is not None:
        statuses |= {400, 413, 415}
    return sorted(statuses - set(route.also))


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def describe(route: Route, path: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """One operation; the response shapes it refers to are added to ``schemas``."""
    if route.response is not None:
        content = json_content(type_schema(route.response, schemas))
    else:
        content = {route.media: {"schema": STRING if route.media != "application/json"
                                 else {"type": "object"}}}
    if route.stream:
        content["text/event-stream"] = {"schema": STRING}
    responses: dict[str, Any] = {str(route.status): {"description": "success", "content": content}}
    for status, shape in route.also.items():
        responses[str(status)] = {"description": "not ready",
                                  "content": json_content(typed_dict_schema(shape, schemas))}
    error = json_content(typed_dict_schema(ErrorBody, schemas))
    for status in error_statuses(route):
        responses[str(status)] = {"description": STATUS_TEXT[status], "content": error}
    described: dict[str, Any] = {"summary": route.summary, "responses": responses}
    if route.request is not None:
        described["requestBody"] = {"required": True, "content": json_content(
            {"$ref": f"#/components/schemas/{route.request.__name__}"})}
    parameters = [{"name": name, "in": "path", "required": True, "schema": STRING}
                  for name in PARAMETER.findall(path)]
    parameters += [{"name": name, "in": "query", "required": False, "schema": STRING}
                   for name in route.query]
    if parameters:
        described["parameters"] = parameters
    if route.public:
        described["security"] = []
    return described


def openapi_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    for route in routes:
        if route.request is not None:
            schema = route.request.model_json_schema(ref_template="#/components/schemas/{model}")
            requests.update(schema.pop("$defs", {}))
            requests[route.request.__name__] = schema
    shapes: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        for path in route.paths:
            paths.setdefault(path, {})[route.method] = describe(route, path, shapes)
    clashes = requests.keys() & shapes.keys()
    if clashes:  # one name in components would describe two different things
        raise TypeError(f"request models and response shapes share names: {sorted(clashes)}")
    schemas = {**shapes, **requests}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kolosal Server", "version": __version__,
                 "description": "OpenAI-compatible inference server for GGUF models."},
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
    }
