"""Server settings: flags, environment variables (KOLOSAL_*) and --config files (YAML/JSON).
Every setting is one ``option()`` field below; the CLI flags and environment names are
derived from it (kolosal/cli.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .engine import EngineConfig, MemoryPolicy, parse_size
from .options import check_options, option, option_fields


def max_tokens_default(value: str | int) -> int:
    """--max-tokens-default: a count, or 0 / ``none`` for until the end of the text or the
    context."""
    if isinstance(value, str):
        value = 0 if value.strip().lower() == "none" else int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"max_tokens_default must be a count from 0 to 2^31-1 or none, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = option("127.0.0.1", "bind address (0.0.0.0 exposes the server)", flag="--host")
    port: int = option(8080, "port", ge=0, le=65535, flag="--port")
    api_keys: tuple[str, ...] = option((), "require this API key (repeatable; comma-separated in "
                                       "KOLOSAL_API_KEY)", flag="--api-key")
    admin_keys: tuple[str, ...] = option((), "only these keys may POST/DELETE engines (repeatable); "
                                         "they also work as API keys", flag="--admin-key")
    keys_file: str | None = option(None, "API keys with names, engines, limits and fair shares (YAML "
                                   "or JSON; re-read on SIGHUP; see README)", flag="--keys-file")
    cors_origins: tuple[str, ...] = option((), "comma-separated origins, or *", flag="--cors-origins")
    cors_credentials: bool = option(False, "allow credentialed browser requests from those origins "
                                    "(Access-Control-Allow-Credentials: true)", flag="--cors-credentials")
    models_dirs: tuple[str, ...] = option((), "directory POST /engines may load from (repeatable)",
                                          flag="--models-dir")
    max_body_bytes: int = option(8 * 1024 * 1024, "largest request body", ge=1, flag="--max-body-bytes")
    http_keep_alive_s: float = option(75.0, "seconds an idle client connection stays open "
                                      "(above nginx's 60 s)", ge=0, flag="--http-keep-alive")
    drain_timeout_s: float = option(30.0, "seconds in-flight requests get to finish after SIGTERM",
                                    ge=0, flag="--drain-timeout")
    ssl_certfile: str | None = option(None, "serve HTTPS with this certificate", flag="--ssl-certfile")
    ssl_keyfile: str | None = option(None, "the certificate's private key", flag="--ssl-keyfile")
    log_level: str = option("info", "log level (debug shows libllama's own log)", flag="--log-level",
                            choices=("debug", "info", "warning", "error"))
    log_format: str = option("text", "text, or json for one JSON object per line", flag="--log-format",
                             choices=("text", "json"))
    log_prompts: bool = option(False, "add prompt text to the access log (off: prompts never reach "
                               "the logs)", flag="--log-prompts")
    max_memory: int = option(0, "memory budget of all engines, e.g. 8GiB (estimated weights + KV + "
                             "buffers); a load that does not fit is refused (0 = no limit)",
                             ge=0, flag="--max-memory", parse=parse_size)
    evict_idle: bool = option(False, "make room under --max-memory by unloading the least recently "
                              "used idle engines", flag="--evict-idle")
    max_tokens_default: int | None = option(
        None, "max_tokens of a request that gives none (chat, completions, Responses); 0 or none: "
        "until the end of the text or the context, as OpenAI and llama-server (unset: 128 for "
        "chat and Responses, 16 for completions, the API contract's)",
        ge=0, le=2**31 - 1, flag="--max-tokens-default", parse=max_tokens_default)
    engines: tuple[EngineConfig, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def memory_policy(self) -> MemoryPolicy:
        return MemoryPolicy(max_memory=self.max_memory, evict_idle=self.evict_idle)


ENGINE_KEYS = {f.name for f in fields(EngineConfig)}
SETTINGS_KEYS = {f.name for f in fields(ServerSettings)} - {"engines"}


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
    """Settings from plain values (a config file's, or merged ones): text is parsed as a flag
    would be (``port: "8080"``, ``max_memory: 8GiB``, ``api_keys: a,b``), None means unset."""
    kwargs: dict[str, Any] = {}
    for spec in option_fields(ServerSettings):
        value = values.get(spec.name)
        if value is None:
            continue
        if isinstance(value, str) and spec.base_type is not str:
            value = spec.parse(value)
        elif spec.option.parse is not None:  # e.g. a size given as a number
            value = spec.option.parse(value)
        elif spec.base_type is tuple:
            value = tuple(value)
        kwargs[spec.name] = value
    return ServerSettings(engines=engines_from(values.get("engines") or []), **kwargs)
