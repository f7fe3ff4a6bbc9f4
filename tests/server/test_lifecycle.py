"""Process-level behaviour: config files, --models-dir confinement, graceful SIGTERM."""
from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import orjson
import pytest

from kolosal.config import load_config_file, settings_from

from ..server_process import start_server, stop_server


def test_config_file_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "server.yaml"
    yaml_file.write_text("port: 9000\napi_keys: [a, b]\nengines:\n"
                         "  - {engine_id: e1, model_path: /m/x.gguf, n_ctx: 1024}\n")
    settings = settings_from(load_config_file(yaml_file))
    assert settings.port == 9000 and settings.api_keys == ("a", "b")
    assert settings.engines[0].engine_id == "e1" and settings.engines[0].n_ctx == 1024
    json_file = tmp_path / "server.json"
    json_file.write_text(json.dumps({"host": "0.0.0.0", "engines": []}))
    assert settings_from(load_config_file(json_file)).host == "0.0.0.0"
    bad = tmp_path / "bad.yaml"
    bad.write_text("prot: 9000\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_file(bad)
    bad.write_text("engines:\n  - {engine_id: e, model_path: m, n_cxt: 5}\n")
    with pytest.raises(ValueError, match="unknown engine keys"):
        settings_from(load_config_file(bad))


async def test_models_dir_confinement_and_sigterm(model_path: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "gemma.gguf").symlink_to(model_path)
    (models / "escape.gguf").symlink_to(tmp_path / "outside.gguf")
    (tmp_path / "outside.gguf").write_bytes(model_path.read_bytes()[:1024])
    config = tmp_path / "server.yaml"
    config.write_text(f"models_dirs: [{models}]\nengines:\n"
                      f"  - {{engine_id: cfg, model_path: {models / 'gemma.gguf'}, n_ctx: 1024}}\n")
    # a short drain: the stream below outlives it and must end with the error event
    server = start_server(model_path, tmp_path / "log.txt", "--config", str(config),
                          "--drain-timeout", "0.5")
    try:
        engines = {e["engine_id"] for e in httpx.get(server.base_url + "/v1/engines").json()["data"]}
        assert "cfg" in engines
        forbidden = httpx.post(server.base_url + "/engines", timeout=60, json={
            "engine_id": "x", "model_path": str(models / "escape.gguf")})
        assert forbidden.status_code == 403
        traversal = httpx.post(server.base_url + "/engines", timeout=60, json={
            "engine_id": "x", "model_path": str(models / ".." / "outside.gguf")})
        assert traversal.status_code == 403
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            async with http.stream("POST", "/v1/completions", json={
                    "model": "cfg", "prompt": "Count:", "max_tokens": 3000, "ignore_eos": True,
                    "stream": True}) as response:
                lines = []
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                    if len(lines) == 3:
                        server.process.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]"
        assert orjson.loads(lines[-2][6:])["error"]["code"] == "engine_stopped"
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    finally:
        stop_server(server)
