"""Every operation of /openapi.json answers what the document says: one real request per
operation against a real server, each answer validated (jsonschema) against the schema the
document gives for its status. The response schemas are generated from the TypedDicts the
handlers build (kolosal/server/json_schema.py), so this checks the types against the wire."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from kolosal.server.endpoints import ROUTES
from kolosal.server.openapi import openapi_document

from ..server_process import ENGINE, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.model

DOCUMENT = openapi_document()
EMBEDDER = "embedder"   # the default model loaded a second time, as an embedding engine
TIMEOUT = 300


@pytest.fixture(scope="module")
def api(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    running: ServerProcess = start_server(model_path, tmp_path_factory.mktemp("openapi") / "server.log",
                                          "--parallel", "2")
    with httpx.Client(base_url=running.base_url, timeout=TIMEOUT) as client:
        yield client
    stop_server(running)


def check(response: httpx.Response, method: str, path: str) -> Any:
    """``response`` is a status the operation documents, with its documented content type
    and (JSON) a body valid under the documented schema; the JSON body, if any."""
    operation = DOCUMENT["paths"][path][method]
    described = operation["responses"].get(str(response.status_code))
    assert described is not None, (method, path, response.status_code, response.text)
    media = response.headers["content-type"].split(";")[0]
    assert media in described["content"], (method, path, media)
    if media != "application/json":
        return None
    body = response.json()
    schema = {**described["content"][media]["schema"], "components": DOCUMENT["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)
    return body


def test_every_operation_answers_its_documented_schema(api: httpx.Client, model_path: Path) -> None:
    done: set[tuple[str, str]] = set()

    def call(method: str, path: str, url: str | None = None, status: int = 200, **kwargs: Any) -> Any:
        response = api.request(method, url or path, **kwargs)
        assert response.status_code == status, (method, url or path, response.text)
        done.add((method, path))
        return check(response, method, path)

    chat = {"model": ENGINE, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    call("post", "/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 2})
    call("post", "/v1/completions", json={"model": ENGINE, "prompt": "Once upon", "max_tokens": 4,
                                          "echo": True, "logprobs": 2})
    created = call("post", "/v1/responses", json={"model": ENGINE, "input": "Hi", "max_output_tokens": 4})
    stored = f"/v1/responses/{created['id']}"
    assert call("get", "/v1/responses/{response_id}", stored) == created
    call("delete", "/v1/responses/{response_id}", stored)
    tokens = call("post", "/tokenize", json={"content": "Hello", "with_pieces": True})["tokens"]
    call("post", "/detokenize", json={"tokens": [token["id"] for token in tokens]})
    call("get", "/v1/models")
    call("get", "/v1/models/{model_id}", f"/v1/models/{ENGINE}")
    call("post", "/engines", status=201, json={"engine_id": EMBEDDER, "model_path": str(model_path),
                                               "embedding": True, "n_ctx": 512})
    for encoding_format in ("float", "base64"):
        call("post", "/v1/embeddings", json={"model": EMBEDDER, "input": ["a", "b"],
                                             "encoding_format": encoding_format})
    call("get", "/engines")
    call("get", "/lora-adapters", params={"model": ENGINE})
    call("post", "/lora-adapters", json=[])  # the default engine, which has no adapters
    call("get", "/engines/{engine_id}/status", f"/engines/{ENGINE}/status")
    call("delete", "/engines/{engine_id}", f"/engines/{EMBEDDER}")
    call("get", "/v1/health")
    call("get", "/health/live")
    call("get", "/health/ready")
    call("get", "/metrics")
    call("get", "/openapi.json")
    call("get", "/")
    assert done == {(route.method, route.paths[0]) for route in ROUTES}


@pytest.mark.parametrize(("method", "path", "url", "body"), [
    ("post", "/v1/chat/completions", None, {"model": "no-such-model", "messages": [
        {"role": "user", "content": "Hi"}]}),
    ("post", "/v1/completions", None, {"model": ENGINE, "prompt": "x", "temperature": 9}),
    ("get", "/v1/models/{model_id}", "/v1/models/no-such-model", None),
    ("get", "/engines/{engine_id}/status", "/engines/no-such-engine/status", None),
    ("delete", "/engines/{engine_id}", "/engines/no-such-engine", None),
    ("get", "/v1/responses/{response_id}", "/v1/responses/resp_none", None),
    ("post", "/engines", None, {"engine_id": "x", "model_path": "/no/such/file.gguf"}),
    ("get", "/lora-adapters", "/lora-adapters?model=no-such-model", None),
    ("post", "/lora-adapters", None, [{"id": 0, "scale": 1.0}]),
])
def test_errors_answer_the_error_schema(api: httpx.Client, method: str, path: str, url: str | None,
                                        body: dict[str, Any] | list[Any] | None) -> None:
    response = api.request(method, url or path, json=body)
    assert response.status_code >= 400
    assert set(check(response, method, path)) == {"error"}
