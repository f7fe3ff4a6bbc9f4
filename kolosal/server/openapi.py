"""GET /openapi.json: every route, its request schema (taken from the pydantic models that
validate the bodies, so the two cannot drift), its success shape and every status it can
answer. tests/server/test_fuzz.py fuzzes the server from this document (schemathesis) and
checks each answer against it; tests/server/test_hardening_http.py checks every route of
the app is described."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from .. import __version__
from .protocol import ChatCompletionRequest, CompletionRequest, EngineCreateRequest
from .protocol_embeddings import DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from .protocol_responses import ResponsesRequest

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": STRING, "type": STRING, "param": NULLABLE_STRING, "code": NULLABLE_STRING}}}}
STATUS_TEXT = {400: "invalid request (param names the field)", 401: "missing or wrong API key",
               403: "forbidden: admin key required, path outside --models-dir, or (no API key "
                    "configured) a foreign Origin or a non-loopback Host",
               404: "unknown model or engine", 409: "the engine id exists",
               413: "body over --max-body-bytes", 415: "Content-Type is not application/json",
               500: "inference or engine load failure",
               503: "engine_overloaded / engine_stopped / insufficient_memory / server_draining "
                    "(Retry-After)",
               504: "deadline_exceeded: the request's timeout passed"}


def obj(properties: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with these required properties (others allowed)."""
    return {"type": "object", "required": list(properties),
            "properties": {**properties, **(optional or {})}}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def const(value: Any) -> dict[str, Any]:
    return {"const": value}


USAGE = obj({"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER})
ENVELOPE = {"id": STRING, "created": INTEGER, "model": STRING}
RESPONSES: dict[str, dict[str, Any]] = {
    "ChatCompletion": obj({**ENVELOPE, "object": const("chat.completion"), "usage": USAGE,
                           "choices": array(obj({"index": INTEGER, "finish_reason": NULLABLE_STRING,
                                                 "message": obj({"role": const("assistant")})}))}),
    "Completion": obj({**ENVELOPE, "object": const("text_completion"), "usage": USAGE,
                       "choices": array(obj({"index": INTEGER, "text": STRING,
                                             "finish_reason": NULLABLE_STRING}))}),
    "Embeddings": obj({"object": const("list"), "model": STRING,
                       "data": array(obj({"object": const("embedding"), "index": INTEGER,
                                          "embedding": {"anyOf": [array(NUMBER), STRING]}})),
                       "usage": obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER})}),
    "Tokens": obj({"tokens": array({"anyOf": [INTEGER, obj({"id": INTEGER, "piece": {
        "anyOf": [STRING, array(INTEGER)]}})]})}),
    "Text": obj({"content": STRING}),
    "Model": obj({"id": STRING, "object": const("model"), "created": INTEGER, "owned_by": STRING},
                 {"kind": {"type": "string", "enum": ["generation", "embedding"]},
                  "context_length": INTEGER, "pooling": NULLABLE_STRING}),
    "ModelList": obj({"object": const("list"), "data": array({"$ref": "#/components/schemas/Model"})}),
    "Engine": obj({"engine_id": STRING, "object": const("engine"), "model_path": STRING,
                   "state": {"enum": ["loading", "ready", "failed", "unloading", "unloaded"]},
                   "n_ctx": INTEGER, "n_parallel": INTEGER}, {"stats": {"type": "object"}}),
    "EngineList": obj({"object": const("list"), "data": array({"$ref": "#/components/schemas/Engine"})}),
    "EngineDeleted": obj({"engine_id": STRING, "object": const("engine"), "deleted": const(True)}),
    "Health": obj({"status": const("ok"), "engines": obj({"total": INTEGER, "ready": INTEGER}),
                   "memory": obj({"budget_bytes": INTEGER, "in_use_bytes": INTEGER})}),
    "Probe": obj({"status": STRING}),
    "Response": obj({"id": STRING, "object": const("response"), "created_at": INTEGER, "model": STRING,
                     "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                     "output": array(obj({"id": STRING, "type": STRING})),
                     "usage": {"anyOf": [obj({"input_tokens": INTEGER, "output_tokens": INTEGER,
                                              "total_tokens": INTEGER}), {"type": "null"}]}}),
    "ResponseDeleted": obj({"id": STRING, "object": const("response"), "deleted": const(True)}),
}


@dataclass(frozen=True)
class Operation:
    method: str
    paths: tuple[str, ...]           # the route and its aliases
    summary: str
    response: str | None = None      # a RESPONSES schema name; None: no JSON body described
    request: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()     # beyond what the method and auth imply
    media: str = "application/json"
    stream: bool = False             # also answers text/event-stream when the body asks
    public: bool = False             # no API key needed
    also: dict[int, str] = field(default_factory=dict)  # other statuses with a RESPONSES body


