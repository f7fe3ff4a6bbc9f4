"""Metrics, request ids and access logs, observed from outside the server."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from ..server_process import ENGINE, ServerProcess, start_server, stop_server


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_prometheus_metrics(server: ServerProcess) -> None:
    httpx.post(f"{server.base_url}/v1/completions", timeout=60,
               json={"model": ENGINE, "prompt": "Hello", "max_tokens": 3, "stream": True})
    httpx.post(f"{server.base_url}/v1/completions", timeout=60,
               json={"model": ENGINE, "prompt": "Hello", "max_tokens": 3})
    httpx.post(f"{server.base_url}/v1/completions", timeout=60, json={"model": "missing", "prompt": "x"})
    response = httpx.get(f"{server.base_url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric_value(text, "kolosal_requests_total", endpoint="/v1/completions", model=ENGINE,
                        status="200") >= 2
    assert metric_value(text, "kolosal_requests_total", model="other", status="404") >= 1  # unknown: one label
    assert metric_value(text, "kolosal_generated_tokens_total", model=ENGINE) >= 6
    assert metric_value(text, "kolosal_time_to_first_token_seconds_count", model=ENGINE) >= 2
    assert metric_value(text, "kolosal_slots_total", model=ENGINE) == 8
    assert metric_value(text, "kolosal_kv_cells_total", model=ENGINE) >= 4096
    assert "kolosal_request_duration_seconds_bucket" in text
    assert "kolosal_engine_load_seconds" in text


def test_request_id_is_echoed_or_made(server: ServerProcess) -> None:
    supplied = httpx.get(f"{server.base_url}/v1/health", headers={"X-Request-Id": "abc-123"})
    assert supplied.headers["X-Request-Id"] == "abc-123"
    made = httpx.get(f"{server.base_url}/v1/health")
    assert made.headers["X-Request-Id"].startswith("req_")


def test_json_access_log_without_prompt_text(model_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_server(model_path, log, "--log-format", "json")
    try:
        secret = "my secret prompt text"
        httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                   headers={"X-Request-Id": "trace-42"},
                   json={"model": ENGINE, "prompt": secret, "max_tokens": 4, "stream": True})
        time.sleep(0.3)
    finally:
        stop_server(server)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "trace-42"]
    assert len(access) == 1
    entry = access[0]
    assert entry["status"] == 200 and entry["model"] == ENGINE
    assert entry["completion_tokens"] == 4 and entry["prompt_tokens"] > 0
    assert entry["ttft_ms"] > 0 and entry["duration_ms"] >= entry["ttft_ms"]
    assert secret not in log.read_text()


def test_log_prompts_is_opt_in(model_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_server(model_path, log, "--log-prompts")
    try:
        for path, body in (("/v1/completions", {"prompt": "opt-in completion text"}),
                           ("/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "opt-in chat text"}]})):
            response = httpx.post(f"{server.base_url}{path}", timeout=60,
                                  json={"model": ENGINE, "max_tokens": 2, **body})
            assert response.status_code == 200
        time.sleep(0.3)
    finally:
        stop_server(server)
    access = [line for line in log.read_text().splitlines() if "kolosal.access" in line]
    assert any("prompt='opt-in completion text'" in line for line in access)
    assert any("opt-in chat text" in line for line in access)  # the rendered chat prompt
