"""Engine management: POST /engines, GET /v1/engines, GET /engines/{id}/status,
DELETE /engines/{id}, and GET /v1/health."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from quart import Blueprint, Response, current_app

from ..engine import (
    EngineEntry,
    EngineExistsError,
    EngineNotFoundError,
    EngineRegistry,
    EngineState,
    InsufficientMemoryError,
    InvalidRequestError,
    ModelLoadFailedError,
)
from ..engine.model_check import LibraryCannotRunError, check_model_file
from ..gguf_header import InvalidModelFileError
from ..options import OptionValueError
from .errors import APIError, bad_request, from_engine_error
from .http import json_response, parse_body
from .protocol import EngineCreateRequest

blueprint = Blueprint("engines", __name__)


def current_registry() -> EngineRegistry:
    registry: EngineRegistry = current_app.config["REGISTRY"]
    return registry


def engine_body(engine: EngineEntry, with_stats: bool = False) -> dict[str, Any]:
    config = engine.config
    body: dict[str, Any] = {
        "engine_id": engine.engine_id, "object": "engine", "state": engine.state.value,
        "model_path": config.model_path, "n_ctx": config.n_ctx, "n_parallel": config.resolved_parallel,
        "n_gpu_layers": config.n_gpu_layers, "main_gpu_id": config.main_gpu_id,
        "created": engine.created, "load_progress": round(engine.load_progress, 4),
        "load_seconds": round(engine.load_seconds, 3), "error": engine.error,
        "pinned": config.pinned, "keep_alive": config.keep_alive_s,
        "idle_seconds": round(time.monotonic() - engine.holders.last_used, 1) if engine.idle else 0.0,
        "memory_estimate": engine.memory.as_dict() if engine.memory else None}
    info = engine.info
    if info is not None:
        body["model"] = {"architecture": info.architecture, "description": info.description,
                         "n_params": info.n_params, "size_bytes": info.size_bytes,
                         "n_ctx_train": info.n_ctx_train, "n_vocab": info.n_vocab,
                         "has_chat_template": info.chat_template is not None,
                         "kind": info.kind, "pooling": info.pooling}
    if with_stats:
        body["stats"] = engine.stats()
    return body


def _resolve(raw: str) -> Path:
    """Expanded and resolved (symlinks too). A NUL byte or a symlink loop is the caller's
    error (400), never a 500."""
    if "\0" in raw:
        raise bad_request("model_path contains a NUL byte", param="model_path", code="invalid_model_path")
    try:
        return Path(os.path.expanduser(raw)).resolve()
    except (RuntimeError, OSError, ValueError) as error:  # RuntimeError: a symlink loop (< 3.13)
        raise bad_request(f"model_path cannot be resolved: {error}", param="model_path",
                          code="invalid_model_path") from None


def _within(path: Path, allowed: list[str]) -> bool:
    for directory in allowed:
        try:
            if path.is_relative_to(Path(directory).expanduser().resolve()):
                return True
        except (RuntimeError, OSError, ValueError):  # a models dir that cannot be resolved allows nothing
            continue
    return False


async def resolve_model_path(raw: str) -> Path:
    """Expand and resolve (symlinks too, off the event loop); confine to --models-dir when
    one is configured."""
    allowed = current_app.config["SETTINGS"].models_dirs
    path = await asyncio.to_thread(_resolve, raw)
    if allowed and not await asyncio.to_thread(_within, path, allowed):
        raise APIError(403, "model_path is outside the configured models directories",
                       type="permission_error", param="model_path", code="model_path_forbidden")
    return path


@blueprint.post("/engines")
@blueprint.post("/v1/engines")
async def create_engine() -> Response:
    body = await parse_body(EngineCreateRequest)
    path = await resolve_model_path(body.model_path)
    try:
        config = body.engine_config(str(path))
    except OptionValueError as error:
        raise bad_request(str(error), param=error.name) from None
    except ValueError as error:  # settings that contradict each other
        raise bad_request(str(error)) from None
    try:  # bounded header check, then a load in a child process (cached per file version):
        await check_model_file(config.model_path)  # a file that crashes libllama is refused here
    except FileNotFoundError:
        raise APIError(404, f"model file not found: {body.model_path}", param="model_path",
                       code="model_file_not_found") from None
    except (IsADirectoryError, InvalidModelFileError) as error:
        raise bad_request(str(error), param="model_path", code="invalid_model_file") from None
    except OSError as error:  # unreadable: permissions, I/O
        raise bad_request(f"cannot read the model file: {error.strerror or error}", param="model_path",
                          code="model_file_unreadable") from None
    except LibraryCannotRunError as error:  # no model can run here: the server's fault, not the file's
        raise APIError(500, str(error), type="server_error", code="library_cannot_run") from None
    try:
        engine = await current_registry().add(config)
    except EngineExistsError as error:
        raise APIError(409, str(error), param="engine_id", code="engine_exists") from None
    except (InsufficientMemoryError, InvalidRequestError) as error:  # (a setting that cannot apply)
        raise from_engine_error(error) from None
    except InvalidModelFileError as error:  # replaced since the check
        raise bad_request(str(error), param="model_path", code="invalid_model_file") from None
    except (ModelLoadFailedError, ValueError, OSError) as error:
        raise bad_request(str(error), param="model_path", code="model_load_failed") from None
    except RuntimeError as error:  # e.g. the context could not be allocated
        raise APIError(500, str(error), type="server_error", code="engine_load_failed") from None
    return json_response(engine_body(engine), status=201)


@blueprint.get("/engines")
@blueprint.get("/v1/engines")
async def list_engines() -> Response:
    engines = current_registry().list()
    return json_response({"object": "list", "data": [engine_body(e) for e in engines]})


def find_engine(engine_id: str) -> EngineEntry:
    try:
        return current_registry().get(engine_id)
    except EngineNotFoundError:
        raise APIError(404, f"engine '{engine_id}' not found", param="engine_id",
                       code="model_not_found") from None


@blueprint.get("/engines/<engine_id>/status")
@blueprint.get("/v1/engines/<engine_id>/status")
@blueprint.get("/engines/<engine_id>")
@blueprint.get("/v1/engines/<engine_id>")
async def engine_status(engine_id: str) -> Response:
    return json_response(engine_body(find_engine(engine_id), with_stats=True))


@blueprint.delete("/engines/<engine_id>")
@blueprint.delete("/v1/engines/<engine_id>")
async def delete_engine(engine_id: str) -> Response:
    find_engine(engine_id)
    try:
        await current_registry().remove(engine_id)
    except EngineNotFoundError:
        raise APIError(404, f"engine '{engine_id}' not found", param="engine_id",
                       code="model_not_found") from None
    return json_response({"engine_id": engine_id, "object": "engine", "deleted": True})


@blueprint.get("/health")
@blueprint.get("/v1/health")
async def health() -> Response:
    registry = current_registry()
    engines = registry.list()
    ready = sum(1 for e in engines if e.state == EngineState.READY)
    return json_response({"status": "ok", "engines": {"total": len(engines), "ready": ready},
                          "memory": {"budget_bytes": registry.policy.max_memory,
                                     "in_use_bytes": registry.memory_in_use()}})
