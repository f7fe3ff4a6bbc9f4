"""kolosal-server: read flags, environment and config file, preload engines, serve.

Precedence: flags > KOLOSAL_* environment > --config file > defaults. The flags and the
environment names are derived from the ``option()`` fields of ServerSettings and
EngineConfig (kolosal/options.py); engine flags configure ``--model``'s engine."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import SETTINGS_KEYS, ServerSettings, load_config_file, settings_from
from .engine import EngineConfig, EngineRegistry
from .log_format import configure_logging
from .options import OptionField, option_fields

logger = logging.getLogger("kolosal")

SERVER_OPTIONS = option_fields(ServerSettings)
ENGINE_OPTIONS = tuple(spec for spec in option_fields(EngineConfig) if spec.option.flag)
# Inputs that are not settings: (name, flag, help); each also read from KOLOSAL_<NAME>.
INPUTS = (("config", "--config", "YAML or JSON config file (server keys and an engines list)"),
          ("model", "--model", "GGUF file to load at start (default: the bundled SmolLM2 instruct "
                               "and Gemma base models)"),
          ("engine_id", "--engine-id", "id (the `model` field) of --model's engine (default: file stem)"))


def _flag_type(spec: OptionField) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as error:  # argparse prints this message, not a generic one
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = spec.name
    return parse


def _add_option(group: argparse._ArgumentGroup, spec: OptionField) -> None:
    default = "unset" if spec.default is None else "none" if spec.default == () else spec.default
    text = f"{spec.option.help} (default {default}; env {spec.env_name})".replace("%", "%%")
    flag = spec.option.flag
    assert flag is not None
    metavar = flag.lstrip("-").upper().replace("-", "_")
    if spec.base_type is bool:
        group.add_argument(flag, dest=spec.name, action="store_true", default=None, help=text)
    elif spec.base_type is tuple:  # repeatable, and each value may be a comma-separated list
        group.add_argument(flag, dest=spec.name, action="append", type=_flag_type(spec), help=text,
                           metavar=metavar)
    else:
        group.add_argument(flag, dest=spec.name, type=_flag_type(spec), help=text, metavar=metavar,
                           choices=spec.option.choices or None)


def build_parser() -> argparse.ArgumentParser:
    """Every flag defaults to None ("not given"), so flags override only what they name."""
    parser = argparse.ArgumentParser(prog="kolosal-server",
                                     description="OpenAI-compatible inference server for GGUF models")
    for name, flag, text in INPUTS:
        parser.add_argument(flag, dest=name, help=text)
    parser.add_argument("--no-default-model", action="store_true", default=None,
                        help="start with no engine when neither --model nor a config names one")
    server = parser.add_argument_group("server")
    for spec in SERVER_OPTIONS:
        _add_option(server, spec)
    engine = parser.add_argument_group("--model's engine")
    for spec in ENGINE_OPTIONS:
        _add_option(engine, spec)
    return parser


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, by field name."""
    values = {name: value for name, value in vars(args).items() if value is not None}
    for spec in SERVER_OPTIONS + ENGINE_OPTIONS:
        if spec.base_type is tuple and spec.name in values:  # one tuple per use of the flag
            values[spec.name] = tuple(item for given in values[spec.name] for item in given)
    return values


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The KOLOSAL_* variables that are set (an empty one is unset), parsed like their flags."""
    values: dict[str, Any] = {}
    for name, _, _ in INPUTS:
        text = environ.get(f"KOLOSAL_{name.upper()}")
        if text:
            values[name] = text
    for spec in SERVER_OPTIONS + ENGINE_OPTIONS:
        text = environ.get(spec.env_name or "")
        if text:
            try:
                values[spec.name] = spec.parse(text)
            except ValueError as error:
                raise ValueError(f"{spec.env_name}: {error}") from None
    return values


def merge(file_values: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Server settings values: the config file's, then each override in turn (the
    environment, then the flags). Engine flags are not settings: see default_engine."""
    values = dict(file_values)
    for override in overrides:
        values.update({key: value for key, value in override.items()
                       if key in SETTINGS_KEYS and value is not None})
    return values


def default_engines(inputs: Mapping[str, Any], has_engines: bool,
                    bundled_models: Callable[[], list[Path]]) -> list[dict[str, Any]]:
    """The engine of --model with the engine flags. When neither --model nor the config
    names an engine (and not --no-default-model): the bundled models, each with the engine
    flags (--engine-id names the first); else none. --lora needs --model: an adapter is
    made for one base model."""
    model = inputs.get("model")
    flags = {spec.name: inputs[spec.name] for spec in ENGINE_OPTIONS if spec.name in inputs}
    if model is None and flags.get("lora"):
        raise ValueError("--lora (KOLOSAL_LORA) needs --model: an adapter belongs to one base model "
                         "(a config file's engine takes its own lora list)")
    if model is not None:
        return [{"engine_id": inputs.get("engine_id") or Path(model).stem, "model_path": str(model),
                 **flags}]
    if has_engines or inputs.get("no_default_model"):
        return []
    paths = bundled_models()
    ids = [inputs.get("engine_id") or paths[0].stem, *(path.stem for path in paths[1:])]
    return [{"engine_id": engine_id, "model_path": str(path), **flags}
            for engine_id, path in zip(ids, paths, strict=True)]


def _bundled_model_paths() -> list[Path]:
    from .default_model import bundled_model_paths

    return bundled_model_paths()


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ,
                       bundled_models: Callable[[], list[Path]] = _bundled_model_paths) -> ServerSettings:
    inputs = {**read_env(environ), **flag_values(args)}
    file_values = load_config_file(inputs["config"]) if inputs.get("config") else {}
    values = merge(file_values, inputs)
    engines = list(values.get("engines") or [])
    values["engines"] = engines + default_engines(inputs, bool(engines), bundled_models)
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
