"""Probes and graceful drain of a real server process: SIGTERM during 8 streams."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..server_process import ENGINE, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

STREAM_TIMEOUT = httpx.Timeout(300.0, connect=30.0)


@dataclass
class StreamResult:
    started: asyncio.Event = field(default_factory=asyncio.Event)   # first content chunk seen
    finish_reason: str | None = None
    error: dict | None = None
    done: bool = False

    @property
    def clean(self) -> bool:
        """Ran to its end, or ended with an error event; either way closed with [DONE]."""
        return self.done and (self.finish_reason is not None or self.error is not None)


async def stream_completion(client: httpx.AsyncClient, url: str, max_tokens: int,
                            result: StreamResult) -> StreamResult:
    body = {"model": ENGINE, "prompt": "Count from one to a thousand:", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                result.done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                result.error = chunk["error"]
                continue
            choice = chunk["choices"][0]
            if choice["text"]:
                result.started.set()
            if choice["finish_reason"] is not None:
                result.finish_reason = choice["finish_reason"]
    return result


async def start_streams(url: str, count: int, max_tokens: int,
                        client: httpx.AsyncClient) -> tuple[list[StreamResult], list[asyncio.Task]]:
    results = [StreamResult() for _ in range(count)]
    tasks = [asyncio.create_task(stream_completion(client, url, max_tokens, r)) for r in results]
    started = asyncio.ensure_future(asyncio.gather(*(r.started.wait() for r in results)))
    # every stream is generating (or one already failed: say why)
    waiting: list[asyncio.Future[Any]] = [started, *tasks]
    await asyncio.wait(waiting, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done():
            raise AssertionError(f"a stream ended before the signal: {task.result()}")
    assert started.done(), "the streams did not start in time"
    return results, tasks


async def wait_exit(server: ServerProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while server.process.poll() is None:
        assert time.monotonic() < deadline, "the server did not exit after its drain"
        await asyncio.sleep(0.1)
    return server.process.returncode


async def wait_not_ready(client: httpx.AsyncClient, url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        response = await client.get(f"{url}/health/ready")
        if response.status_code == 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.02)


def test_probes(server: ServerProcess) -> None:
    live = httpx.get(f"{server.base_url}/health/live")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "engines": {"total": 1, "ready": 1}}
    assert httpx.get(f"{server.base_url}/v1/health").status_code == 200  # kept


def test_probes_need_no_key_and_no_engine(tmp_path: Path, model_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log", "--api-key", "sk-probe")
    try:
        assert httpx.get(f"{server.base_url}/health/ready").status_code == 200
        httpx.delete(f"{server.base_url}/engines/{ENGINE}", timeout=60,
                     headers={"Authorization": "Bearer sk-probe"})
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200
        ready = httpx.get(f"{server.base_url}/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "no_engine"
    finally:
        stop_server(server)


async def test_sigterm_drains_eight_streams(tmp_path: Path, model_path: Path) -> None:
    """In-flight streams finish; meanwhile readiness is 503 and new work gets 503
    server_draining with Retry-After (not 404, not a refused connection); then exit 0."""
    server = start_server(model_path, tmp_path / "server.log", "--drain-timeout", "600", "--threads", "1")
    url = server.base_url
    try:
        async with httpx.AsyncClient(timeout=STREAM_TIMEOUT) as client:
            results, tasks = await start_streams(url, 8, 64, client)
            server.process.send_signal(signal.SIGTERM)
            ready = await wait_not_ready(client, url)
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            assert (await client.get(f"{url}/health/live")).status_code == 200
            refused = await client.post(f"{url}/v1/completions",
                                        json={"model": ENGINE, "prompt": "Hi", "max_tokens": 4})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "server_draining"
            assert refused.headers["Retry-After"] == "1"
            assert not any(task.done() for task in tasks)  # it was answered mid-drain
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=500)
            assert await wait_exit(server, 60) == 0
        assert all(r.done and r.finish_reason == "length" and r.error is None for r in results), results
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "draining: 8 requests in flight" in server.log()


async def test_drain_deadline_ends_streams_with_error_event(tmp_path: Path, model_path: Path) -> None:
    """Streams still running at --drain-timeout end with an SSE error event and [DONE]:
    nothing hangs, and the process still exits 0."""
    server = start_server(model_path, tmp_path / "server.log", "--drain-timeout", "0.5", "--threads", "1",
                          "--n-ctx", "8192")
    try:
        async with httpx.AsyncClient(timeout=STREAM_TIMEOUT) as client:
            results, tasks = await start_streams(server.base_url, 8, 1000, client)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
            assert await wait_exit(server, 60) == 0
        assert all(r.clean for r in results), results
        assert all(r.error is not None and r.finish_reason is None for r in results), results
        assert {r.error["code"] for r in results if r.error} == {"engine_stopped"}
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "drain over: ending 8 requests still in flight" in server.log()


def test_idle_server_exits_at_once_on_sigterm(tmp_path: Path, model_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log")
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise
