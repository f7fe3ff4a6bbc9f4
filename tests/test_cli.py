"""The CLI without a server: reading the environment, merging it with flags and a config
file, and the engine of --model. No model or library is loaded."""
from __future__ import annotations

from pathlib import Path

import pytest

from kolosal.cli import (
    build_parser,
    default_engines,
    flag_values,
    merge,
    read_env,
    settings_from_args,
)
from kolosal.config import ServerSettings
from kolosal.engine.lora import LoraSpec

INSTRUCT_MODEL = Path("/cache/smollm2-135m-instruct-q4_1.gguf")
DEFAULT_MODEL = Path("/cache/gemma-3-270m.gguf")


def bundled_models() -> list[Path]:
    return [INSTRUCT_MODEL, DEFAULT_MODEL]


def settings(argv: list[str], environ: dict[str, str] | None = None) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(argv), environ or {}, bundled_models)


def test_read_env_parses_like_the_flags() -> None:
    values = read_env({"KOLOSAL_PORT": "9000", "KOLOSAL_API_KEY": "k1,k2", "KOLOSAL_PIN": "1",
                       "KOLOSAL_EVICT_IDLE": "false", "KOLOSAL_N_CTX": "2048", "KOLOSAL_MODEL": "/m.gguf",
                       "KOLOSAL_KEEP_ALIVE": "2.5", "KOLOSAL_HOST": "", "OTHER": "x"})
    assert values == {"port": 9000, "api_keys": ("k1", "k2"), "pinned": True, "evict_idle": False,
                      "n_ctx": 2048, "model": "/m.gguf", "keep_alive_s": 2.5}


def test_read_env_names_the_bad_variable() -> None:
    with pytest.raises(ValueError, match="KOLOSAL_PORT"):
        read_env({"KOLOSAL_PORT": "eighty"})
    with pytest.raises(ValueError, match="KOLOSAL_LOG_FORMAT: log_format must be one of text, json"):
        read_env({"KOLOSAL_LOG_FORMAT": "xml"})


def test_flag_values_are_only_the_given_flags() -> None:
    args = build_parser().parse_args(["--port", "1234", "--api-key", "a", "--api-key", "b,c", "--pin"])
    assert flag_values(args) == {"port": 1234, "api_keys": ("a", "b", "c"), "pinned": True}
    assert flag_values(build_parser().parse_args([])) == {}


def test_bad_flags_are_refused_by_argparse_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-memory", "lots"])
    assert "not a size: 'lots'" in capsys.readouterr().err


def test_merge_flags_over_env_over_file() -> None:
    file_values = {"port": 1, "host": "file", "log_level": "debug", "engines": [{"engine_id": "x"}]}
    env = {"port": 2, "host": "env", "n_ctx": 99}
    flags = {"port": 3, "model": "/m.gguf"}
    assert merge(file_values, env, flags) == {"port": 3, "host": "env", "log_level": "debug",
                                              "engines": [{"engine_id": "x"}]}


def test_default_engines() -> None:
    given = {"model": "/models/qwen.gguf", "n_ctx": 8192, "pinned": True, "port": 1}
    assert default_engines(given, True, bundled_models) == [{
        "engine_id": "qwen", "model_path": "/models/qwen.gguf", "n_ctx": 8192, "pinned": True}]
    assert default_engines({"model": "/m/x.gguf", "engine_id": "gemma"}, False, bundled_models) == [{
        "engine_id": "gemma", "model_path": "/m/x.gguf"}]
    # no --model: the bundled models (instruct first), unless the config names engines or
    # they are switched off; the engine flags apply to each, --engine-id names the first
    assert default_engines({}, False, bundled_models) == [
        {"engine_id": INSTRUCT_MODEL.stem, "model_path": str(INSTRUCT_MODEL)},
        {"engine_id": DEFAULT_MODEL.stem, "model_path": str(DEFAULT_MODEL)}]
    assert default_engines({"n_ctx": 2048, "engine_id": "chat"}, False, bundled_models) == [
        {"engine_id": "chat", "model_path": str(INSTRUCT_MODEL), "n_ctx": 2048},
        {"engine_id": DEFAULT_MODEL.stem, "model_path": str(DEFAULT_MODEL), "n_ctx": 2048}]
    assert default_engines({}, True, bundled_models) == []
    assert default_engines({"no_default_model": True}, False, bundled_models) == []