GENERATION = (404, 500, 504)
OPERATIONS = (
    Operation("post", ("/v1/chat/completions", "/chat/completions"), "Chat completion (stream or not)",
              "ChatCompletion", ChatCompletionRequest, errors=GENERATION, stream=True),
    Operation("post", ("/v1/completions", "/completions"),
              "Text completion; prompt string, list or token ids", "Completion", CompletionRequest,
              errors=GENERATION, stream=True),
    Operation("post", ("/v1/responses", "/responses"),
              "OpenAI's Responses API (stream or not; previous_response_id, store)", "Response",
              ResponsesRequest, errors=GENERATION, stream=True),
    Operation("get", ("/v1/responses/{response_id}", "/responses/{response_id}"),
              "A stored response", "Response", errors=(404,)),
    Operation("delete", ("/v1/responses/{response_id}", "/responses/{response_id}"),
              "Delete a stored response", "ResponseDeleted", errors=(404,)),
    Operation("post", ("/v1/embeddings", "/embeddings"), "Embeddings of an embedding engine",
              "Embeddings", EmbeddingRequest, errors=(404, 500)),
    Operation("post", ("/tokenize",), "llama-server's tokenize", "Tokens", TokenizeRequest,
              errors=(404, 500)),
    Operation("post", ("/detokenize",), "llama-server's detokenize", "Text", DetokenizeRequest,
              errors=(404, 500)),
    Operation("get", ("/v1/models", "/models"), "Engines in the OpenAI model-list shape", "ModelList"),
    Operation("get", ("/v1/models/{model_id}", "/models/{model_id}"), "One model", "Model",
              errors=(404,)),
    Operation("post", ("/engines", "/v1/engines"),
              "Load a GGUF model as a new engine (answers when it is ready)", "Engine",
              EngineCreateRequest, status=201, errors=(404, 409, 500)),
    Operation("get", ("/engines", "/v1/engines"), "List engines", "EngineList"),
    Operation("get", ("/engines/{engine_id}/status", "/v1/engines/{engine_id}/status",
                      "/engines/{engine_id}", "/v1/engines/{engine_id}"),
              "Engine state and live statistics", "Engine", errors=(404,)),
    Operation("delete", ("/engines/{engine_id}", "/v1/engines/{engine_id}"),
              "Stop an engine and free its memory", "EngineDeleted", errors=(404,)),
    Operation("get", ("/v1/health", "/health"), "Health and memory", "Health", public=True),
    Operation("get", ("/health/live",), "Liveness probe", "Probe", public=True),
    Operation("get", ("/health/ready",), "Readiness probe (503 while draining or with no engine)",
              "Probe", public=True, also={503: "Probe"}),
    Operation("get", ("/metrics",), "Prometheus metrics", media=CONTENT_TYPE_LATEST.split(";")[0]),
    Operation("get", ("/openapi.json",), "This document", public=True),
    Operation("get", ("/",), "The built-in chat page", media="text/html", public=True),
)


def error_statuses(operation: Operation) -> list[int]:
    statuses = set(operation.errors)
    if not operation.public:
        statuses.add(401)
    if operation.method != "get":
        statuses |= {403, 503}   # Origin/Host or admin key; draining
    if operation.request is not None:
        statuses |= {400, 413, 415}
    return sorted(statuses - set(operation.also))


def json_content(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}


def describe(operation: Operation, path: str) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "success"}
    if operation.response is not None:
        ok["content"] = json_content(operation.response)
    else:
        ok["content"] = {operation.media: {"schema": STRING if operation.media != "application/json"
                                           else {"type": "object"}}}
    if operation.stream:
        ok["content"]["text/event-stream"] = {"schema": STRING}
    responses: dict[str, Any] = {str(operation.status): ok}
    for status, schema_name in operation.also.items():
        responses[str(status)] = {"description": "not ready", "content": json_content(schema_name)}
    for status in error_statuses(operation):
        responses[str(status)] = {"description": STATUS_TEXT[status], "content": json_content("Error")}
    described: dict[str, Any] = {"summary": operation.summary, "responses": responses}
    if operation.request is not None:
        described["requestBody"] = {"required": True,
                                    "content": json_content(operation.request.__name__)}
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    if names:
        described["parameters"] = [{"name": name, "in": "path", "required": True, "schema": STRING}
                                   for name in names]
    if operation.public:
        described["security"] = []
    return described


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA, **RESPONSES}
    for operation in OPERATIONS:
        if operation.request is not None:
            schema = operation.request.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[operation.request.__name__] = schema
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        for path in operation.paths:
            paths.setdefault(path, {})[operation.method] = describe(operation, path)
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
