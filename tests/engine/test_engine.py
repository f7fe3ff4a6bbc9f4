"""The continuous-batching engine with the real model: correctness under concurrency."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kolosal.engine import (
    AsyncEngine,
    ContextLengthExceededError,
    EngineConfig,
    EngineOverloadedError,
    EngineRegistry,
    FinishEvent,
    SamplingParams,
    TokenEvent,
)
from kolosal.llama import Model, ModelParams

from ..near_tie import TOP_LOGPROBS, Step, assert_same_or_near_tie, engine_steps
from ..waiting import until_async
from .helpers import greedy, loaded, run, wait_until_idle

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The three primary colors are", "My favourite recipe for bread",
           "In 1969, astronauts", "The quick brown fox", "Water boils at"]


# libllama's CPU kernels are not bitwise batch-invariant: a row's logits can differ in the
# last bits with the batch around it and the KV cells it sits in, which flips greedy picks
# at near-ties (e.g. "The capital of France is" -> "... It is the largest/capital ...").
# llama-server behaves the same. These prompts had no near-tie in their first 16 tokens on
# the CPUs they were picked on; other CPUs run other kernels, so a divergence is accepted
# where it is a near tie (tests/near_tie.py) and fails anywhere else.
STABLE_PROMPTS = ["def fibonacci(n):", "In 1969, astronauts", "The quick brown fox", "Water boils at",
                  "1, 2, 3, 4, 5,", "The alphabet: A, B, C,", "Monday, Tuesday, Wednesday,",
                  "import numpy as np\n"]


async def test_eight_concurrent_greedy_requests_match_each_alone(registry: EngineRegistry,
                                                                  model_path: Path) -> None:
    # Fresh engines, so both runs prefill every prompt whole: a prompt served from the
    # prefix cache computes only its last token, another batch shape (README, Known limits).
    def config(engine_id: str) -> EngineConfig:
        return EngineConfig(engine_id, str(model_path), n_ctx=4096, n_parallel=8)

    async with loaded(registry, config("alone")) as engine:
        alone = [await run(engine, p, greedy(16, logprobs=TOP_LOGPROBS)) for p in STABLE_PROMPTS]
        references = [engine_steps(r.logprobs, engine.token_piece) for r in alone]
    async with loaded(registry, config("together")) as engine:
        together = await asyncio.gather(*(run(engine, p, greedy(16), f"c{i}")
                                          for i, p in enumerate(STABLE_PROMPTS)))
    for prompt, reference, result in zip(STABLE_PROMPTS, references, together, strict=True):
        assert_same_or_near_tie(reference, result.text, prompt)
    assert all(r.finish is not None for r in together)


async def test_long_prompt_prefill_is_chunked_while_streams_decode(
        registry: EngineRegistry, model_path: Path) -> None:
    config = EngineConfig("chunked", str(model_path), n_ctx=4096, n_parallel=8, n_batch=64)
    long_prompt = " ".join(f"Item {i}: the number {i} squared is {i * i}." for i in range(60))
    async with loaded(registry, config) as engine:
        long_ids = await engine.tokenize(long_prompt)
        assert len(long_ids) > 600
        expected = await run(engine, long_ids, greedy(8, logprobs=TOP_LOGPROBS))
        reference = engine_steps(expected.logprobs, engine.token_piece)
    async with loaded(registry, config) as engine:  # fresh: no prefix cache from the run above
        await chunked_prefill_beside_streams(engine, long_ids, reference)


async def chunked_prefill_beside_streams(engine: AsyncEngine, long_ids: list[int],
                                         reference: list[Step]) -> None:
    counts = [0, 0, 0, 0]
    long_started = asyncio.Event()
    long_done = asyncio.Event()
    during_prefill = [0, 0, 0, 0]

    async def stream(index: int) -> None:
        params = greedy(400, ignore_eos=True)
        ids = await engine.tokenize(PROMPTS[index])
        async for _, event in engine.generate(ids, params, f"s{index}"):
            if isinstance(event, TokenEvent):
                counts[index] += 1
                if long_started.is_set() and not long_done.is_set():
                    during_prefill[index] += 1
                if counts[index] == 5 and index == 0:
                    asyncio.get_running_loop().call_soon(long_started.set)
            if long_done.is_set():
                break

    async def long_request() -> str:
        await long_started.wait()
        chunks = []
        async for _, event in engine.generate(long_ids, greedy(8), "long"):
            if not long_done.is_set():
                long_done.set()
            assert isinstance(event, (TokenEvent, FinishEvent)), event
            chunks.append(event.text)
        return "".join(chunks)

    results = await asyncio.gather(*(stream(i) for i in range(4)), long_request())
    long_text = results[-1]
    assert isinstance(long_text, str)
    assert_same_or_near_tie(reference, long_text, "the long prompt beside streams")
    # ~600 prompt tokens in chunks of <= 60 beside 4 decode rows: ~10 steps of prefill,
    # and every stream kept getting tokens during them.
    assert all(n >= 5 for n in during_prefill), during_prefill


async def test_stop_string_split_across_tokens(engine: AsyncEngine) -> None:
    baseline = await run(engine, "The capital of France is", greedy(8, logprobs=TOP_LOGPROBS))
    # llama-server's text on the CPUs it was taken on; elsewhere a near tie may part them
    assert_same_or_near_tie(engine_steps(baseline.logprobs, engine.token_piece),
                            " the capital of the country of France.", "baseline vs llama-server")
    # a stop string over three tokens of the baseline: the end of the 2nd, all of the 3rd,
    # the start of the 4th (" capital", " of", " the" -> "al of the" on those CPUs)
    pieces = [engine.token_piece(lp.token).decode() for lp in baseline.logprobs]
    stop = pieces[1][-2:] + pieces[2] + pieces[3][:4]
    result = await run(engine, "The capital of France is", greedy(8, stop=(stop,)))
    assert result.text == pieces[0] + pieces[1][:-2]
    assert result.finish is not None and result.finish.finish_reason.value == "stop"
    assert not any(stop[:2] in chunk for chunk in result.chunks[1:])


async def test_utf8_characters_split_over_byte_tokens_stream_whole(engine: AsyncEngine) -> None:
    result = await run(engine, "𝕳𝕳𝕳𝕳𝕳𝕳𝕳𝕳𝕳", greedy(12))
    assert result.finish is not None and result.finish.usage.completion_tokens == 12
    assert result.text and "\ufffd" not in result.text
    for chunk in result.chunks:
        chunk.encode("utf-8")  # every chunk is whole characters
        assert "\ufffd" not in chunk
    assert set(result.text) == {"𝕳"}  # 12 byte tokens -> 3 four-byte characters
    assert len(result.chunks) == 3


async def test_cancel_mid_generation_frees_the_slot(engine: AsyncEngine) -> None:
    cancelled_before = engine.stats()["requests_cancelled"]
    ids = await engine.tokenize("Count slowly from one to a thousand:")
    generator = engine.generate(ids, greedy(500, ignore_eos=True), "cancel-me")
    received = 0
    async for _event in generator:
        received += 1
        if received == 3:
            break
    await generator.aclose()
    stats = await wait_until_idle(engine)
    assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
    assert stats["requests_cancelled"] == cancelled_before + 1


async def test_shared_prefix_is_reused(engine: AsyncEngine) -> None:
    shared = " ".join(f"Fact {i}: cats have {i} whiskers on day {i}." for i in range(20))
    hits_before = engine.stats()["cache_hits"]
    first = await run(engine, shared + " Question one: how many", greedy(4))
    second = await run(engine, shared + " Question two: what is", greedy(4))
    assert first.finish is not None and second.finish is not None
    assert first.finish.usage.prompt_tokens > 200
    assert second.finish.usage.cached_tokens >= 200
    assert engine.stats()["cache_hits"] > hits_before


async def test_queue_full_is_refused_at_once(registry: EngineRegistry, model_path: Path) -> None:
    config = EngineConfig("tiny-queue", str(model_path), n_ctx=512, n_parallel=1, max_queue=1)
    async with loaded(registry, config) as engine:
        ids = await engine.tokenize("Tell me a long story")
        running = engine.generate(ids, greedy(200, ignore_eos=True), "a")
        await running.__anext__()  # admitted and decoding: the queue is empty again
        queued = engine.generate(ids, greedy(4), "b")
        queued_task = asyncio.create_task(queued.__anext__())
        await until_async(lambda: engine.stats()["queue_depth"] == 1, what="b queued")
        with pytest.raises(EngineOverloadedError):
            await engine.generate(ids, greedy(4), "c").__anext__()
        await running.aclose()
        await queued_task
        await queued.aclose()


async def test_context_limits(registry: EngineRegistry, model_path: Path) -> None:
    config = EngineConfig("small-ctx", str(model_path), n_ctx=256, n_parallel=2)
    async with loaded(registry, config) as engine:
        with pytest.raises(ContextLengthExceededError):
            await engine.generate(list(range(10, 300)), greedy(4), "too-long").__anext__()
        ids = await engine.tokenize("Write the numbers from one to one thousand:")
        result = await run(engine, ids, greedy(10_000, ignore_eos=True))
    assert result.finish is not None and result.finish.finish_reason.value == "length"
    assert result.finish.usage.prompt_tokens + result.finish.usage.completion_tokens == engine.info.n_ctx


async def test_seed_reproducibility(engine: AsyncEngine) -> None:
    """Same seed + params + prompt => same text. Runs are compared under the same cache
    state (the warm-up leaves the prompt cached for both). Beside other requests the batch
    shape changes libllama's kernel choice (gemm vs gemv on repacked weights), which moves
    logits in the last bits; a draw right at a probability boundary can then differ. That
    limit is documented in the README; here we check what must hold exactly."""
    prompt = "Write a poem about the sea:"
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=1234)
    await run(engine, prompt, params)  # warm-up: the prompt is now a cached prefix
    first = await run(engine, prompt, params)
    second = await run(engine, prompt, params)
    assert first.text == second.text and first.finish is not None
    assert first.finish.usage.cached_tokens > 0
    others = [await run(engine, prompt, SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95,
                                                       seed=seed)) for seed in (1, 2, 3)]
    assert len({r.text for r in others} | {first.text}) > 1  # the seed is really used
    beside = await asyncio.gather(run(engine, prompt, params, "seeded"),
                                  run(engine, "An unrelated request", greedy(24), "neighbour"))
    assert beside[0].finish is not None
    assert beside[0].finish.usage.completion_tokens == first.finish.usage.completion_tokens or \
        beside[0].finish.finish_reason.value == "stop"


async def test_max_tokens_is_exact(engine: AsyncEngine) -> None:
    for n in (1, 5, 17):
        result = await run(engine, "Tell me about the moon.", greedy(n, ignore_eos=True))
        assert result.finish is not None
        assert result.finish.usage.completion_tokens == n
        assert result.finish.finish_reason.value == "length"


async def test_ignore_eos_never_samples_an_end_of_generation_token(
        registry: EngineRegistry, instruct_model_path: Path) -> None:
    """``ignore_eos`` as llama-server: the end-of-generation tokens are banned (-inf), not
    sampled and read past. This prompt makes the end the model's first choice (alone it
    stops at once); with the ban every token is the best of the others (greedy), or any
    token but an end-of-generation one (sampled), and the output runs to max_tokens."""
    config = EngineConfig("ignore-eos", str(instruct_model_path), n_ctx=1024, n_parallel=2)
    prompt = "Write a story about robot number 0 and its friend."
    async with loaded(registry, config) as smollm:
        ids = await smollm.tokenize(prompt)
        with Model(instruct_model_path, ModelParams(n_gpu_layers=0)) as model:
            eog = set(model.vocab.eog_tokens())
        for params in (greedy(24, ignore_eos=True, logprobs=5),
                       SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=7,
                                      ignore_eos=True, logprobs=5)):
            result = await run(smollm, ids, params)
            assert result.finish is not None and result.finish.finish_reason.value == "length"
            assert result.finish.usage.completion_tokens == 24 == len(result.logprobs)
            assert not {step.token for step in result.logprobs} & eog
            # the raw distribution (logprobs) still ranks the end first where the model wants it
            assert any(step.top[0][0] in eog for step in result.logprobs)
            if params.temperature == 0:
                for step in result.logprobs:
                    assert step.token == next(t for t, _ in step.top if t not in eog)
        plain = await run(smollm, ids, greedy(24))
        assert plain.finish is not None and plain.finish.finish_reason.value == "stop"
        assert plain.finish.usage.completion_tokens < 24


async def test_every_slot_is_free_after_a_mix(engine: AsyncEngine) -> None:
    async def cancelled(i: int) -> None:
        ids = await engine.tokenize(PROMPTS[i])
        generator = engine.generate(ids, greedy(100, ignore_eos=True), f"x{i}")
        await generator.__anext__()
        await generator.aclose()

    await asyncio.gather(*(cancelled(i) for i in range(4)),
                         *(run(engine, p, greedy(6)) for p in PROMPTS[4:]))
    stats = await wait_until_idle(engine)
    assert stats["slots_busy"] == 0 and stats["queue_depth"] == 0
    assert stats["kv_cells_used"] <= engine.info.n_ctx


async def test_deadline_ends_a_long_request_and_frees_its_slot(engine: AsyncEngine) -> None:
    from kolosal.engine import DeadlineExceededError, ErrorEvent

    ids = await engine.tokenize("Recite the digits of pi:")
    events = [event async for _, event in engine.generate(ids, greedy(2000, ignore_eos=True), "late",
                                                        timeout_s=0.5)]
    assert isinstance(events[-1], ErrorEvent)
    assert isinstance(events[-1].error, DeadlineExceededError)
    assert len(events) > 1  # it did run before the deadline hit
    assert (await wait_until_idle(engine))["slots_busy"] == 0
