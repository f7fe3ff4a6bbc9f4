"""--deterministic (issue 14, item 6): greedy and seeded outputs independent of what else
is in the batch and of how much of the prompt the prefix cache held.

A real server started with --deterministic serves the same greedy chat cold and alone,
cold beside 7 other requests, after a partially cached prefix and with its whole prompt
cached:
the tokens and every log-probability are bitwise identical. So are the two choices of a
greedy n=2 request, two identical prompts in one completion request, and a seeded sample
alone and beside others. (Without the mode they differ at near-ties: README, Known limits;
benchmarks/determinism.py measures which kernels move which logits.)

Each comparison that involves other requests runs on a fresh engine: what the mode does not
cover is a sequence's KV cells out of position order, which holes left by earlier requests
in the cache can cause (README, Known limits)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kolosal.engine import EngineConfig
from kolosal.engine.memory import estimate_memory

from ..server_process import ENGINE, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

SYSTEM = ("You are a patient assistant who explains how things work in plain words, with one "
          "concrete example for every idea, and who never uses jargon without explaining it.")
QUESTION = "How does a refrigerator keep food cold? Explain it in a few sentences."
WARM_QUESTION = "How does a bicycle stay upright while moving?"
OTHERS = ["Write a story about a lighthouse keeper.", "List some facts about the ocean.",
          "Describe a busy market in the morning, with its sounds, its smells and its people, "
          "from the first stall that opens to the last customer of the day.",
          "Explain how rainbows form.", "What makes a good cup of coffee?",
          "Tell me about the history of bicycles, from the first wooden ones to today.",
          "A recipe for bread: flour, water, salt and yeast, then"]
TOKENS = 32


def test_the_mode_resolves_to_batch_invariant_settings(model_path: Path) -> None:
    config = EngineConfig("d", str(model_path), n_ctx=4096, n_parallel=8, deterministic=True)
    assert (config.resolved_flash_attn, config.resolved_cache_types) == ("on", ("f16", "q8_0"))
    assert not config.model_params().use_extra_bufts
    params = config.context_params()
    assert params.batch_invariant
    assert (params.type_k, params.type_v, params.flash_attn) == ("f16", "q8_0", "on")
    plain = EngineConfig("p", str(model_path), n_ctx=4096, n_parallel=8)
    assert plain.model_params().use_extra_bufts and not plain.context_params().batch_invariant
    values = 4096 * 18 * 256  # cells x layers x KV dims, of K and of V
    assert estimate_memory(config).kv_cache == int(values * (2 + 34 / 32))  # V in q8_0
    quantized = EngineConfig("q", str(model_path), deterministic=True, cache_type_k="q4_0")
    assert quantized.resolved_cache_types == ("q4_0", "f16")  # K quantized already
    with pytest.raises(ValueError, match="flash attention"):
        EngineConfig("d", str(model_path), deterministic=True, flash_attn="off")


@pytest.fixture(scope="module")
def deterministic_server(model_path: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("deterministic") / "server.log",
                           "--deterministic")
    yield running
    stop_server(running)


def chat_body(model: str, question: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": question}],
            "max_tokens": TOKENS, "temperature": 0.0, "ignore_eos": True, "logprobs": True,
            "top_logprobs": 3, **extra}


async def chat(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def beside_others(client: httpx.AsyncClient, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` sent together with 7 other requests of other lengths (8 slots: they share
    the steps, prefill chunks and decode rows alike)."""
    others = [client.post("/v1/completions", timeout=600, json={
        "model": model, "prompt": prompt, "max_tokens": 16 + 8 * index, "ignore_eos": True,
        "temperature": 0.0}) for index, prompt in enumerate(OTHERS)]
    results = await asyncio.gather(chat(client, body), *others)
    assert all(r.status_code == 200 for r in results[1:])
    return results[0]


def answer(result: dict[str, Any]) -> tuple[str, list[Any]]:
    """The text and every token's log-probabilities (exact floats)."""
    choice = result["choices"][0]
    return choice["message"]["content"], choice["logprobs"]["content"]


def cached(result: dict[str, Any]) -> int:
    return int(result["usage"]["prompt_tokens_details"]["cached_tokens"])


@contextlib.asynccontextmanager
async def fresh_engine(client: httpx.AsyncClient, model_path: Path, engine_id: str) -> AsyncIterator[str]:
    """A new deterministic engine (an empty KV cache) for the block, deleted after it."""
    created = await client.post("/engines", timeout=600, json={
        "engine_id": engine_id, "model_path": str(model_path), "n_ctx": 4096, "n_parallel": 8,
        "deterministic": True})
    assert created.status_code == 201, created.text
    try:
        yield engine_id
    finally:
        await client.delete(f"/engines/{engine_id}", timeout=600)


