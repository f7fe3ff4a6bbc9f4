"""llama-server's logit_bias forms and mixed prompt lists, an engine's sampling defaults (the
GGUF's general.sampling.* keys and POST /engines ``defaults``) and --max-tokens-default,
against the real server and model."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..gguf_metadata import with_metadata
from ..near_tie import TOP_LOGPROBS, assert_same_or_near_tie, legacy_steps
from ..server_process import ENGINE, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

PROMPT = "The capital of France is"


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=300)


def tokens(server: ServerProcess, text: str, add_special: bool = False) -> list[int]:
    ids: list[int] = post(server, "/tokenize", {"content": text, "add_special": add_special}).json()["tokens"]
    return ids


def complete(server: ServerProcess, model: str = ENGINE, **fields: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "cache_prompt": False,
            **fields}
    response = post(server, "/v1/completions", body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def texts(result: dict[str, Any]) -> list[str]:
    return [choice["text"] for choice in result["choices"]]


def test_every_logit_bias_form_steers_the_model(server: ServerProcess) -> None:
    first = complete(server, max_tokens=1)["choices"][0]["text"]
    first_id = tokens(server, first)[0]
    plain = texts(complete(server))[0]
    assert plain.startswith(first)
    for bias in ({str(first_id): -100}, [[first_id, -100]], [[first_id, False]], [[first, False]],
                 {first: -100}, [[first, -50], [first_id, -50]]):
        steered = complete(server, max_tokens=1, logit_bias=bias)["choices"][0]["text"]
        assert steered != first, bias
    # chat takes the same forms; a bias toward a token makes it the answer
    forced = post(server, "/v1/chat/completions", {
        "model": ENGINE, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 1,
        "temperature": 0, "logit_bias": [[" banana", 100]]})
    assert forced.status_code == 200 and forced.json()["choices"][0]["message"]["content"] == " banana"
    for bias, param in (([[10**9, 1]], "logit_bias"), ({"999999999": 1}, "logit_bias"),
                        ([[1, True]], "logit_bias"), ([["x" * 2000, 1]], "logit_bias")):
        refused = post(server, "/v1/completions", {"model": ENGINE, "prompt": PROMPT, "logit_bias": bias})
        assert refused.status_code == 400 and refused.json()["error"]["param"].startswith(param), bias


def test_mixed_prompts_equal_their_token_ids(server: ServerProcess) -> None:
    head, tail = tokens(server, PROMPT, add_special=True), tokens(server, " Paris and the capital of")
    whole = complete(server, prompt=[*head, *tail], max_tokens=6)
    for mixed in ([*head, " Paris and the capital of"], [PROMPT, *tail]):
        result = complete(server, prompt=mixed, max_tokens=6)
        assert texts(result) == texts(whole), mixed
        assert result["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"] == len(head) + len(tail)
    several = complete(server, prompt=[[*head, " Paris"], "Hello", [*head, *tail], [head[0], "Hi", 235]],
                       max_tokens=2)
    assert [choice["index"] for choice in several["choices"]] == [0, 1, 2, 3]
    # batched beside the others, prompt 2 is the prompt of its ids (up to a near tie)
    alone = complete(server, prompt=[*head, *tail], max_tokens=2, logprobs=TOP_LOGPROBS)
    assert_same_or_near_tie(legacy_steps(alone["choices"][0]["logprobs"]), several["choices"][2]["text"])
    echoed = complete(server, prompt=[*head, " Paris"], max_tokens=0, echo=True, logprobs=0)
    assert echoed["choices"][0]["text"].endswith(PROMPT + " Paris")
    for prompt in ([["a", "b"]], [[[1]]], [1, [2]], [1.5, "a"], [head[0], None], [10**12, "a"],
                   [head[0], *["a"] * 1025], [[1, [[[[[[[[[["deep"]]]]]]]]]]]]):
        refused = post(server, "/v1/completions", {"model": ENGINE, "prompt": prompt})
        assert refused.status_code == 400 and refused.json()["error"]["param"].startswith("prompt"), prompt
    unknown = post(server, "/v1/completions", {"model": ENGINE, "prompt": [10**6, "a"]})
    assert unknown.status_code == 400  # the engine checks the ids of a mixed prompt too
    assert post(server, "/health/live", {}).status_code in (200, 405)


def create_engine(server: ServerProcess, engine_id: str, path: Path, **fields: Any) -> httpx.Response:
    return post(server, "/engines", {"engine_id": engine_id, "model_path": str(path), "n_ctx": 512,
                                     "n_parallel": 2, **fields})


def test_gguf_sampling_keys_and_engine_defaults(server: ServerProcess, instruct_model_path: Path,
                                                tmp_path: Path) -> None:
    sampled = with_metadata(instruct_model_path, tmp_path / "sampled.gguf", {
        "general.sampling.temp": 0.0, "general.sampling.top_k": 20, "general.sampling.top_p": 0.8})
    created = create_engine(server, "sampled", sampled)
    try:
        assert created.status_code == 201, created.text
        status = httpx.get(f"{server.base_url}/engines/sampled").json()
        for body in (created.json(), status):
            assert body["sampling_defaults"] == {
                "temperature": 0.0, "top_p": pytest.approx(0.8), "top_k": 20, "min_p": 0.0,
                "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": None}
            assert body["sampling_defaults_source"]["temperature"] == "gguf"
            assert body["sampling_defaults_source"]["min_p"] == "request"
        # no temperature in the request: the GGUF's 0 (greedy), whatever the seed
        greedy = texts(complete(server, "sampled", max_tokens=8, temperature=0))
        for seed in (1, 2):
            assert texts(complete(server, "sampled", max_tokens=8, temperature=None, seed=seed)) == greedy
        # the request's own values win: at temperature 2 the seeds give different texts
        hot = {tuple(texts(complete(server, "sampled", max_tokens=8, temperature=2.0, top_p=1.0, top_k=0,
                                    seed=seed))) for seed in range(5)}
        assert len(hot) > 1

        created = create_engine(server, "sampled-own", sampled,
                                defaults={"temperature": 1.5, "seed": 11, "repetition_penalty": 1.1})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["sampling_defaults"]["temperature"] == 1.5 and body["sampling_defaults"]["seed"] == 11
        assert body["sampling_defaults"]["repeat_penalty"] == pytest.approx(1.1)
        source = body["sampling_defaults_source"]
        assert (source["temperature"], source["top_k"]) == ("engine", "gguf")
        # no seed in the request: the engine's, so the sampled text repeats
        once = texts(complete(server, "sampled-own", max_tokens=8, temperature=None))
        assert texts(complete(server, "sampled-own", max_tokens=8, temperature=None)) == once
        for defaults in ({"temperature": -1}, {"top_k": 1.5}, {"mirostat": 2}, {"seed": "7"}, [1],
                         {"repeat_penalty": 0}):
            refused = create_engine(server, "bad-defaults", sampled, defaults=defaults)
            assert refused.status_code == 400, defaults
            assert refused.json()["error"]["param"].startswith("defaults"), refused.text
    finally:
        for engine_id in ("sampled", "sampled-own"):
            httpx.delete(f"{server.base_url}/engines/{engine_id}", timeout=120)
    gemma = httpx.get(f"{server.base_url}/engines/{ENGINE}").json()
    assert gemma["sampling_defaults_source"]["temperature"] == "request"  # no general.sampling keys


@pytest.fixture(scope="module")
def until_the_end(instruct_model_path: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServerProcess]:
    """The smallest model and context: a request without max_tokens runs to its end."""
    running = start_server(instruct_model_path, tmp_path_factory.mktemp("max_tokens") / "server.log",
                           "--max-tokens-default", "none", "--n-ctx", "128", "--parallel", "1",
                           "--threads", "1")  # one thread: no spinning against a busy machine
    yield running
    stop_server(running)


def test_max_tokens_default_none_runs_to_the_end_of_the_context(until_the_end: ServerProcess) -> None:
    # the context libllama made of --n-ctx 128 (it rounds up to its padding)
    n_ctx = httpx.get(f"{until_the_end.base_url}/v1/models/{ENGINE}").json()["context_length"]
    assert n_ctx >= 128
    result = complete(until_the_end, max_tokens=None, ignore_eos=True)
    usage = result["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == n_ctx
    assert result["choices"][0]["finish_reason"] == "length"
    own = complete(until_the_end, max_tokens=3, ignore_eos=True)  # the request's own value wins
    assert own["usage"]["completion_tokens"] == 3
    chat = post(until_the_end, "/v1/chat/completions", {
        "model": ENGINE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "ignore_eos": True})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 2