def test_settings_from_args_end_to_end(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("port: 9000\nmax_memory: 2GiB\napi_keys: [file-key]\nengines:\n"
                      "  - {engine_id: e1, model_path: /m/e1.gguf, n_ctx: 1024}\n")
    result = settings(["--config", str(config), "--model", "/m/e2.gguf", "--parallel", "4"],
                      {"KOLOSAL_PORT": "9100", "KOLOSAL_N_CTX": "2048"})
    assert result.port == 9100 and result.max_memory == 2 << 30 and result.api_keys == ("file-key",)
    assert [(e.engine_id, e.n_ctx, e.n_parallel) for e in result.engines] == [("e1", 1024, 0),
                                                                              ("e2", 2048, 4)]


def test_settings_defaults_without_any_input() -> None:
    result = settings([])
    assert (result.host, result.port, result.max_body_bytes) == ("127.0.0.1", 8080, 8 << 20)
    instruct, base = result.engines
    assert instruct.model_path == str(INSTRUCT_MODEL) and base.model_path == str(DEFAULT_MODEL)
    assert instruct.n_ctx == base.n_ctx == 4096


def test_out_of_range_values_fail_wherever_they_come_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_ctx must be >= 16"):
        settings(["--n-ctx", "8"])
    with pytest.raises(ValueError, match="port must be >= 0 and <= 65535"):
        settings([], {"KOLOSAL_PORT": "70000"})
    config = tmp_path / "server.yaml"
    config.write_text("engines:\n  - {engine_id: e, model_path: m, n_batch: 0}\n")
    with pytest.raises(ValueError, match="n_batch must be >= 1"):
        settings(["--config", str(config)])


def test_lora_flags_load_adapters_with_the_models_engine(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b:c.gguf"  # a colon inside a path stays in it
    first.write_bytes(b"")
    second.write_bytes(b"")
    result = settings(["--model", "/m/x.gguf", "--lora", f"{first}:0.5", "--lora", str(second)])
    assert result.engines[0].lora == (LoraSpec(str(first), 0.5), LoraSpec(str(second), 1.0))
    from_env = settings(["--model", "/m/x.gguf"], {"KOLOSAL_LORA": f"{first},{second}:2"})
    assert from_env.engines[0].lora == (LoraSpec(str(first), 1.0), LoraSpec(str(second), 2.0))
    with pytest.raises(ValueError, match="--lora .* needs --model"):
        settings(["--lora", str(first)])  # the bundled models are two: an adapter fits one
    with pytest.raises(ValueError, match="No such file"):
        settings(["--model", "/m/x.gguf", "--lora", str(tmp_path / "none.gguf")])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--lora", f"{first}:-1"])
    assert "LoRA scale must be in [0, 10]" in capsys.readouterr().err


def test_max_tokens_default_from_flag_env_and_file(tmp_path: Path) -> None:
    assert settings([]).max_tokens_default is None  # the contract's: 128 chat, 16 completions
    assert settings(["--max-tokens-default", "512"]).max_tokens_default == 512
    assert settings(["--max-tokens-default", "none"]).max_tokens_default == 0  # until the end
    assert settings(["--max-tokens-default", "0"]).max_tokens_default == 0
    assert settings([], {"KOLOSAL_MAX_TOKENS_DEFAULT": "NONE"}).max_tokens_default == 0
    config = tmp_path / "c.yaml"
    config.write_text("max_tokens_default: 64\n")
    assert settings(["--config", str(config)]).max_tokens_default == 64
    config.write_text("max_tokens_default: none\n")
    assert settings(["--config", str(config)]).max_tokens_default == 0
    for bad in ("-1", "lots", "2147483648", "1.5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--max-tokens-default", bad])
    for value in (-1, True, 1.5, 2**31):
        config.write_text(f"max_tokens_default: {value}\n")
        with pytest.raises(ValueError):
            settings(["--config", str(config)])


def test_sampling_defaults_flag_sets_the_models_engine_defaults(tmp_path: Path) -> None:
    from kolosal.engine.sampling_defaults import SamplingDefaults

    engine = settings(["--model", "/m.gguf", "--sampling-defaults", "temperature=0.6,top_k=20"]).engines[0]
    assert engine.sampling_defaults == SamplingDefaults(temperature=0.6, top_k=20)
    env = settings(["--model", "/m.gguf"], {"KOLOSAL_SAMPLING_DEFAULTS": "min_p=0.1"}).engines[0]
    assert env.sampling_defaults == SamplingDefaults(min_p=0.1)
    config = tmp_path / "c.yaml"
    config.write_text("engines:\n  - {engine_id: e, model_path: /m.gguf, sampling_defaults: {top_p: 0.8}}\n")
    assert settings(["--config", str(config)]).engines[0].sampling_defaults == SamplingDefaults(top_p=0.8)
    config.write_text("engines:\n  - {engine_id: e, model_path: /m.gguf, sampling_defaults: {top_p: 8}}\n")
    with pytest.raises(ValueError, match="top_p"):
        settings(["--config", str(config)])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--sampling-defaults", "temperature=-1"])
