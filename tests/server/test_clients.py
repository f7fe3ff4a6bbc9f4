"""Real clients: the official openai SDK, HTTP/2 (h2c), disconnects and engine deletion."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from ..server_process import ENGINE, ServerProcess, wait_idle
from .constrained import warm_prefix_cache

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_sdk_chat(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens_details is not None


def test_sdk_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Count to five"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 10


def test_sdk_completions_and_prompt_list(server: ServerProcess, client: openai.OpenAI) -> None:
    completion = client.completions.create(model=ENGINE, prompt=["Hello", "Goodbye"], max_tokens=4,
                                           temperature=0)
    assert [c.index for c in completion.choices] == [0, 1]
    warm_prefix_cache(server, "/v1/completions", {"prompt": "The sky is", "temperature": 0})
    whole = client.completions.create(model=ENGINE, prompt="The sky is", max_tokens=4, temperature=0)
    stream = client.completions.create(model=ENGINE, prompt="The sky is", max_tokens=4, temperature=0,
                                       stream=True)
    texts = [c.choices[0].text for c in stream if c.choices]
    assert "".join(texts) == whole.choices[0].text and len(texts) >= 2  # it did stream


def test_sdk_errors(client: openai.OpenAI, keyed_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=ENGINE, messages=[{"role": "user", "content": "x"}],
                                       temperature=5)
    assert raised.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=ENGINE, prompt="word " * 5000)
    assert raised.value.code == "context_length_exceeded"
    keyed = openai.OpenAI(base_url=keyed_server.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyed.models.list()
    good = openai.OpenAI(base_url=keyed_server.base_url + "/v1", api_key="sk-test-1", max_retries=0)
    assert any(m.id == ENGINE for m in good.models.list().data)


async def test_http2_cleartext_streamed_chat(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, http1=False, http2=True, timeout=60) as h2:
        async with h2.stream("POST", "/v1/chat/completions", json={
                "model": ENGINE, "stream": True, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hello over HTTP/2"}]}) as response:
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert orjson.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


async def test_disconnect_mid_stream_frees_the_slot(server: ServerProcess) -> None:
    cancelled_before = (await asyncio.to_thread(wait_idle, server.base_url))["stats"]["requests_cancelled"]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json={
                "model": ENGINE, "prompt": "Count forever:", "max_tokens": 2000, "ignore_eos": True,
                "stream": True}) as response:
            received = 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received += 1
                if received == 5:
                    status = httpx.get(f"{server.base_url}/engines/{ENGINE}/status").json()
                    assert status["stats"]["slots_busy"] == 1
                    break
    status = await asyncio.to_thread(wait_idle, server.base_url)
    assert status["stats"]["slots_busy"] == 0
    assert status["stats"]["requests_cancelled"] == cancelled_before + 1


async def test_delete_engine_ends_streams_cleanly(server: ServerProcess, model_path: Path) -> None:
    created = httpx.post(f"{server.base_url}/engines", json={
        "engine_id": "doomed", "model_path": str(model_path), "n_ctx": 1024}, timeout=60)
    assert created.status_code == 201
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        streaming = asyncio.Event()

        async def stream() -> list[str]:
            lines = []
            async with http.stream("POST", "/v1/completions", json={
                    "model": "doomed", "prompt": "Count forever:", "max_tokens": 3000,
                    "ignore_eos": True, "stream": True}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        streaming.set()
            return lines

        task = asyncio.create_task(stream())
        await asyncio.wait_for(streaming.wait(), 60)  # tokens are flowing
        deleted = await http.delete("/engines/doomed")
        assert deleted.status_code == 200
        lines = await asyncio.wait_for(task, 30)
    assert lines[-1] == "data: [DONE]"
    error = orjson.loads(lines[-2][6:])["error"]
    assert error["code"] == "engine_stopped"
    assert httpx.get(f"{server.base_url}/v1/health").status_code == 200
