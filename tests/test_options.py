"""Each settings field is described once (kolosal/options.py): the HTTP request model, the
CLI flags, the environment names and the bounds are all derived from it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from kolosal.cli import build_parser
from kolosal.config import ServerSettings, settings_from
from kolosal.engine import EngineConfig
from kolosal.engine.lora import LoraSpec
from kolosal.engine.sampling_defaults import SamplingDefaults
from kolosal.options import option_fields
from kolosal.server.engines.protocol import EngineCreateRequest

ENGINE_OPTIONS = option_fields(EngineConfig)


def test_every_tunable_engine_field_is_an_option() -> None:
    names = {f.name for f in dataclasses.fields(EngineConfig)} - {"engine_id", "model_path"}
    assert {spec.name for spec in ENGINE_OPTIONS} == names
    assert {spec.name for spec in option_fields(ServerSettings)} == (
        {f.name for f in dataclasses.fields(ServerSettings)} - {"engines"})


def test_post_engines_fields_are_derived_from_engine_config() -> None:
    schema = EngineCreateRequest.model_json_schema()["properties"]
    for spec in ENGINE_OPTIONS:
        if not spec.option.http:
            assert spec.http_name not in schema
            continue
        field = schema[spec.http_name]
        if isinstance(spec.default, SamplingDefaults):  # an object over HTTP; absent: none set
            assert field["default"] is None and spec.default == SamplingDefaults()
        else:
            expected = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            assert field["default"] == expected
        assert field.get("minimum") == spec.option.ge and field.get("maximum") == spec.option.le
        assert field["description"] == spec.option.help
    assert schema["keep_alive"]["default"] == 0.0 and "keep_alive_s" not in schema


def test_post_engines_body_becomes_the_engine_config() -> None:
    body = EngineCreateRequest.model_validate({"engine_id": "e", "model_path": "x.gguf", "n_ctx": 512,
                                               "keep_alive": 30, "pinned": True})
    assert body.engine_config("/abs/x.gguf") == EngineConfig(
        "e", "/abs/x.gguf", n_ctx=512, keep_alive_s=30.0, pinned=True)
    for bad in ({"n_ctx": 8}, {"n_ctx": "512"}, {"flash_attn": "on"}, {"keep_alive_s": 1}):
        with pytest.raises(ValidationError):
            EngineCreateRequest.model_validate({"engine_id": "e", "model_path": "x", **bad})


def test_post_engines_lora_becomes_the_engines_adapters(tmp_path: Path) -> None:
    adapter = tmp_path / "a.gguf"
    adapter.write_bytes(b"")
    body = EngineCreateRequest.model_validate({"engine_id": "e", "model_path": "x.gguf",
                                               "lora": [{"path": "a.gguf", "scale": 0.5}]})
    config = body.engine_config("/abs/x.gguf", [str(adapter)])  # the path as the server resolved it
    assert config.lora == (LoraSpec(str(adapter), 0.5),)
    for bad in ("a.gguf", [{"path": ""}], [{"path": "a", "scale": "1"}], [{"path": "a", "other": 1}],
                [{"path": "a"}] * 33):
        with pytest.raises(ValidationError, match="lora"):
            EngineCreateRequest.model_validate({"engine_id": "e", "model_path": "x", "lora": bad})


def test_engine_config_checks_the_same_bounds() -> None:
    for spec in ENGINE_OPTIONS:
        for limit, step in ((spec.option.ge, -1), (spec.option.le, 1)):
            if limit is None:
                continue
            EngineConfig("e", "m", **{spec.name: spec.base_type(limit)})  # the bound itself is fine
            with pytest.raises(ValueError, match=spec.name):
                EngineConfig("e", "m", **{spec.name: spec.base_type(limit + step)})
    with pytest.raises(ValueError, match="flash_attn must be one of auto, on, off"):
        EngineConfig("e", "m", flash_attn="sometimes")


def test_every_flag_appears_in_the_parser_with_its_env_name() -> None:
    help_text = build_parser().format_help()
    for spec in option_fields(ServerSettings) + ENGINE_OPTIONS:
        if spec.option.flag is None:
            continue
        assert spec.option.flag in help_text and str(spec.env_name) in help_text
    assert "--n-ctx" in help_text and "KOLOSAL_N_CTX" in help_text and "(default 4096" in help_text


def test_settings_from_config_values_parses_text_like_a_flag() -> None:
    settings = settings_from({"port": "9000", "max_memory": "1GiB", "api_keys": "a,b",
                              "cors_origins": ["*"], "evict_idle": True, "ssl_certfile": None})
    assert settings.port == 9000 and settings.max_memory == 1 << 30
    assert settings.api_keys == ("a", "b") and settings.cors_origins == ("*",) and settings.evict_idle
    assert settings_from({"max_memory": 1000}).max_memory == 1000
