"""GET /openapi.json: the API described for tools, request schemas taken from the
pydantic models that validate the bodies (so the document cannot drift from them)."""
from __future__ import annotations

from typing import Any

from .. import __version__
from .protocol import ChatCompletionRequest, CompletionRequest, EngineCreateRequest

ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"},
    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _body(name: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _responses(*codes: int, stream: bool = False) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "success", "content": {"application/json": {}}}
    if stream:
        ok["content"]["text/event-stream"] = {}
    responses: dict[str, Any] = {"200": ok}
    for code in codes:
        responses[str(code)] = {"description": "error", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    return responses


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for model in (ChatCompletionRequest, CompletionRequest, EngineCreateRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    engine_id = [{"name": "engine_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kolosal Server", "version": __version__,
                 "description": "OpenAI-compatible inference server for GGUF models."},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": {"post": {"summary": "Chat completion (stream or not)",
                                              "requestBody": _body("ChatCompletionRequest"),
                                              "responses": _responses(400, 401, 404, 503, stream=True)}},
            "/v1/completions": {"post": {"summary": "Text completion; prompt string, list or token ids",
                                         "requestBody": _body("CompletionRequest"),
                                         "responses": _responses(400, 401, 404, 503, stream=True)}},
            "/v1/models": {"get": {"summary": "Engines in the OpenAI model-list shape",
                                   "responses": _responses(401)}},
            "/engines": {"post": {"summary": "Load a GGUF model as a new engine (returns when ready, 201)",
                                  "requestBody": _body("EngineCreateRequest"),
                                  "responses": _responses(400, 401, 403, 404, 409, 503)},
                         "get": {"summary": "List engines", "responses": _responses(401)}},
            "/v1/engines": {"get": {"summary": "List engines", "responses": _responses(401)}},
            "/engines/{engine_id}/status": {"get": {"summary": "Engine state and live statistics",
                                                    "parameters": engine_id,
                                                    "responses": _responses(401, 404)}},
            "/engines/{engine_id}": {"delete": {"summary": "Stop an engine and free its memory",
                                                "parameters": engine_id, "responses": _responses(401, 404)}},
            "/v1/health": {"get": {"summary": "Liveness (no API key needed)", "security": [],
                                   "responses": _responses()}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": _responses(401)}},
        },
    }
