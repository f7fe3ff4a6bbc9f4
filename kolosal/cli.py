"""kolosal-server: parse flags/env/config, preload engines, serve."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import ServerSettings, load_config_file, settings_from
from .engine import EngineConfig, EngineRegistry
from .log_format import configure_logging

logger = logging.getLogger("kolosal")


def env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"KOLOSAL_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kolosal-server",
                                     description="OpenAI-compatible inference server for GGUF models")
    add = parser.add_argument
    add("--host", default=env("HOST"), help="bind address (default 127.0.0.1; 0.0.0.0 to expose)")
    add("--port", type=int, default=env("PORT"), help="port (default 8080)")
    add("--model", default=env("MODEL"), help="GGUF file to load at start")
    add("--engine-id", default=env("ENGINE_ID"), help="id of --model's engine (default: file stem)")
    add("--n-ctx", type=int, default=env("N_CTX", 4096), help="context size (KV cells) of --model")
    add("--parallel", type=int, default=env("PARALLEL", 0), help="slots (0 = n_ctx/128, max 64)")
    add("--threads", type=int, default=env("THREADS", 0), help="compute threads (0 = all cores)")
    parser.add_argument("--n-batch", type=int, default=env("N_BATCH", 512), help="token budget of one step")
    parser.add_argument("--n-gpu-layers", type=int, default=env("N_GPU_LAYERS", 100))
    parser.add_argument("--max-queue", type=int, default=env("MAX_QUEUE", 256),
                        help="waiting requests per engine before 503")
    parser.add_argument("--keep-alive", type=float, default=env("KEEP_ALIVE", 0),
                        help="unload --model's engine after this many idle seconds; it reloads on "
                             "the next request (0 = stay loaded)")
    parser.add_argument("--pin", action="store_true", default=env("PIN") == "1",
                        help="never unload or evict --model's engine")
    parser.add_argument("--max-memory", default=env("MAX_MEMORY"),
                        help="memory budget of all engines, e.g. 8GiB (estimated weights + KV + "
                             "buffers); a load that does not fit is refused")
    parser.add_argument("--evict-idle", action="store_true", default=env("EVICT_IDLE") == "1",
                        help="make room under --max-memory by unloading least recently used idle engines")
    parser.add_argument("--config", default=env("CONFIG"), help="YAML or JSON config file")
    parser.add_argument("--api-key", action="append", default=None,
                        help="require this API key (repeatable; env KOLOSAL_API_KEY, comma-separated)")
    parser.add_argument("--admin-key", action="append", default=None,
                        help="require this key for POST/DELETE /engines (repeatable; env "
                             "KOLOSAL_ADMIN_KEY, comma-separated); API keys then cannot manage engines")
    parser.add_argument("--cors-origins", default=env("CORS_ORIGINS"), help="comma-separated origins, or *")
    parser.add_argument("--models-dir", action="append", default=None,
                        help="directory POST /engines may load from (repeatable)")
    parser.add_argument("--max-body-bytes", type=int, default=env("MAX_BODY_BYTES"))
    parser.add_argument("--http-keep-alive", type=float, default=env("HTTP_KEEP_ALIVE"),
                        help="seconds an idle client connection is kept open (default 75)")
    parser.add_argument("--drain-timeout", type=float, default=env("DRAIN_TIMEOUT"),
                        help="seconds in-flight requests get to finish after SIGTERM (default 30)")
    parser.add_argument("--ssl-certfile", default=env("SSL_CERTFILE"))
    parser.add_argument("--ssl-keyfile", default=env("SSL_KEYFILE"))
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default=env("LOG_FORMAT", "text"), choices=["text", "json"])
    parser.add_argument("--log-prompts", action="store_true", default=env("LOG_PROMPTS") == "1",
                        help="include prompt text in debug logs (off: prompts never reach the logs)")
    parser.add_argument("--no-default-model", action="store_true",
                        help="start with no engine when neither --model nor a config names one")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    api_keys = args.api_key or ([k for k in env("API_KEY", "").split(",") if k] or None)
    admin_keys = args.admin_key or ([k for k in env("ADMIN_KEY", "").split(",") if k] or None)
    models_dirs = args.models_dir or ([d for d in env("MODELS_DIR", "").split(",") if d] or None)
    overrides = {"host": args.host, "port": args.port, "api_keys": api_keys, "admin_keys": admin_keys,
                 "max_memory": args.max_memory, "evict_idle": args.evict_idle or None,
                 "cors_origins": args.cors_origins, "models_dirs": models_dirs,
                 "max_body_bytes": args.max_body_bytes, "http_keep_alive_s": args.http_keep_alive,
                 "drain_timeout_s": args.drain_timeout,
                 "ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile,
                 "log_level": args.log_level, "log_format": args.log_format,
                 "log_prompts": args.log_prompts or None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "port" in values:
        values["port"] = int(values["port"])
    engines = list(values.get("engines") or [])
    model = args.model
    if model is None and not engines and not args.no_default_model:
        from .default_model import default_model_path

        model = str(default_model_path())
    if model is not None:
        engines.append({"engine_id": args.engine_id or Path(model).stem, "model_path": model,
                        "n_ctx": int(args.n_ctx), "n_parallel": int(args.parallel),
                        "n_threads": int(args.threads), "n_batch": int(args.n_batch),
                        "n_gpu_layers": int(args.n_gpu_layers), "max_queue": int(args.max_queue),
                        "keep_alive_s": float(args.keep_alive), "pinned": bool(args.pin)})
    values["engines"] = engines
    return settings_from(values)


async def amain(settings: ServerSettings) -> None:
    from .server.serve import run_server

    registry = EngineRegistry(settings.memory_policy)
    for config in settings.engines:
        logger.info("loading engine '%s' from %s", config.engine_id, config.model_path)
        await registry.add(config)
    await run_server(settings, registry)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValueError, OSError, TypeError) as error:
        print(f"kolosal-server: error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(amain(settings))
    except KeyboardInterrupt:
        pass
    except Exception as error:  # a startup failure: say what, not a traceback
        logger.error("%s", error)
        return 1
    return 0


__all__ = ["EngineConfig", "main"]
