"""Logprobs, n > 1 and echo through the HTTP API, with the official openai SDK."""
from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from ..server_process import ENGINE, ServerProcess

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=3)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy: the best token
        assert bytes(entry.bytes or []).decode("utf-8", "replace") == entry.token


def test_chat_logprobs_stream_per_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Count: one, two,"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=1, stream=True)
    text, tokens = "", ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        if choice.logprobs and choice.logprobs.content:
            tokens += "".join(entry.token for entry in choice.logprobs.content)
    assert text and tokens == text


def test_chat_without_logprobs_has_null_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert completion.choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_refused(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
        "model": ENGINE, "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}, timeout=30)
    assert response.status_code == 400


def test_completion_logprobs_legacy_shape(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=ENGINE, prompt="The sky is", max_tokens=5,
                                           temperature=0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert "".join(logprobs.tokens) == completion.choices[0].text
    starts = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    assert logprobs.text_offset == starts
    assert logprobs.top_logprobs is not None and all(len(top) == 2 for top in logprobs.top_logprobs)


def test_loglikelihood_request_as_lm_eval_sends_it(server: ServerProcess) -> None:
    """lm-eval's local-completions loglikelihood: echo, max_tokens 0, logprobs 1."""
    response = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": "The capital of France is Paris", "max_tokens": 0, "echo": True,
        "logprobs": 1, "temperature": 0}, timeout=60)
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["text"] == "The capital of France is Paris"
    logprobs = choice["logprobs"]
    assert logprobs["token_logprobs"][0] is None
    assert all(value is not None and value <= 0 for value in logprobs["token_logprobs"][1:])
    assert "".join(logprobs["tokens"]) == choice["text"]
    is_greedy = [max(top.values()) == value for top, value in
                 zip(logprobs["top_logprobs"][1:], logprobs["token_logprobs"][1:], strict=True)]
    assert len(is_greedy) == len(logprobs["tokens"]) - 1
    assert response.json()["usage"]["completion_tokens"] == 0


def test_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Write a word."}], max_tokens=5,
        temperature=1.5, seed=3, n=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert completion.usage is not None
    prompt_alone = client.chat.completions.create(
        model=ENGINE, messages=[{"role": "user", "content": "Write a word."}], max_tokens=1)
    assert prompt_alone.usage is not None
    assert completion.usage.prompt_tokens == prompt_alone.usage.prompt_tokens  # counted once
    assert 3 <= completion.usage.completion_tokens <= 3 * 5  # every choice's tokens


def test_n_choices_stream_interleaves_by_index(client: openai.OpenAI) -> None:
    stream = client.completions.create(model=ENGINE, prompt="Once upon a time", max_tokens=6,
                                       temperature=1.0, seed=5, n=2, stream=True)
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert set(finishes) == {0, 1}
    whole = client.completions.create(model=ENGINE, prompt="Once upon a time", max_tokens=6,
                                      temperature=1.0, seed=5, n=2)
    assert len(whole.choices) == 2


def test_n_above_the_slots_is_refused(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}/v1/completions", json={
        "model": ENGINE, "prompt": "Hi", "max_tokens": 2, "n": 64}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"


def test_prompt_logprobs_sum_to_a_likelihood(server: ServerProcess) -> None:
    """A likely continuation scores higher than an unlikely one (what multiple-choice evals
    compare)."""
    def loglikelihood(text: str) -> float:
        body = httpx.post(f"{server.base_url}/v1/completions", json={
            "model": ENGINE, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0},
            timeout=60).json()
        return sum(v for v in body["choices"][0]["logprobs"]["token_logprobs"][1:] if v is not None)

    likely = loglikelihood("One, two, three, four, five")
    unlikely = loglikelihood("One, two, three, four, banana")
    assert likely > unlikely and math.isfinite(likely)


def test_routes_without_the_v1_prefix(server: ServerProcess) -> None:
    """The paths llama-server's clients use."""
    base = server.base_url
    models = httpx.get(f"{base}/models", timeout=30).json()
    assert models == httpx.get(f"{base}/v1/models", timeout=30).json()
    chat = httpx.post(f"{base}/chat/completions", json={
        "model": ENGINE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}, timeout=60)
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    completion = httpx.post(f"{base}/completions", json={"model": ENGINE, "prompt": "Hi", "max_tokens": 2},
                            timeout=60)
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"


def test_a_greedy_prompt_repeated_in_one_request_gives_one_text(server: ServerProcess) -> None:
    """Issue 27: prompt [p, p] gave two different greedy texts in 1-5 of 10 requests (the
    second found the first's prefix cached and ran its last rows on other kernels). A
    repeated prompt of a greedy request now runs once and answers for every repeat."""
    prompt = "Repeated prompt test: the largest planet of the solar system is"
    body = {"model": ENGINE, "prompt": [prompt, "Another prompt:", prompt], "max_tokens": 24,
            "temperature": 0, "ignore_eos": True}
    single = httpx.post(f"{server.base_url}/v1/completions", timeout=120,
                        json={**body, "prompt": prompt}).json()["usage"]["prompt_tokens"]
    for _ in range(5):
        answer = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120).json()
        texts = [choice["text"] for choice in sorted(answer["choices"], key=lambda c: c["index"])]
        assert texts[0] == texts[2] and len(texts) == 3
        assert answer["usage"]["completion_tokens"] == 3 * 24  # every choice answered in full
        assert answer["usage"]["prompt_tokens"] > 2 * single
    with httpx.stream("POST", f"{server.base_url}/v1/completions", timeout=120,
                      json={**body, "stream": True}) as response:
        streamed = ["", "", ""]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    streamed[choice["index"]] += choice["text"]
    assert streamed[0] == streamed[2] and streamed[0]
