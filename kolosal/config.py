"""Server settings: flags, environment variables (KOLOSAL_*) and --config files (YAML/JSON)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .engine import EngineConfig, MemoryPolicy, parse_size


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()   # when set, only these may POST/DELETE engines
    cors_origins: tuple[str, ...] = ()
    models_dirs: tuple[str, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    http_keep_alive_s: float = 75.0    # idle HTTP/1.1 connections close after this (> nginx's 60 s)
    drain_timeout_s: float = 30.0      # after SIGTERM, in-flight requests get this long to finish
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    log_prompts: bool = False
    max_memory: int = 0                # bytes for all engines (weights + KV estimate); 0 = no limit
    evict_idle: bool = False           # unload least recently used idle engines to make room
    engines: tuple[EngineConfig, ...] = field(default_factory=tuple)

    @property
    def memory_policy(self) -> MemoryPolicy:
        return MemoryPolicy(max_memory=self.max_memory, evict_idle=self.evict_idle)


ENGINE_KEYS = {f.name for f in fields(EngineConfig)}
SETTINGS_KEYS = {f.name for f in fields(ServerSettings)} - {"engines"}
TUPLE_KEYS = {"api_keys", "admin_keys", "cors_origins", "models_dirs"}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file: server keys at the top, ``engines: [{engine_id, model_path, ...}]``."""
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping")
    unknown = set(data) - SETTINGS_KEYS - {"engines"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    return data


def engines_from(items: list[dict[str, Any]]) -> tuple[EngineConfig, ...]:
    engines = []
    for item in items:
        unknown = set(item) - ENGINE_KEYS
        if unknown:
            raise ValueError(f"unknown engine keys {sorted(unknown)}")
        engines.append(EngineConfig(**item))
    return tuple(engines)


def settings_from(values: dict[str, Any]) -> ServerSettings:
    kwargs = {key: value for key, value in values.items() if key in SETTINGS_KEYS and value is not None}
    for key in TUPLE_KEYS & kwargs.keys():
        value = kwargs[key]
        kwargs[key] = tuple(value.split(",") if isinstance(value, str) else value)
    if "max_memory" in kwargs:
        kwargs["max_memory"] = parse_size(kwargs["max_memory"])
    return ServerSettings(engines=engines_from(values.get("engines") or []), **kwargs)
