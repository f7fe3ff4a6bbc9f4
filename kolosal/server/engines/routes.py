"""Engine management (load, list, status, delete), health, and the load balancer's
liveness and readiness probes. Each route is declared once, in ``ROUTES`` below."""
from __future__ import annotations

from quart import Response, current_app

from ...engine import EngineEntry, EngineNotFoundError, EngineRegistry, EngineState
from ...engine.model_check import check_model_file
from ...options import OptionValueError
from ..errors import (
    ENGINE_LOAD_ERRORS,
    ENGINE_NOT_FOUND,
    MODEL_FILE_ERRORS,
    bad_request,
    catches,
    from_engine_error,
)
from ..http import json_response, parse_body
from ..routing import Route
from .model_path import resolve_model_path
from .protocol import EngineCreateRequest
from .shapes import Engine, EngineDeleted, EngineList, Health, Probe, ProbeStatus, engine_body

SERVABLE = (EngineState.READY, EngineState.UNLOADED)  # an unloaded engine reloads on demand


def current_registry() -> EngineRegistry:
    registry: EngineRegistry = current_app.config["REGISTRY"]
    return registry


def find_engine(engine_id: str) -> EngineEntry:
    try:
        return current_registry().get(engine_id)
    except EngineNotFoundError:
        raise ENGINE_NOT_FOUND.error(engine_id) from None


async def create_engine() -> Response:
    body = await parse_body(EngineCreateRequest)
    path = await resolve_model_path(body.model_path)
    lora_paths = [str(await resolve_model_path(item.path, "lora")) for item in body.lora]
    try:
        config = body.engine_config(str(path), lora_paths)
    except OptionValueError as error:
        raise bad_request(str(error), param=error.name) from None
    except ValueError as error:  # settings that contradict each other
        raise bad_request(str(error)) from None
    try:  # bounded header check, then a load in a child process (cached per file version):
        await check_model_file(config.model_path)  # a file that crashes libllama is refused here
    except catches(MODEL_FILE_ERRORS) as error:
        raise from_engine_error(error, body.model_path, MODEL_FILE_ERRORS) from None
    try:
        engine = await current_registry().add(config)
    except catches(ENGINE_LOAD_ERRORS) as error:
        raise from_engine_error(error, table=ENGINE_LOAD_ERRORS) from None
    return json_response(engine_body(engine), status=201)


async def list_engines() -> Response:
    engines: EngineList = {"object": "list", "data": [engine_body(e) for e in current_registry().list()]}
    return json_response(engines)


async def engine_status(engine_id: str) -> Response:
    return json_response(engine_body(find_engine(engine_id), with_stats=True))


async def delete_engine(engine_id: str) -> Response:
    try:
        await current_registry().remove(engine_id)
    except EngineNotFoundError:
        raise ENGINE_NOT_FOUND.error(engine_id) from None
    deleted: EngineDeleted = {"engine_id": engine_id, "object": "engine", "deleted": True}
    return json_response(deleted)


async def health() -> Response:
    registry = current_registry()
    engines = registry.list()
    ready = sum(1 for e in engines if e.state == EngineState.READY)
    body: Health = {"status": "ok", "engines": {"total": len(engines), "ready": ready},
                    "memory": {"budget_bytes": registry.policy.max_memory,
                               "in_use_bytes": registry.memory_in_use()}}
    return json_response(body)


async def live() -> Response:
    return json_response(Probe(status="ok"))


async def ready() -> Response:
    """Ready when an engine can serve and the server is not draining (else 503)."""
    engines = current_registry().list()
    servable = sum(1 for engine in engines if engine.state in SERVABLE)
    status: ProbeStatus
    if current_app.config["DRAIN"].draining:
        status = "draining"
    else:
        status = "ready" if servable else "no_engine"
    body: Probe = {"status": status, "engines": {"total": len(engines), "ready": servable}}
    return json_response(body, status=200 if status == "ready" else 503)


ROUTES = (
    Route("post", ("/engines", "/v1/engines"), create_engine,
          "Load a GGUF model as a new engine (answers when it is ready)", EngineCreateRequest, Engine,
          status=201, errors=(404, 409, 500), admin=True),
    Route("get", ("/engines", "/v1/engines"), list_engines, "List engines", response=EngineList),
    Route("get", ("/engines/{engine_id}/status", "/v1/engines/{engine_id}/status",
                  "/engines/{engine_id}", "/v1/engines/{engine_id}"), engine_status,
          "Engine state and live statistics", response=Engine, errors=(404,)),
    Route("delete", ("/engines/{engine_id}", "/v1/engines/{engine_id}"), delete_engine,
          "Stop an engine and free its memory", response=EngineDeleted, errors=(404,), admin=True),
    Route("get", ("/v1/health", "/health"), health, "Health and memory", response=Health,
          public=True, quiet=True),
    Route("get", ("/health/live",), live, "Liveness probe", response=Probe, public=True, quiet=True),
    Route("get", ("/health/ready",), ready, "Readiness probe (503 while draining or with no engine)",
          response=Probe, public=True, quiet=True, also={503: Probe}),
)
