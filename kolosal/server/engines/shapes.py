"""Engine objects, health and probe bodies: typed once (/openapi.json's schemas are
generated from them) and built here."""
from __future__ import annotations

import time
from typing import Annotated, Any, Literal, TypedDict

from typing_extensions import NotRequired

from ...engine import EngineEntry, EngineState
from ...engine.sampling_defaults import BOUNDS, NO_DEFAULTS
from ..completions.protocol import SamplingFields
from ..json_schema import Schema
from ..lora.shapes import LoraAdapter, lora_adapters
from ..models.shapes import EngineKind

State = Annotated[str, Schema({"enum": [state.value for state in EngineState]})]


class ModelInfo(TypedDict):
    architecture: str
    description: str
    n_params: int
    size_bytes: int
    n_ctx_train: int
    n_vocab: int
    has_chat_template: bool
    kind: EngineKind
    pooling: str | None


class Engine(TypedDict):
    engine_id: str
    object: Literal["engine"]
    state: State
    model_path: str
    n_ctx: int
    n_parallel: int
    n_gpu_layers: int
    main_gpu_id: int
    created: int
    load_progress: float
    load_seconds: float
    error: str | None
    pinned: bool
    keep_alive: float
    idle_seconds: float
    memory_estimate: dict[str, int] | None   # weights, KV cache, buffers and total, in bytes
    lora: list[LoraAdapter]                # its LoRA adapters and their current scales
    # what a request that omits a sampling field gets, and where each value comes from:
    # "engine" (POST /engines defaults), "gguf" (general.sampling.*) or "request" (the body's)
    sampling_defaults: dict[str, float | int | None]
    sampling_defaults_source: dict[str, Literal["engine", "gguf", "request"]]
    model: NotRequired[ModelInfo]          # once it has loaded
    stats: NotRequired[dict[str, Any]]     # live statistics (engine status only)


class EngineList(TypedDict):
    object: Literal["list"]
    data: list[Engine]


class EngineDeleted(TypedDict):
    engine_id: str
    object: Literal["engine"]
    deleted: Literal[True]


class EngineCounts(TypedDict):
    total: int
    ready: int


class MemoryUse(TypedDict):
    budget_bytes: int      # 0: no budget
    in_use_bytes: int


class Health(TypedDict):
    status: Literal["ok"]
    engines: EngineCounts
    memory: MemoryUse


ProbeStatus = Literal["ok", "ready", "draining", "no_engine"]


class Probe(TypedDict):
    """Liveness (``ok``) and readiness (``ready``; 503 with ``draining`` or ``no_engine``)."""

    status: ProbeStatus
    engines: NotRequired[EngineCounts]


def engine_body(engine: EngineEntry, with_stats: bool = False) -> Engine:
    config = engine.config
    defaults = sampling_defaults(engine)
    body: Engine = {
        "engine_id": engine.engine_id, "object": "engine", "state": engine.state.value,
        "model_path": config.model_path, "n_ctx": config.n_ctx, "n_parallel": config.resolved_parallel,
        "n_gpu_layers": config.n_gpu_layers, "main_gpu_id": config.main_gpu_id,
        "created": engine.created, "load_progress": round(engine.load_progress, 4),
        "load_seconds": round(engine.load_seconds, 3), "error": engine.error,
        "pinned": config.pinned, "keep_alive": config.keep_alive_s,
        "idle_seconds": round(time.monotonic() - engine.holders.last_used, 1) if engine.idle else 0.0,
        "memory_estimate": engine.memory.as_dict() if engine.memory else None,
        "lora": lora_adapters(engine), "sampling_defaults": defaults["sampling_defaults"],
        "sampling_defaults_source": defaults["sampling_defaults_source"]}
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


class SamplingDefaultsView(TypedDict):
    sampling_defaults: dict[str, float | int | None]
    sampling_defaults_source: dict[str, Literal["engine", "gguf", "request"]]


def sampling_defaults(engine: EngineEntry) -> SamplingDefaultsView:
    """The effective default of every sampling field and its source (before the model has
    loaded, the GGUF's are not known yet)."""
    own = engine.config.sampling_defaults
    gguf = engine.info.sampling_defaults if engine.info is not None else NO_DEFAULTS
    values: dict[str, float | int | None] = {}
    sources: dict[str, Literal["engine", "gguf", "request"]] = {}
    for name in BOUNDS:
        for source, layer in (("engine", own), ("gguf", gguf)):
            if getattr(layer, name) is not None:
                values[name], sources[name] = getattr(layer, name), source  # type: ignore[assignment]
                break
        else:
            values[name], sources[name] = SamplingFields.model_fields[name].default, "request"
    return {"sampling_defaults": values, "sampling_defaults_source": sources}
