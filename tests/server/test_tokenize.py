"""POST /tokenize and /detokenize in llama-server's shapes, and the OpenAI model retrieve
(GET /v1/models/{id}), on the shared server (the default Gemma model as engine "gemma")."""
from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from kolosal.config import ServerSettings
from kolosal.engine import EngineRegistry
from kolosal.server.app import create_app

from ..server_process import ENGINE, ServerProcess

BOS, START_OF_TURN = 2, 105  # Gemma 3's <bos> and <start_of_turn>


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)


def test_tokenize_defaults_as_llama_server(server: ServerProcess) -> None:
    plain = post(server, "/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert plain and all(isinstance(token, int) for token in plain) and plain[0] != BOS
    with_bos = post(server, "/tokenize", {"content": "Hello world", "add_special": True}).json()["tokens"]
    assert with_bos == [BOS, *plain]
    # control-token text is parsed by default, kept as text when parse_special is false
    parsed = post(server, "/tokenize", {"content": "<start_of_turn>user"}).json()["tokens"]
    literal = post(server, "/tokenize", {"content": "<start_of_turn>user", "parse_special": False})
    assert parsed[0] == START_OF_TURN and START_OF_TURN not in literal.json()["tokens"]


def test_pieces_are_text_or_the_bytes_of_part_of_a_character(server: ServerProcess) -> None:
    text = "Hi ꙮ!"  # a rare character that Gemma spells with byte tokens
    items = post(server, "/tokenize", {"content": text, "with_pieces": True,
                                       "add_special": True}).json()["tokens"]
    assert items[0] == {"id": BOS, "piece": "<bos>"}
    as_bytes = [bytes(item["piece"]) if isinstance(item["piece"], list) else item["piece"].encode()
                for item in items[1:]]
    assert b"".join(as_bytes).decode() == text
    assert any(isinstance(item["piece"], list) for item in items)  # not valid UTF-8 alone
    ids = post(server, "/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    assert [item["id"] for item in items] == ids


def test_detokenize_round_trip_renders_control_tokens(server: ServerProcess) -> None:
    text = "The café serves 🙂 coffee.\nSecond line"
    ids = post(server, "/tokenize", {"content": text}).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": ids}).json() == {"content": text}
    assert post(server, "/detokenize", {"tokens": [BOS, *ids]}).json()["content"] == "<bos>" + text
    assert post(server, "/detokenize", {"tokens": []}).json() == {"content": ""}


def test_model_field_and_errors(server: ServerProcess) -> None:
    named = post(server, "/tokenize", {"content": "abc", "model": ENGINE}).json()
    assert named == post(server, "/tokenize", {"content": "abc"}).json()
    missing = post(server, "/tokenize", {"content": "abc", "model": "missing"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/detokenize", {"tokens": [10**8]}, "tokens"), ("/detokenize", {"tokens": [-1]}, "tokens.0"),
        ("/detokenize", {"tokens": "1 2"}, "tokens"), ("/tokenize", {"content": 5}, "content"),
        ("/tokenize", {"content": "x", "with_pieces": "yes"}, "with_pieces"),
        ("/tokenize", {"content": "x", "extra": 1}, "extra")]
    for path, body, param in cases:
        response = post(server, path, body)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["error"]["param"] == param


def test_model_retrieve_with_the_sdk(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    model = client.models.retrieve(ENGINE)
    assert (model.id, model.object, model.owned_by) == (ENGINE, "model", "kolosal")
    listed = {m.id: m.created for m in client.models.list()}
    assert listed[ENGINE] == model.created
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.code == "model_not_found"
    # the aliases without /v1 that llama-server's clients use
    assert httpx.get(f"{server.base_url}/models/{ENGINE}").json()["id"] == ENGINE
    assert ENGINE in [m["id"] for m in httpx.get(f"{server.base_url}/models").json()["data"]]


async def test_no_engine_to_default_to_is_a_404() -> None:
    client = create_app(EngineRegistry(), ServerSettings()).test_client()
    response = await client.post("/tokenize", json={"content": "abc"})
    assert response.status_code == 404
    assert "POST /engines" in (await response.get_json())["error"]["message"]
