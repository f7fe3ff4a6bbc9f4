"""LoRA adapters over HTTP, against a real server (the default Gemma model, adapters written
for it by tests/lora_files.py): --lora for the CLI's engine, POST /engines with adapters,
GET/POST /lora-adapters (llama-server's shapes), a request's ``lora`` (also through the
openai SDK's extra_body), and hostile values, each a clear 4xx with the server serving on."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..lora_files import write_lora
from ..near_tie import TOP_LOGPROBS, api_steps, assert_same_or_near_tie
from ..server_process import ENGINE, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.model
LORA_ENGINE = "lora"
REAL, ZERO = 0, 1    # the engine's adapters: random weights, lora_b all zero
MESSAGES = [{"role": "user", "content": "Name three rivers in Europe."}]
PROMPT = "In 1969, astronauts"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> dict[str, Path]:
    adapters, outside = tmp_path_factory.mktemp("adapters"), tmp_path_factory.mktemp("outside")
    write_lora(adapters / "real.gguf", model_path, seed=1, strength=0.5)
    write_lora(adapters / "zero.gguf", model_path, seed=3, zero_b=True)
    write_lora(outside / "stray.gguf", model_path, seed=4)
    return {"adapters": adapters, "outside": outside}


@pytest.fixture(scope="module")
def lora_server(model_path: Path, folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    """--models-dir: the adapters' folder and the model's (POST /engines loads it again)."""
    running = start_server(model_path, tmp_path_factory.mktemp("lora-server") / "server.log",
                           "--models-dir", str(folders["adapters"]),
                           "--models-dir", str(model_path.resolve().parent),
                           "--lora", f"{folders['adapters'] / 'real.gguf'}:0",
                           "--n-ctx", "1024", "--parallel", "2")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def api(lora_server: ServerProcess, model_path: Path, folders: dict[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lora_server.base_url, timeout=120) as client:
        loaded = client.post("/engines", json={
            "engine_id": LORA_ENGINE, "model_path": str(model_path), "n_ctx": 1024, "n_parallel": 2,
            "lora": [{"path": str(folders["adapters"] / "real.gguf"), "scale": 1.0},
                     {"path": str(folders["adapters"] / "zero.gguf")}]})
        assert loaded.status_code == 201, loaded.text
        yield client


def chat(api: httpx.Client, lora: Any = None, logprobs: bool = False, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": LORA_ENGINE, "messages": MESSAGES, "max_tokens": 16,
                            "temperature": 0, "cache_prompt": False, **extra}
    if lora is not None:
        body["lora"] = lora
    if logprobs:
        body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
    return api.post("/v1/chat/completions", json=body)


def chat_text(api: httpx.Client, lora: Any = None) -> str:
    response = chat(api, lora)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def completion_text(api: httpx.Client, lora: Any = None) -> str:
    body: dict[str, Any] = {"model": LORA_ENGINE, "prompt": PROMPT, "max_tokens": 16, "temperature": 0,
                            "cache_prompt": False}
    response = api.post("/v1/completions", json=body if lora is None else {**body, "lora": lora})
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def scales(api: httpx.Client, model: str = LORA_ENGINE) -> list[float]:
    return [adapter["scale"] for adapter in api.get("/lora-adapters", params={"model": model}).json()]


def refused(response: httpx.Response, status: int = 400, param: str = "lora") -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert str(error["param"]).startswith(param), error
    return str(error["message"])


def test_the_cli_engine_and_the_posted_engine_list_their_adapters(api: httpx.Client,
                                                                    folders: dict[str, Path]) -> None:
    real, zero = (str(folders["adapters"] / name) for name in ("real.gguf", "zero.gguf"))
    # no model: the default engine (the CLI's, with --lora real.gguf:0)
    assert api.get("/lora-adapters").json() == [{"id": 0, "path": real, "scale": 0.0}]
    listed = api.get("/lora-adapters", params={"model": LORA_ENGINE}).json()
    assert listed == [{"id": REAL, "path": real, "scale": 1.0}, {"id": ZERO, "path": zero, "scale": 1.0}]
    assert api.get(f"/engines/{LORA_ENGINE}").json()["lora"] == listed
    assert api.get(f"/engines/{ENGINE}").json()["lora"] == [{"id": 0, "path": real, "scale": 0.0}]
    refused(api.get("/lora-adapters", params={"model": "nope"}), 404, "model")


def test_a_requests_lora_picks_its_adapters(api: httpx.Client) -> None:
    base = chat(api, [], logprobs=True).json()["choices"][0]
    base_text = base["message"]["content"]
    assert chat_text(api, [{"id": REAL, "scale": 1.0}]) != base_text
    assert chat_text(api, [{"id": REAL, "scale": 0}]) == base_text  # scale 0: the base model
    assert_same_or_near_tie(api_steps(base["logprobs"]["content"]),
                            chat_text(api, [{"id": ZERO, "scale": 1.0}]), "all-zero adapter vs base")
    responses = api.post("/v1/responses", json={"model": LORA_ENGINE, "input": MESSAGES[0]["content"],
                                                "max_output_tokens": 16, "temperature": 0,
                                                "cache_prompt": False, "lora": [{"id": REAL, "scale": 1}]})
    assert responses.status_code == 200, responses.text  # the same chat, so the same text
    assert responses.json()["output"][-1]["content"][0]["text"] == chat_text(api, [{"id": REAL, "scale": 1}])
    plain = completion_text(api, [])
    assert completion_text(api, [{"id": REAL, "scale": 1}]) != plain
    assert completion_text(api, [{"id": REAL, "scale": 0.0}, {"id": ZERO, "scale": 0.0}]) == plain


def test_post_lora_adapters_sets_the_scales_of_requests_without_lora(api: httpx.Client) -> None:
    adapted, base = chat_text(api, [{"id": REAL, "scale": 1.0}]), chat_text(api, [])
    try:
        applied = api.post("/lora-adapters", params={"model": LORA_ENGINE}, json=[{"id": REAL, "scale": 1}])
        assert applied.status_code == 200 and applied.json() == {"success": True}
        assert scales(api) == [1.0, 0.0]  # the adapters left out are off, as in llama-server
        assert chat_text(api) == adapted
        assert api.post("/lora-adapters", params={"model": LORA_ENGINE}, json=[]).json() == {"success": True}
        assert scales(api) == [0.0, 0.0]
        assert chat_text(api) == base
        assert chat_text(api, [{"id": REAL, "scale": 1.0}]) == adapted  # a request's own set wins
    finally:
        api.post("/lora-adapters", params={"model": LORA_ENGINE},
                 json=[{"id": REAL, "scale": 1.0}, {"id": ZERO, "scale": 1.0}])
    assert scales(api) == [1.0, 1.0]


def test_the_openai_sdk_sends_lora_in_extra_body(api: httpx.Client, lora_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=lora_server.base_url + "/v1", api_key="unused", max_retries=0)
    common: dict[str, Any] = {"model": LORA_ENGINE, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
    sent = client.chat.completions.create(**common, extra_body={"lora": [{"id": REAL, "scale": 1.0}],
                                                                "cache_prompt": False})
    assert sent.choices[0].message.content == chat_text(api, [{"id": REAL, "scale": 1.0}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**common, extra_body={"lora": [{"id": 7, "scale": 1.0}]})
    assert caught.value.body["param"] == "lora"  # type: ignore[index]


BAD_LORA = [
    pytest.param([{"id": 2, "scale": 1.0}], "unknown LoRA adapter id 2", id="unknown-id"),
    pytest.param([{"id": -1, "scale": 1.0}], "unknown LoRA adapter id -1", id="negative-id"),
    pytest.param([{"id": 0, "scale": -0.5}], "scale must be in", id="negative-scale"),
    pytest.param([{"id": 0, "scale": 1e9}], "scale must be in", id="huge-scale"),
    pytest.param([{"id": 0, "scale": 1.0}, {"id": 0, "scale": 0.5}], "given twice", id="repeated-id"),
    pytest.param({"id": 0, "scale": 1.0}, "valid list", id="not-a-list"),
    pytest.param([0, 1.0], "valid dictionary", id="not-entries"),
    pytest.param([{"id": "0", "scale": 1.0}], "valid integer", id="string-id"),
    pytest.param([{"id": 0}], "required", id="no-scale"),
    pytest.param([{"id": 0, "scale": 1.0, "x": 1}], "not permitted", id="extra-key"),
    pytest.param([{"id": 0, "scale": 1.0}] * 1000, "at most 32", id="1000-entries"),
]


@pytest.mark.parametrize(("lora", "reason"), BAD_LORA)
def test_bad_lora_is_a_400_naming_lora_and_the_server_serves_on(api: httpx.Client, lora: Any,
                                                                reason: str) -> None:
    assert reason in refused(chat(api, lora))
    assert reason in refused(chat(api, lora, stream=True))  # refused before the stream starts
    assert reason in refused(api.post("/v1/completions", json={
        "model": LORA_ENGINE, "prompt": PROMPT, "max_tokens": 2, "lora": lora}))
    assert reason in refused(api.post("/v1/responses", json={
        "model": LORA_ENGINE, "input": "Hi", "max_output_tokens": 2, "lora": lora}))
    if isinstance(lora, list):
        response = api.post("/lora-adapters", params={"model": LORA_ENGINE}, json=lora)
        assert response.status_code == 400 and reason in response.json()["error"]["message"], response.text
    assert scales(api) == [1.0, 1.0]
    assert chat_text(api, [{"id": REAL, "scale": 1.0}])


def test_bad_lora_adapter_bodies(api: httpx.Client) -> None:
    for raw in (b'[{"id": 0, "scale": NaN}]', b'[{"id": 0, "scale": 1e400}]'):  # not JSON numbers
        response = api.post("/lora-adapters", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "invalid JSON" in response.text
    not_a_list = api.post("/lora-adapters", json={"id": 0, "scale": 1.0})
    assert not_a_list.status_code == 400 and "must be a JSON array" in not_a_list.text
    refused(api.post("/lora-adapters", params={"model": "nope"}, json=[]), 404, "model")
    # the default engine (no model): the CLI's, with one adapter
    assert api.post("/lora-adapters", json=[{"id": 0, "scale": 0}]).json() == {"success": True}
    refused(api.post("/lora-adapters", json=[{"id": 1, "scale": 1}]))
    assert scales(api, ENGINE) == [0.0]


def test_bad_adapters_in_post_engines_are_refused_and_the_server_serves_on(
        api: httpx.Client, model_path: Path, folders: dict[str, Path]) -> None:
    real = str(folders["adapters"] / "real.gguf")
    cases = [  # (engine id, lora, status, what the message says)
        ("outside", [{"path": str(folders["outside"] / "stray.gguf")}], 403, "outside the configured"),
        ("dotdot", [{"path": f"{folders['adapters']}/../{folders['outside'].name}/stray.gguf"}], 403,
         "outside the configured"),
        ("not-adapter", [{"path": str(model_path)}], 400, "not a LoRA adapter"),
        ("missing", [{"path": str(folders["adapters"] / "none.gguf")}], 400, "No such file"),
        ("folder", [{"path": str(folders["adapters"])}], 400, "not a regular file"),
        ("bad-scale", [{"path": real, "scale": -1}], 400, "scale must be in"),
        ("not-list", {"path": real}, 400, "valid list"),
        ("too-many", [{"path": real}] * 33, 400, "at most 32"),
        ("nul", [{"path": real + "\0"}], 400, "NUL byte"),
    ]
    for engine_id, lora, status, reason in cases:
        response = api.post("/engines", json={"engine_id": engine_id, "model_path": str(model_path),
                                              "n_ctx": 256, "lora": lora})
        assert reason in refused(response, status), (engine_id, response.text)
        api.delete(f"/engines/{engine_id}")  # a load that failed stays listed with its error
    assert chat_text(api, [{"id": REAL, "scale": 1.0}])
    assert scales(api) == [1.0, 1.0]
