"""Our logprobs against llama-server's ``n_probs`` on the same prompt, model and KV layout.

Runs where llama-server is built (``python build_llama.py --with-server``); skipped with
that reason elsewhere. Greedy on both sides; the same prompt token ids; llama-server gets
our KV layout (one unified pool, full-size SWA cache). Neither reuses a cached prefix: a
prompt split at another length runs its last rows on other CPU kernels (README, Known limits)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import httpx
import pytest

from benchmarks.servers import ServerSettings, find_llama_server, llama_server_spec, running

from ..near_tie import NEAR_TIE_LOGITS, TOP_LOGPROBS, assert_same_or_near_tie, legacy_steps
from ..server_process import ENGINE, ServerProcess

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

LLAMA_SERVER = find_llama_server()
PROMPTS = ["The three primary colors are", "def fibonacci(n):", "Monday, Tuesday, Wednesday,"]


@pytest.mark.skipif(LLAMA_SERVER is None, reason="llama-server is not built (python build_llama.py "
                                                  "--with-server)")
def test_greedy_logprobs_agree_with_llama_server(server: ServerProcess, model_path: Path) -> None:
    assert LLAMA_SERVER is not None
    settings = ServerSettings(model_path, threads=os.cpu_count() or 1, n_ctx=4096, parallel=8,
                              peer_kv_unified=True)  # the test server's shape (server_process.py)
    spec = llama_server_spec(settings, LLAMA_SERVER)
    spec = dataclasses.replace(spec, command=(*spec.command, "--swa-full"))
    compared = 0
    with running(spec) as peer_url:
        for prompt in PROMPTS:
            ids = httpx.post(f"{server.base_url}/tokenize", json={"content": prompt, "add_special": True},
                             timeout=30).json()["tokens"]
            ours = httpx.post(f"{server.base_url}/v1/completions", json={
                "model": ENGINE, "prompt": ids, "max_tokens": 8, "temperature": 0, "logprobs": 3,
                "ignore_eos": True, "cache_prompt": False}, timeout=120).json()["choices"][0]["logprobs"]
            theirs = httpx.post(f"{peer_url}/completion", json={
                "prompt": ids, "n_predict": 8, "temperature": 0, "n_probs": 3, "ignore_eos": True,
                "cache_prompt": False}, timeout=120).json()["completion_probabilities"]
            for position, (token, logprob, entry) in enumerate(
                    zip(ours["tokens"], ours["token_logprobs"], theirs, strict=False)):
                if token != entry["token"]:  # only a near tie may flip: what follows is another text
                    gap = logprob - ours["top_logprobs"][position].get(entry["token"], float("-inf"))
                    assert gap < NEAR_TIE_LOGITS, (prompt, position, token, entry["token"], gap)
                    break
                assert logprob == pytest.approx(entry["logprob"], abs=0.01), (prompt, position)
                compared += 1
    assert compared >= 12


# llama-server's request forms (tools/server): mixed token/text prompts and logit_bias pairs
# with token ids or texts, false for never. Each case: (prompt, logit_bias).
FORM_CASES: list[tuple[object, object]] = [
    (["The three primary", " colors are"], None),     # texts: a prompt each, both with BOS
    ("TOKENS", None),                                   # replaced by [*ids, " and then"]
    ("The three primary colors are", [[" red", False], [" Red", -100]]),
    ("The three primary colors are", {" red": -100, " blue": 5}),
    ("Monday, Tuesday, Wednesday,", [[" Thursday", False]]),
]


@pytest.mark.skipif(LLAMA_SERVER is None, reason="llama-server is not built (python build_llama.py "
                                                  "--with-server)")
def test_llama_server_forms_read_as_llama_server_reads_them(server: ServerProcess, model_path: Path) -> None:
    """The same prompt tokens (usage) and, greedy, the same text up to a near tie."""
    assert LLAMA_SERVER is not None
    settings = ServerSettings(model_path, threads=os.cpu_count() or 1, n_ctx=4096, parallel=8,
                              peer_kv_unified=True)
    spec = llama_server_spec(settings, LLAMA_SERVER)
    spec = dataclasses.replace(spec, command=(*spec.command, "--swa-full"))
    ids = httpx.post(f"{server.base_url}/tokenize", json={"content": "Monday, Tuesday", "add_special": True},
                     timeout=30).json()["tokens"]
    with running(spec) as peer_url:
        for prompt, bias in FORM_CASES:
            body: dict[str, object] = {
                "prompt": [*ids, " and then", 235] if prompt == "TOKENS" else prompt, "max_tokens": 4,
                "temperature": 0, "cache_prompt": False, **({"logit_bias": bias} if bias else {})}
            ours = httpx.post(f"{server.base_url}/v1/completions",
                              json={"model": ENGINE, "logprobs": TOP_LOGPROBS, **body}, timeout=120).json()
            theirs = httpx.post(f"{peer_url}/v1/completions", json=body, timeout=120).json()
            assert len(ours["choices"]) == len(theirs["choices"]), body
            if len(ours["choices"]) == 1:  # llama-server's usage of several prompts counts one
                assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"], body
            for mine, peer in zip(sorted(ours["choices"], key=lambda c: c["index"]),
                                  sorted(theirs["choices"], key=lambda c: c["index"]), strict=True):
                assert_same_or_near_tie(legacy_steps(mine["logprobs"]), peer["text"], str(body))
