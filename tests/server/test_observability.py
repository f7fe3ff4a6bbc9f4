"""Metrics, request ids and access logs, observed from outside the server."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from ..server_process import ENGINE, ServerProcess, start_server, stop_server, wait_idle
from ..waiting import until

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


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
    assert metric_value(text, "kolosal_requests_total", model="other", status="404") >= 1  # unknown
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
        until(lambda: "trace-42" in log.read_text(), what="the access log line")
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
        until(lambda: log.read_text().count("kolosal.access") >= 2, what="both access log lines")
    finally:
        stop_server(server)
    access = [line for line in log.read_text().splitlines() if "kolosal.access" in line]
    assert any("prompt='opt-in completion text'" in line for line in access)
    assert any("opt-in chat text" in line for line in access)  # the rendered chat prompt


# -- gateway metrics (vLLM names) --------------------------------------------------------------
def engine_stats(base_url: str) -> dict:
    return httpx.get(f"{base_url}/engines/{ENGINE}/status").json()["stats"]


async def hold_streams(client: httpx.AsyncClient, url: str, count: int) -> list[asyncio.Task]:
    """``count`` long streams, kept open until their tasks are cancelled."""
    async def one() -> None:
        body = {"model": ENGINE, "prompt": "Write a long story:", "max_tokens": 300,
                "ignore_eos": True, "stream": True}
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            async for _ in response.aiter_raw():
                pass
    return [asyncio.create_task(one()) for _ in range(count)]


async def test_vllm_metrics_match_engine_status_under_load(server: ServerProcess) -> None:
    """10 long streams on 8 slots: vllm:num_requests_running is 8 and waiting 2, as the
    engine status says; KV usage lies between two status reads taken around the scrape."""
    url = server.base_url
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=30.0)) as client:
        tasks = await hold_streams(client, url, 10)
        try:
            deadline = time.monotonic() + 180
            while True:
                stats = engine_stats(url)
                if stats["slots_busy"] == 8 and stats["queue_depth"] == 2:
                    break
                assert time.monotonic() < deadline, stats
                await asyncio.sleep(0.05)
            text = httpx.get(f"{url}/metrics").text
            after = engine_stats(url)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert after["slots_busy"] == 8 and after["queue_depth"] == 2  # nothing moved meanwhile
    assert metric_value(text, "vllm:num_requests_running", model_name=ENGINE) == 8
    assert metric_value(text, "vllm:num_requests_waiting", model_name=ENGINE) == 2

    def usage(s: dict) -> float:
        return (s["kv_cells_used"] - s["kv_cells_cached"]) / s["kv_cells_total"]
    kv = metric_value(text, "vllm:kv_cache_usage_perc", model_name=ENGINE)
    assert 0 < usage(stats) <= kv <= usage(after) <= 1
    assert wait_idle(url, timeout=120)["stats"]["slots_busy"] == 0


def test_prefix_cache_counters_count_tokens(server: ServerProcess) -> None:
    """vllm:prefix_cache_queries/hits grow by exactly the prompt and cached tokens the
    responses report."""
    url = server.base_url
    wait_idle(url, timeout=120)
    before = httpx.get(f"{url}/metrics").text
    prompt = "The prefix cache keeps the tokens of a finished request in its slot. " * 4
    usages = []
    for _ in range(2):
        response = httpx.post(f"{url}/v1/completions", timeout=120,
                              json={"model": ENGINE, "prompt": prompt, "max_tokens": 2})
        assert response.status_code == 200
        usages.append(response.json()["usage"])
    after = httpx.get(f"{url}/metrics").text
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usages]
    assert cached[1] > 0  # the second one reused the first one's prefix

    def delta(name: str) -> float:
        return (metric_value(after, name, model_name=ENGINE)
                - metric_value(before, name, model_name=ENGINE))
    assert delta("vllm:prefix_cache_queries_total") == sum(u["prompt_tokens"] for u in usages)
    assert delta("vllm:prefix_cache_hits_total") == sum(cached)


# -- hardening: bounded labels, unforgeable log lines -------------------------------------------
def test_metric_labels_stay_bounded(server: ServerProcess) -> None:
    """Distinct paths and unknown model names (long ones too) must not add series: labels
    are route templates, known engine ids (else 'other') and status codes."""
    url = server.base_url
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(3):  # warm every label value the loop below may use
            client.get(f"/v1/warm-{i}")
            client.post("/v1/completions", json={"model": f"warm-{i}", "prompt": "x"})
            client.get(f"/engines/warm-{i}/status")
        size = len(client.get("/metrics").text)
        for i in range(150):
            client.get(f"/v1/probe-{i}")
            client.post(f"/v1/chat/probe-{i}")  # bodiless: an unread body may break keep-alive
            client.get(f"/probe-{i}/x")
            client.get(f"/engines/probe-{i}/status")
        for i in range(20):
            client.post("/v1/completions", json={"model": f"unknown-{i}-" + "m" * 20000, "prompt": "x"})
        text = client.get("/metrics").text
    assert "probe-" not in text and "unknown-" not in text
    assert len(text) - size < 2048, len(text) - size  # bucket counts may gain digits, no series
    assert metric_value(text, "kolosal_requests_total", endpoint="unmatched", status="404") >= 450
    assert metric_value(text, "kolosal_requests_total", endpoint="/v1/completions", model="other",
                        status="404") >= 20
    assert metric_value(text, "kolosal_requests_total", endpoint="/engines/<engine_id>/status",
                        status="404") >= 150


def forged_lines(log: str, marker: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(marker)]


def test_text_log_escapes_control_characters(model_path: Path, tmp_path: Path) -> None:
    """CR/LF (and other line breaks) in the path or the model field never start a new log
    line: they are written as escapes."""
    server = start_server(model_path, tmp_path / "server.log")
    forged = "2099-01-01 00:00:00,000 INFO kolosal.access: FORGED"
    try:
        httpx.get(f"{server.base_url}/v1/x%0d%0a{forged.replace(' ', '%20')}",
                  headers={"X-Request-Id": "inject-path"})
        for model in (f"m\r\n{forged}", f"m\x85{forged}", f"m\u2028{forged}", f"m\x1b[2J\x00{forged}"):
            httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                       headers={"X-Request-Id": "inject-model"}, json={"model": model, "prompt": "x"})
        until(lambda: server.log().count("inject-model") >= 4, what="the access log lines")
    finally:
        stop_server(server)
    log = server.log()
    assert forged_lines(log, "2099-01-01") == []
    access = [line for line in log.splitlines() if "kolosal.access" in line and "inject-" in line]
    assert len(access) == 5, access
    assert "/v1/x\\r\\n2099-01-01" in access[0]
    logged = "\n".join(access[1:])
    for escaped in ("m\\r\\n2099", "m\\x852099", "m\\u20282099", "m\\x1b[2J\\x002099"):
        assert f"model={escaped}" in logged, escaped


def test_json_log_keeps_one_record_per_line(model_path: Path, tmp_path: Path) -> None:
    """Every physical line of a JSON log is one JSON object, whatever line breaks a client
    puts in the path or the model (json escapes C0; C1, DEL, U+2028/9 must be escaped too)."""
    server = start_server(model_path, tmp_path / "server.log", "--log-format", "json")
    try:
        httpx.get(f"{server.base_url}/v1/x%c2%85%e2%80%a8%0d%0a{{%22forged%22:1}}",
                  headers={"X-Request-Id": "inject-path"})
        httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                   headers={"X-Request-Id": "inject-model"},
                   json={"model": 'm\x85\u2028\u2029\x7f\r\n{"forged": 1}', "prompt": "x"})
        until(lambda: "inject-model" in server.log(), what="the access log line")
    finally:
        stop_server(server)
    records = []
    for line in server.log().splitlines():  # splitlines: breaks on \x85 and U+2028 too
        if line.startswith("{"):
            records.append(json.loads(line))
    injected = [r for r in records if str(r.get("request_id", "")).startswith("inject-")]
    assert len(injected) == 2
    assert not any("forged" in r for r in records)
    assert injected[1]["model"] == 'm\x85\u2028\u2029\x7f\r\n{"forged": 1}'  # escaped, not lost
