"""Hostile traffic against the real server: property-based request bodies (hypothesis) and
clients that vanish at random points under 32-way load. Nothing may produce a 5xx, hang,
leak a slot, a KV cell, a task or a thread; the server keeps serving."""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..server_process import ENGINE, ServerProcess, start_server, stop_server, wait_idle

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/engines")

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)

# Each field of a valid request, replaced by something that may or may not be valid.
FIELD_VALUES = {
    "model": st.sampled_from([ENGINE, "", "no-such-model", "../etc/passwd"]) | json_values,
    "prompt": st.text(max_size=60) | st.lists(st.text(max_size=20), max_size=70)
    | st.lists(st.integers(min_value=-5, max_value=300_000), max_size=20)
    | st.just("word " * 5000) | json_values,
    "max_tokens": st.integers(min_value=-(10**20), max_value=10**20) | json_values,
    "temperature": st.floats(min_value=-10, max_value=10) | json_values,
    "top_p": st.floats(min_value=-2, max_value=3) | json_values,
    "top_k": st.integers(min_value=-10**12, max_value=10**12) | json_values,
    "presence_penalty": st.floats(min_value=-5, max_value=5) | json_values,
    "stop": st.text(max_size=10) | st.lists(st.text(max_size=10), max_size=6) | json_values,
    "seed": st.integers(min_value=-(10**30), max_value=10**30) | json_values,
    "logit_bias": st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=3)
    | json_values,
    "n": st.integers(min_value=-3, max_value=5) | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": json_values}) | json_values,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "tool", "wizard", ""]),
                                                "content": json_values | st.text(max_size=30)}),
                         max_size=3) | json_values,
}


def send(server: ServerProcess, path: str, content: bytes) -> int:
    """POST and return the status. Successful streams are closed after the headers (the
    disconnect must free the slot); nothing waits for a long generation."""
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        with client.stream("POST", path, content=content,
                           headers={"Content-Type": "application/json"}) as response:
            if response.status_code >= 400:
                response.read()
                error = response.json()["error"]  # always an OpenAI error object
                assert set(error) == {"message", "type", "param", "code"} and error["message"]
            return response.status_code


def assert_no_5xx(status: int, body: object) -> None:
    assert status < 500, f"{status} for {body!r:.300}"


@FUZZ
@given(path=st.sampled_from(ENDPOINTS), body=json_values)
def test_arbitrary_json_bodies(server: ServerProcess, path: str, body: object) -> None:
    status = send(server, path, json.dumps(body).encode())
    assert_no_5xx(status, body)
    assert status != 200 or path != "/engines"


@FUZZ
@given(path=st.sampled_from(ENDPOINTS[:2]), data=st.binary(max_size=200))
def test_arbitrary_bytes(server: ServerProcess, path: str, data: bytes) -> None:
    assert_no_5xx(send(server, path, data), data)


@FUZZ
@given(chat=st.booleans(), field=st.sampled_from(sorted(FIELD_VALUES)), data=st.data())
def test_one_field_mutated(server: ServerProcess, chat: bool, field: str, data: st.DataObject) -> None:
    body: dict[str, object] = {"model": ENGINE, "max_tokens": 2, "stream": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        body["prompt"] = "Hi"
    body[field] = data.draw(FIELD_VALUES[field], label=field)
    status = send(server, "/v1/chat/completions" if chat else "/v1/completions", json.dumps(body).encode())
    assert_no_5xx(status, body)


def test_invalid_utf8_and_lone_surrogates(server: ServerProcess) -> None:
    for raw in (b'{"model": "gemma", "prompt": "\xff\xfe bad bytes", "max_tokens": 2}',
                b'{"model": "gemma", "prompt": "\\ud800 lone surrogate", "max_tokens": 2}',
                b'{"model": "gemma", "messages": [{"role": "user", "content": "\\udfff"}]}'):
        for path in ENDPOINTS[:2]:
            assert 400 <= send(server, path, raw) < 500


def test_server_is_clean_after_the_fuzzing(server: ServerProcess) -> None:
    status = wait_idle(server.base_url)
    stats = status["stats"]
    assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
    assert stats["kv_cells_used"] == stats["kv_cells_cached"]
    response = httpx.post(f"{server.base_url}/v1/completions", timeout=300,
                          json={"model": ENGINE, "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200


def settled_metrics(base_url: str, before: str, timeout: float = 120.0) -> str:
    """/metrics once the task and thread gauges are back to ``before``'s, or the last scrape
    at ``timeout`` (a busy machine closes connections late). Scrapes are 2 s apart: each
    connection, the previous scrape's included, stays up to the 1 s keep-alive."""
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(2.0)
        after = httpx.get(f"{base_url}/metrics", timeout=timeout).text
        if time.monotonic() > deadline or all(gauge(after, name) <= gauge(before, name)
                                              for name in ("kolosal_event_loop_tasks", "kolosal_threads")):
            return after


def gauge(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def short_keep_alive_server(model_path: Path,
                            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Its own server: idle connections of vanished clients close after 1 s (Hypercorn keeps a
    connection's tasks until its keep-alive timeout), so leftover tasks are measurable."""
    running = start_server(model_path, tmp_path_factory.mktemp("hangups") / "server.log",
                           "--http-keep-alive", "1")
    yield running
    stop_server(running)


async def test_random_disconnects_under_32_way_load(short_keep_alive_server: ServerProcess) -> None:
    server = short_keep_alive_server
    rng = random.Random(7)

    async def client(index: int, http: httpx.AsyncClient) -> str:
        mode = rng.choice(["before_headers", "after_chunks", "after_chunks", "to_the_end"])
        body = {"model": ENGINE, "prompt": f"Client {index} counts:", "max_tokens": 40,
                "ignore_eos": True, "stream": True}
        if mode == "before_headers":
            task = asyncio.create_task(http.post("/v1/completions", json=body))
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            task.cancel()
            return mode
        keep = rng.randint(1, 30) if mode == "after_chunks" else 10**6
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= keep:
                    break  # leaving the block closes the connection mid-stream
        return mode

    async def round_of_clients() -> list[str]:
        limits = httpx.Limits(max_connections=40)
        # generous: a client queued behind 31 others on a busy 2-core box waits minutes
        async with httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits) as http:
            results = await asyncio.gather(*(client(i, http) for i in range(32)), return_exceptions=True)
        errors = [r for r in results
                  if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        assert not errors, errors
        return [r for r in results if isinstance(r, str)]

    await round_of_clients()  # warm-up: thread pools and caches reach their steady size
    await asyncio.to_thread(wait_idle, server.base_url)
    time.sleep(2.0)
    before = httpx.get(f"{server.base_url}/metrics").text
    modes = await round_of_clients()
    assert {"after_chunks", "to_the_end"} <= set(modes)
    status = await asyncio.to_thread(wait_idle, server.base_url)
    after = await asyncio.to_thread(settled_metrics, server.base_url, before)
    stats = status["stats"]
    assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
    assert stats["kv_cells_used"] == stats["kv_cells_cached"]  # only prefix caches remain
    assert gauge(after, "kolosal_event_loop_tasks") <= gauge(before, "kolosal_event_loop_tasks")
    assert gauge(after, "kolosal_threads") <= gauge(before, "kolosal_threads")
    ok = httpx.post(f"{server.base_url}/v1/completions", timeout=300,
                    json={"model": ENGINE, "prompt": "Still there?", "max_tokens": 3})
    assert ok.status_code == 200
