"""Every error path returns an OpenAI error object with the right status; none breaks the server."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from ..server_process import ENGINE, ServerProcess
from ..waiting import until_async

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def assert_error(response: httpx.Response, status: int, code: str | None = None,
                 param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def post(server: ServerProcess, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(server.base_url + path, timeout=60, **kwargs)  # type: ignore[arg-type]


def chat_body(**overrides: object) -> dict:
    body = {"model": ENGINE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body.update(overrides)
    return body


def test_invalid_json(server: ServerProcess) -> None:
    assert_error(post(server, "/v1/chat/completions", content=b"{not json",
                      headers={"Content-Type": "application/json"}), 400)
    json_type = {"Content-Type": "application/json"}  # other types are 415 (test_hardening_http)
    assert_error(post(server, "/v1/chat/completions", content=b"[1, 2]", headers=json_type), 400)
    assert_error(post(server, "/v1/chat/completions", content=b"", headers=json_type), 400)


@pytest.mark.parametrize(("overrides", "param"), [
    ({"temperature": 2.5}, "temperature"), ({"temperature": -0.1}, "temperature"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -5}, "max_tokens"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, None),
    ({"top_p": 1.5}, "top_p"), ({"n": 0}, "n"), ({"n": 1000}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"max_tokens": "many"}, "max_tokens"), ({"stream": "yes"}, "stream"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"), ({"logit_bias": [[1, True]]}, "logit_bias"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"), ({"top_k": 2**31}, "top_k"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "response_format"),
    ({"grammar": "root ::= ("}, "grammar"),
])
def test_bad_fields(server: ServerProcess, overrides: dict, param: str | None) -> None:
    error = assert_error(post(server, "/v1/chat/completions", json=chat_body(**overrides)), 400)
    if param is not None:
        assert error["param"].startswith(param)
    assert error["type"] == "invalid_request_error"


def test_missing_required_fields(server: ServerProcess) -> None:
    assert_error(post(server, "/v1/chat/completions", json={"model": ENGINE}), 400, param="messages")
    assert_error(post(server, "/v1/completions", json={"model": ENGINE}), 400, param="prompt")
    assert_error(post(server, "/v1/completions", json={"prompt": "x"}), 400, param="model")


def test_unknown_model(server: ServerProcess) -> None:
    error = assert_error(post(server, "/v1/chat/completions", json=chat_body(model="non-existent-model")),
                         404, code="model_not_found")
    assert "non-existent-model" in error["message"]
    assert_error(post(server, "/v1/completions", json={"model": "nope", "prompt": "x"}), 404,
                 code="model_not_found")


def test_context_length_exceeded(server: ServerProcess) -> None:
    long_text = "word " * 5000
    assert_error(post(server, "/v1/completions", json={"model": ENGINE, "prompt": long_text}),
                 400, code="context_length_exceeded")
    assert_error(post(server, "/v1/chat/completions",
                      json=chat_body(messages=[{"role": "user", "content": long_text}])),
                 400, code="context_length_exceeded")


def test_oversize_body(server: ServerProcess) -> None:
    huge = b'{"model": "x", "prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    assert_error(post(server, "/v1/completions", content=huge,
                      headers={"Content-Type": "application/json"}), 413)


def test_deeply_nested_json(server: ServerProcess) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    assert_error(post(server, "/v1/completions", content=nested,
                      headers={"Content-Type": "application/json"}), 400)


def test_unknown_route_and_method(server: ServerProcess) -> None:
    assert_error(httpx.get(server.base_url + "/v1/nothing-here"), 404)
    assert_error(httpx.get(server.base_url + "/v1/chat/completions"), 405)


def test_engine_creation_errors(server: ServerProcess, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.gguf")
    assert_error(post(server, "/engines", json={"engine_id": "x", "model_path": missing}),
                 404, param="model_path")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 10)
    assert_error(post(server, "/engines", json={"engine_id": "x", "model_path": str(junk)}), 400,
                 param="model_path")
    assert_error(post(server, "/engines", json={"engine_id": "x", "model_path": str(tmp_path)}), 400)
    assert_error(post(server, "/engines", json={"model_path": str(junk)}), 400, param="engine_id")
    assert_error(post(server, "/engines", json={"engine_id": "x", "model_path": str(junk), "n_ctx": "big"}),
                 400, param="n_ctx")
    assert_error(post(server, "/engines", json={"engine_id": ENGINE, "model_path": str(junk)}), 400)


def test_server_still_serves_after_errors(server: ServerProcess) -> None:
    response = post(server, "/v1/completions", json={"model": ENGINE, "prompt": "Hello", "max_tokens": 3})
    assert response.status_code == 200


async def test_queue_full_gives_503_with_retry_after(server: ServerProcess, model_path: Path) -> None:
    created = post(server, "/engines", json={"engine_id": "one-slot", "model_path": str(model_path),
                                             "n_ctx": 512, "n_parallel": 1, "max_queue": 1})
    assert created.status_code == 201, created.text
    body = {"model": "one-slot", "prompt": "Tell me a story", "max_tokens": 300, "ignore_eos": True,
            "stream": True}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        async with client.stream("POST", "/v1/completions", json=body) as running:
            assert running.status_code == 200
            lines = running.aiter_lines()
            await lines.__anext__()  # decoding: the slot is taken
            queued = asyncio.create_task(client.post("/v1/completions", json={**body, "stream": False,
                                                                              "max_tokens": 2}))
            await until_async(lambda: httpx.get(f"{server.base_url}/engines/one-slot/status")
                              .json()["stats"]["queue_depth"] == 1, what="the second request queued")
            refused = await client.post("/v1/completions", json=body)
            assert_error(refused, 503, code="engine_overloaded")
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["x-should-retry"] == "true"
        assert (await queued).status_code == 200
    assert httpx.delete(f"{server.base_url}/engines/one-slot").status_code == 200


def test_api_keys(keyed_server: ServerProcess) -> None:
    url = keyed_server.base_url
    body = {"model": ENGINE, "prompt": "Hi", "max_tokens": 2}
    assert_error(httpx.post(url + "/v1/completions", json=body, timeout=60), 401, code="invalid_api_key")
    assert_error(httpx.post(url + "/v1/completions", json=body, timeout=60,
                            headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.post(url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer sk-test-2"}).status_code == 200
    assert httpx.post(url + "/v1/completions", json=body, timeout=60,
                      headers={"X-API-Key": "sk-test-1"}).status_code == 200
    assert_error(httpx.get(url + "/v1/engines"), 401)
    assert httpx.get(url + "/v1/health").status_code == 200
    assert httpx.get(url + "/health").status_code == 200
