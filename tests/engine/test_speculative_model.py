"""Speculative decoding and prefix sharing with the real model: speculation never changes
what a request generates, the switches work both ways, a prefix borrowed from another slot
gives the cold run's output."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, SamplingParams, TokenEvent
from kolosal.engine.request import SPECULATE_ON
from kolosal.llama import Model

from ..near_tie import TOP_LOGPROBS, assert_same_or_near_tie, engine_steps
from .helpers import greedy, loaded, run

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
        "single step. All that glitters is not gold. Actions speak louder than words. Beauty is in "
        "the eye of the beholder. ")
# The model echoes the text: its continuation can be read from the prompt.
ECHO = "Repeat the text exactly.\nText: " + TEXT + "\nRepeat: " + TEXT[:40]


async def speculated(engine: AsyncEngine, ids: list[int], params: SamplingParams) -> tuple[str, int, int]:
    """(text, completion tokens, draft tokens accepted during the run)."""
    before = engine.stats()["spec_accepted_tokens"]
    result = await run(engine, ids, params)
    assert result.finish is not None
    return result.text, result.finish.usage.completion_tokens, engine.stats()["spec_accepted_tokens"] - before


async def test_speculative_greedy_generates_what_plain_greedy_does(registry: EngineRegistry,
                                                                   model_path: Path) -> None:
    """Two-token drafts keep every step under 4 rows, where the CPU kernels give a row the
    logits of a one-row decode (README, Known limits); its own engine, for the same KV
    layout in both runs."""
    async with loaded(registry, EngineConfig("greedy-spec", str(model_path), n_ctx=1024,
                                             n_parallel=2)) as engine:
        ids = await engine.tokenize(ECHO)
        await run(engine, ids, greedy(1))  # the same cache state (the prompt cached) for both runs
        plain, plain_count, none = await speculated(engine, ids, greedy(64, ignore_eos=True, speculative=0))
        spec, spec_count, accepted = await speculated(engine, ids, greedy(64, ignore_eos=True, speculative=2))
    assert none == 0 and accepted > 0  # the per-request switch, both ways
    assert spec == plain and spec_count == plain_count == 64
    assert "journey of a thousand miles" in spec


async def test_seeded_sampling_draws_the_same_tokens_with_speculation(registry: EngineRegistry,
                                                                     model_path: Path) -> None:
    """A sampled draft token is accepted iff the request's own sampler chain draws it from
    that row (the acceptance rule for a deterministic draft), so every emitted token costs
    one draw and one penalty update, as without speculation: a seeded request generates
    the same text either way. One-token drafts keep every batch under 4 rows, where
    libllama's CPU kernels give bitwise the logits of a one-row decode (from 4 rows on a
    gemm kernel moves them by up to ~0.9: README, Known limits). Its own engine: the KV
    cell order of a long-shared one (README, Known limits) would make the two runs differ
    in ways speculation has no part in."""
    config = EngineConfig("seeded-spec", str(model_path), n_ctx=1024, n_parallel=2)
    async with loaded(registry, config) as engine:
        ids = await engine.tokenize(ECHO)
        await run(engine, ids, greedy(1))

        def params(speculative: int) -> SamplingParams:
            return SamplingParams(max_tokens=48, temperature=0.7, top_p=0.95, repeat_penalty=1.05,
                                  seed=11, ignore_eos=True, speculative=speculative)

        plain, _, _ = await speculated(engine, ids, params(0))
        spec, _, accepted = await speculated(engine, ids, params(1))
    assert accepted > 0 and spec == plain


async def test_a_stop_string_inside_an_accepted_draft(registry: EngineRegistry, model_path: Path) -> None:
    async with loaded(registry, EngineConfig("stop-spec", str(model_path), n_ctx=1024,
                                             n_parallel=2)) as engine:
        ids = await engine.tokenize(ECHO)
        await run(engine, ids, greedy(1))
        plain = await run(engine, ids, greedy(64, stop=("glitters",), speculative=0, logprobs=TOP_LOGPROBS))
        reference = engine_steps(plain.logprobs, engine.token_piece)
        spec = await run(engine, ids, greedy(64, stop=("glitters",), speculative=2))
    assert spec.finish is not None and spec.finish.finish_reason.value == "stop"
    # verified draft rows are another batch shape: equal, or parted at a near tie
    assert_same_or_near_tie(reference, spec.text, "speculated vs plain")
    if spec.text == plain.text:
        assert spec.text.endswith("All that ")
        assert plain.finish is not None and spec.finish.usage == plain.finish.usage


async def test_the_engine_switch(registry: EngineRegistry, model_path: Path) -> None:
    config = EngineConfig("no-spec", str(model_path), n_ctx=1024, n_parallel=2, spec_draft_max=0)
    async with loaded(registry, config) as engine:
        ids = await engine.tokenize(ECHO)
        off, _, none = await speculated(engine, ids, greedy(48, ignore_eos=True))
        on, _, accepted = await speculated(engine, ids, greedy(48, ignore_eos=True, speculative=SPECULATE_ON))
        stats = engine.stats()
    assert none == 0 and accepted > 0, (stats, on, off)


SYSTEM = ("You are a careful assistant. Answer briefly, in plain words, and never invent facts. "
          "When the user lists things, continue the list in the same format.\n")
QUESTION = "Count: 1, 2, 3, 4, 5,"


async def test_a_prefix_shared_from_a_running_slot_gives_the_cold_output(
        registry: EngineRegistry, model_path: Path, llama_model: Model) -> None:
    system_ids = llama_model.vocab.tokenize(SYSTEM)
    ids = llama_model.vocab.tokenize(SYSTEM + QUESTION)
    other = llama_model.vocab.tokenize(SYSTEM + "Colours: red, green,")
    assert ids[:len(system_ids)] == system_ids == other[:len(system_ids)]
    assert ids[len(system_ids)] != other[len(system_ids)]
    # n_batch = the shared prefix: the cold prefill splits where the shared cells end.
    def config(engine_id: str) -> EngineConfig:
        return EngineConfig(engine_id, str(model_path), n_ctx=1024, n_parallel=4, n_batch=len(system_ids))

    async with loaded(registry, config("cold")) as cold:
        expected = await run(cold, ids, greedy(12, speculative=0, logprobs=TOP_LOGPROBS))
        reference = engine_steps(expected.logprobs, cold.token_piece)
    async with loaded(registry, config("prefix-shared")) as engine:
        started, done = asyncio.Event(), asyncio.Event()

        async def neighbour() -> None:
            params = greedy(400, ignore_eos=True, speculative=0)
            async for _, event in engine.generate(other, params, "other"):
                if isinstance(event, TokenEvent):
                    started.set()  # its prompt is computed: the system prompt is in its cells
                if done.is_set():
                    break

        task = asyncio.create_task(neighbour())
        await asyncio.wait_for(started.wait(), 120)
        copies = engine.stats()["prefix_copies"]
        result = await run(engine, ids, greedy(12, speculative=0))
        done.set()
        await task
        assert engine.stats()["prefix_copies"] == copies + 1
    assert result.finish is not None and result.finish.usage.cached_tokens == len(system_ids)
    assert_same_or_near_tie(reference, result.text, "prefix shared from a running slot vs cold")


async def test_padding_rows_on_the_real_model(registry: EngineRegistry, model_path: Path) -> None:
    """Three sequences decode in 3-row steps; once 3 rows are timed, the next steps try a
    4th (a one-token draft) to time it (whether padding then stays depends on this CPU's
    kernels). Every request still gets exactly its tokens, and no padding cell is left in
    libllama's KV: each slot's sequence ends where its cached tokens do."""
    config = EngineConfig("padding", str(model_path), n_ctx=1024, n_parallel=3, spec_draft_max=0)
    async with loaded(registry, config) as engine:
        prompts = ["The capital of France is", "Water boils at", "Once upon a time"]
        results = await asyncio.gather(*(run(engine, p, greedy(24, ignore_eos=True), f"p{i}")
                                         for i, p in enumerate(prompts)))
        stats = engine.stats()
        assert all(r.finish is not None and r.finish.usage.completion_tokens == 24 for r in results)
        assert stats["padding_rows"] >= 2 and stats["spec_draft_tokens"] == 0
        assert 0 <= stats["padding_accepted_tokens"] <= stats["padding_rows"]
        scheduler, context = engine._thread.scheduler, engine._runner.context  # type: ignore[union-attr]
        for slot in scheduler.kv.slots.slots:
            assert not slot.busy
            assert len(slot.cached_ids) > 24 and context.seq_pos_max(slot.seq_id) == len(slot.cached_ids) - 1
    async with loaded(registry, EngineConfig("no-padding", str(model_path), n_ctx=1024, n_parallel=3,
                                             row_padding="off")) as engine:
        await asyncio.gather(*(run(engine, p, greedy(24, ignore_eos=True)) for p in prompts))
        assert engine.stats()["padding_rows"] == 0
