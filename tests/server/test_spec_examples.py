"""Every curl example of the API contract (shared/spec/kolosal-server-README.md), as HTTP."""
from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from ..server_process import ENGINE, ServerProcess

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]


def assert_usage(usage: dict) -> None:
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert isinstance(usage["prompt_tokens_details"]["cached_tokens"], int)


def chat(server: ServerProcess, **body: object) -> httpx.Response:
    payload = {"model": ENGINE, "messages": [{"role": "user", "content": "Hello, how are you today?"}],
               "stream": False, "temperature": 0.7, "max_tokens": 20}
    payload.update(body)
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=payload, timeout=120)


def test_add_engine_list_status_delete(server: ServerProcess, model_path: Path) -> None:
    response = httpx.post(f"{server.base_url}/engines", json={
        "engine_id": "my-model", "model_path": str(model_path), "n_ctx": 2048,
        "n_gpu_layers": 0, "main_gpu_id": 0}, timeout=120)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["engine_id"] == "my-model" and body["state"] == "ready" and body["n_ctx"] == 2048
    assert httpx.post(f"{server.base_url}/engines", json={
        "engine_id": "my-model", "model_path": str(model_path)}, timeout=60).status_code == 409
    listed = httpx.get(f"{server.base_url}/v1/engines").json()
    assert listed["object"] == "list"
    assert {e["engine_id"] for e in listed["data"]} >= {ENGINE, "my-model"}
    status = httpx.get(f"{server.base_url}/engines/my-model/status").json()
    assert status["state"] == "ready" and status["model_path"] == str(model_path.resolve())
    for key in ("slots_total", "slots_busy", "slots_free", "queue_depth", "kv_cells_used",
                "decode_tokens_per_s", "prefill_tokens_per_s"):
        assert key in status["stats"]
    completion = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": "my-model", "prompt": "The future of AI is", "max_tokens": 4}, timeout=60)
    assert completion.status_code == 200 and completion.json()["model"] == "my-model"
    deleted = httpx.delete(f"{server.base_url}/engines/my-model")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert httpx.get(f"{server.base_url}/engines/my-model/status").status_code == 404
    assert httpx.delete(f"{server.base_url}/engines/my-model").status_code == 404


def test_engine_defaults_match_the_seed_table(server: ServerProcess, model_path: Path) -> None:
    response = httpx.post(f"{server.base_url}/engines", json={
        "engine_id": "defaults", "model_path": str(model_path)}, timeout=120)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["n_ctx"], body["n_gpu_layers"], body["main_gpu_id"]) == (4096, 100, 0)
    assert httpx.delete(f"{server.base_url}/engines/defaults").status_code == 200


def test_non_streaming_chat(server: ServerProcess) -> None:
    response = chat(server)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == ENGINE and isinstance(body["created"], int)
    assert body["system_fingerprint"].startswith("fp_")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert_usage(body["usage"])
    assert body["usage"]["completion_tokens"] <= 20


def test_streaming_chat(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Accept": "text/event-stream"},
                          json={"model": ENGINE, "stream": True, "temperature": 0.8, "max_tokens": 15,
                                "messages": [{"role": "user",
                                              "content": "Tell me a short story about a robot."}]},
                          timeout=120)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text


def test_streaming_chat_with_usage(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
        "model": ENGINE, "stream": True, "max_tokens": 5, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hi"}]}, timeout=60)
    chunks = [orjson.loads(e) for e in sse_events(response.text)[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 5
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_multi_message_conversation(server: ServerProcess) -> None:
    response = chat(server, max_tokens=30, messages=[
        {"role": "system", "content": "You are a helpful programming assistant."},
        {"role": "user", "content": "How do I create a simple HTTP server in Python?"},
        {"role": "assistant", "content": "You can create a simple HTTP server in Python using the built-in "
                                         "http.server module..."},
        {"role": "user", "content": "Can you show me the code?"}])
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] > 40


def test_advanced_chat_parameters(server: ServerProcess) -> None:
    # A seed reproduces a sample under the same cache state (README, "Known limits": a cold
    # prompt and a cached one differ in the last bits of the logits): warm the cache first.
    chat(server, temperature=0.1, top_p=0.9, max_tokens=1, seed=42,
         messages=[{"role": "user", "content": "What is the capital of France?"}])
    response = chat(server, temperature=0.1, top_p=0.9, max_tokens=50, seed=42,
                    presence_penalty=0.0, frequency_penalty=0.0,
                    messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert response.status_code == 200
    again = chat(server, temperature=0.1, top_p=0.9, max_tokens=50, seed=42,
                 presence_penalty=0.0, frequency_penalty=0.0,
                 messages=[{"role": "user", "content": "What is the capital of France?"}])
    def content(r: httpx.Response) -> str:
        return r.json()["choices"][0]["message"]["content"]
    assert content(again) == content(response)


def test_non_streaming_completion(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": "The future of artificial intelligence is", "stream": False,
        "temperature": 0.7, "max_tokens": 20}, timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert_usage(body["usage"])


def test_completion_default_max_tokens_is_16(server: ServerProcess) -> None:
    body = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": "Count: one, two, three,", "temperature": 0, "ignore_eos": True},
        timeout=60).json()
    assert body["usage"]["completion_tokens"] == 16


def test_streaming_completion(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", headers={"Accept": "text/event-stream"}, json={
        "model": ENGINE, "prompt": "Write a haiku about programming:", "stream": True,
        "temperature": 0.8, "max_tokens": 12}, timeout=60)
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["text"] == ""
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_multiple_prompts(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": ["The weather today is", "In other news,"], "stream": False,
        "temperature": 0.5, "max_tokens": 30}, timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(isinstance(c["text"], str) and c["finish_reason"] for c in body["choices"])
    assert_usage(body["usage"])


def test_multiple_prompts_streaming(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": ["The weather today is", "In other news,", "Once upon"],
        "stream": True, "temperature": 0, "max_tokens": 6, "ignore_eos": True}, timeout=60)
    chunks = [orjson.loads(e) for e in sse_events(response.text)[:-1]]
    finals = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(f["index"] for f in finals) == [0, 1, 2]


def test_advanced_completion_parameters(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": "Explain quantum computing:", "stream": False, "temperature": 0.2,
        "top_p": 0.9, "max_tokens": 40, "seed": 123, "presence_penalty": 0.0,
        "frequency_penalty": 0.1}, timeout=300)  # generous: a loaded CI machine is slow
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] <= 40


def test_health_and_models(server: ServerProcess) -> None:
    health = httpx.get(f"{server.base_url}/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    models = httpx.get(f"{server.base_url}/v1/models").json()
    assert models["object"] == "list"
    assert any(m["id"] == ENGINE and m["object"] == "model" for m in models["data"])