async def test_greedy_chat_is_the_same_alone_beside_others_and_cached(
        deterministic_server: ServerProcess, model_path: Path) -> None:
    async with httpx.AsyncClient(base_url=deterministic_server.base_url) as client:
        # the server's own engine (--deterministic): cold alone, then with the prompt cached
        cold_alone = await chat(client, chat_body(ENGINE, QUESTION))
        cached_alone = await chat(client, chat_body(ENGINE, QUESTION))
        async with fresh_engine(client, model_path, "beside") as engine:  # cold, beside 7 others
            cold_beside = await beside_others(client, engine, chat_body(engine, QUESTION))
        async with fresh_engine(client, model_path, "partial") as engine:
            await chat(client, chat_body(engine, WARM_QUESTION))  # caches the system prompt
            partial_alone = await chat(client, chat_body(engine, QUESTION))  # prefill split there
    prompt_tokens = cold_alone["usage"]["prompt_tokens"]
    assert cached(cold_alone) == cached(cold_beside) == 0
    assert cached(cached_alone) == prompt_tokens - 1
    assert 0 < cached(partial_alone) < prompt_tokens - 1
    reference = answer(cold_alone)
    assert len(reference[1]) == TOKENS
    for other in (cached_alone, cold_beside, partial_alone):
        assert answer(other) == reference


async def test_twins_in_one_request_are_identical(deterministic_server: ServerProcess,
                                                  model_path: Path) -> None:
    async with httpx.AsyncClient(base_url=deterministic_server.base_url) as client:
        async with fresh_engine(client, model_path, "twins-chat") as engine:
            two = await chat(client, chat_body(engine, QUESTION, n=2))
        async with fresh_engine(client, model_path, "twins-text") as engine:
            response = await client.post("/v1/completions", timeout=600, json={
                "model": engine, "prompt": [OTHERS[2], OTHERS[2]], "max_tokens": TOKENS,
                "ignore_eos": True, "temperature": 0.0, "logprobs": 3})
    assert response.status_code == 200, response.text
    first, second = two["choices"]
    assert (first["message"], first["logprobs"]) == (second["message"], second["logprobs"])
    texts = response.json()["choices"]
    assert (texts[0]["text"], texts[0]["logprobs"]) == (texts[1]["text"], texts[1]["logprobs"])


async def test_a_seeded_sample_is_the_same_alone_and_beside_others(
        deterministic_server: ServerProcess, model_path: Path) -> None:
    body = chat_body("", "Invent a name for a new colour and describe it.", temperature=1.0, seed=1234)
    async with httpx.AsyncClient(base_url=deterministic_server.base_url) as client:
        async with fresh_engine(client, model_path, "seeded-alone") as engine:
            alone = await chat(client, {**body, "model": engine})
        async with fresh_engine(client, model_path, "seeded-beside") as engine:
            beside = await beside_others(client, engine, {**body, "model": engine})
    assert answer(alone) == answer(beside)


SWITCH_PROBE = """
import os, sys
import numpy as np
from kolosal.llama import Batch, Context, ContextParams, Model, ModelParams
model = Model(sys.argv[1], ModelParams(n_gpu_layers=0, use_extra_bufts=False))
def decode(params):
    with Context(model, params) as context, Batch(8) as batch:
        batch.fill(np.array([2]), np.array([0]), np.array([0]), np.array([1]))
        assert context.decode(batch) == 0
first, second = sys.argv[2] == "invariant", sys.argv[3] == "invariant"
decode(ContextParams(n_ctx=64, n_batch=8, n_seq_max=1, flash_attn="on", batch_invariant=first))
print(os.environ.get("GGML_CPU_TILED_MM"))
try:
    decode(ContextParams(n_ctx=64, n_batch=8, n_seq_max=1, flash_attn="on", batch_invariant=second))
    print("ok")
except RuntimeError as error:
    print("refused:", error)
"""


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("invariant", "plain", ["0", "ok"]),      # the switch is set for the whole process
    ("plain", "invariant", ["None", "refused: batch-invariant kernels need GGML_CPU_TILED_MM=0"]),
])
def test_the_tiled_matmul_switch_is_set_before_the_first_decode_or_refused(
        model_path: Path, first: str, second: str, expected: list[str]) -> None:
    env = {key: value for key, value in os.environ.items() if key != "GGML_CPU_TILED_MM"}
    done = subprocess.run([sys.executable, "-c", SWITCH_PROBE, str(model_path), first, second], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == expected[0] and lines[1].startswith(expected[1])
