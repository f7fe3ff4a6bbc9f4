"""Embedding engines: the step planner without the library, then the batcher thread with
the real model loaded as an embedding engine (mean pooling: Gemma 3 has no pooling of its
own)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from kolosal.engine import (
    AsyncEngine,
    EngineConfig,
    EngineRegistry,
    EngineStoppedError,
    InvalidRequestError,
    SamplingParams,
    Tenancy,
)
from kolosal.engine.embedding import (
    EmbeddingOnlyError,
    NotAnEmbeddingEngineError,
    resolve_pooling,
    step_shape,
)
from kolosal.engine.embedding_queue import EmbeddingJob, EmbeddingQueue

from ..waiting import until_async
from .helpers import loaded

QUERY = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the rug."
UNRELATED = "Quarterly tax filings are due at the end of April."
OTHERS = [f"Sentence {i}: {topic}" for i, topic in enumerate(
    ["rockets reach orbit", "bread needs yeast", "rivers flow to the sea", "chess openings",
     "the stock market fell", "violins have four strings", "glaciers are melting", "a red bicycle",
     "photosynthesis in leaves", "the history of Rome", "quantum computers", "how to tie a knot",
     "volcanoes erupt lava", "jazz improvisation", "a cup of green tea", "penguins in Antarctica"])]
TOLERANCE = 1e-5


# -- the queue (no library) ---------------------------------------------------------------------
def job(*lengths: int, tenant: str = "", weight: float = 1.0, priority: int = 0) -> EmbeddingJob:
    loop = asyncio.new_event_loop()
    try:
        return EmbeddingJob([[1] * n for n in lengths], loop.create_future(), loop,
                            Tenancy(tenant, weight, priority))
    finally:
        loop.close()


def queue_of(*jobs: EmbeddingJob) -> EmbeddingQueue:
    queue = EmbeddingQueue()
    for each in jobs:
        queue.push(each)
    return queue


def test_plan_takes_turns_and_lets_short_inputs_pass_a_long_one() -> None:
    first, second = job(30, 50), job(10, 5)
    queue = queue_of(first, second)
    plan = queue.plan(token_budget=64, max_inputs=8)
    assert [(j is first, i) for j, i in plan.entries] == [(True, 0), (False, 0), (False, 1)]
    assert plan.tokens == 45 and len(queue) == 1
    plan = queue.plan(token_budget=64, max_inputs=8)  # the long one waited: first in the next step
    assert [(j is first, i) for j, i in plan.entries] == [(True, 1)] and len(queue) == 0 and not queue


def test_a_one_input_job_behind_a_giant_one_is_in_the_next_step() -> None:
    giant = job(*[60] * 2048)
    queue = queue_of(giant)
    assert [i for _, i in queue.plan(token_budget=64, max_inputs=8).entries] == [0]
    small = job(60)
    queue.push(small)
    plan = queue.plan(token_budget=64, max_inputs=8)
    assert [(j is small, i) for j, i in plan.entries] == [(True, 0)]  # giant was served, small was not
    assert len(queue) == 2047


def test_jobs_alternate_by_tokens_and_tenants_by_weight() -> None:
    light, heavy = job(*[4] * 40, tenant="a"), job(*[8] * 40, tenant="a")
    queue = queue_of(light, heavy)
    taken = {light: 0, heavy: 0}
    for _ in range(6):
        for each, index in queue.plan(token_budget=48, max_inputs=64).entries:
            taken[each] += len(each.inputs[index])
    assert abs(taken[light] - taken[heavy]) <= 8  # equal tokens, not equal inputs
    first, second, third = job(*[4] * 300, tenant="x", weight=2.0), job(*[4] * 300, tenant="y"), \
        job(*[4] * 300, tenant="y")
    queue = queue_of(first, second, third)
    per_tenant = {"x": 0, "y": 0}
    for _ in range(10):
        for each, index in queue.plan(token_budget=60, max_inputs=64).entries:
            per_tenant[each.tenancy.tenant] += len(each.inputs[index])
    assert 1.8 <= per_tenant["x"] / per_tenant["y"] <= 2.2  # 2:1 by weight, whatever y's job count


def test_a_better_priority_class_fills_the_step_first() -> None:
    background, urgent = job(*[8] * 10, priority=1), job(8, 8, priority=0)
    queue = queue_of(background, urgent)
    plan = queue.plan(token_budget=32, max_inputs=8)
    assert [j is urgent for j, _ in plan.entries] == [True, True, False, False]


def test_a_newcomer_starts_level_with_the_least_served() -> None:
    old = job(*[4] * 100, tenant="a")
    queue = queue_of(old)
    for _ in range(10):
        queue.plan(token_budget=16, max_inputs=8)
    newcomer = job(*[4] * 100, tenant="b")
    queue.push(newcomer)
    for _ in range(4):  # no credit for a's past: the two alternate at once
        plan = queue.plan(token_budget=16, max_inputs=8)
        assert sorted(j is newcomer for j, _ in plan.entries) == [False, False, True, True]


def test_a_cancelled_job_leaves_whole_and_is_counted_once() -> None:
    gone, kept = job(*[4] * 3000), job(4, 4, 4)
    queue = queue_of(gone, kept)
    assert len(queue) == 3003
    gone.cancelled = True
    plan = queue.plan(token_budget=512, max_inputs=2)
    assert plan.cancelled == [gone] and gone.done
    assert [i for j, i in plan.entries if j is kept] == [0, 1] and len(queue) == 1
    assert queue.plan(512, 2).cancelled == [] and len(queue) == 0  # counted out once


def test_step_shape_divides_the_batch_into_whole_sequences() -> None:
    for n_batch, n_ctx, n_parallel in [(512, 4096, 0), (509, 4096, 0), (100, 4096, 3), (2048, 1024, 8)]:
        budget, n_seq = step_shape(EngineConfig("e", "x", n_ctx=n_ctx, n_batch=n_batch,
                                                n_parallel=n_parallel))
        assert budget % 4 == 0 and budget <= min(n_batch, n_ctx)
        assert budget % n_seq == 0 and 2 <= n_seq <= (n_parallel or 64) + 1


def test_pooling_choice(model_path: Path) -> None:
    path = str(model_path)
    assert resolve_pooling(EngineConfig("g", path)) is None  # a generation model stays one
    assert resolve_pooling(EngineConfig("e", path, embedding=True)) == "mean"
    assert resolve_pooling(EngineConfig("e", path, pooling="last")) == "last"
    assert resolve_pooling(EngineConfig("e", path, embedding=False, pooling="cls")) is None
    with pytest.raises(ValueError, match="pooling"):
        EngineConfig("e", path, pooling="max")  # type: ignore[arg-type]


# -- the real model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def embedder(registry: EngineRegistry, model_path: Path) -> AsyncIterator[AsyncEngine]:
    config = EngineConfig("embed", str(model_path), n_ctx=1024, embedding=True)
    async with loaded(registry, config) as engine:
        yield engine


async def embed_texts(engine: AsyncEngine, texts: list[str]) -> np.ndarray:
    ids = [await engine.tokenize(text, add_special=True, parse_special=True) for text in texts]
    return await engine.embed(ids)


async def test_vectors_are_unit_norm_and_a_paraphrase_is_closer(embedder: AsyncEngine) -> None:
    spec = embedder.embedding
    assert spec is not None and spec.pooling == "mean" and spec.dimensions == 640
    vectors = await embed_texts(embedder, [QUERY, PARAPHRASE, UNRELATED])
    assert vectors.shape == (3, 640) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


async def test_an_input_gets_the_same_vector_whatever_else_is_in_its_step(embedder: AsyncEngine) -> None:
    alone = (await embed_texts(embedder, [QUERY]))[0]
    # inside one request of 17 inputs (one step: they arrive together), at every position
    for position in (0, 16):
        texts = OTHERS[:position] + [QUERY] + OTHERS[position:]
        inside = (await embed_texts(embedder, texts))[position]
        assert np.abs(inside - alone).max() <= TOLERANCE
    # beside 16 concurrent requests
    steps_before = embedder.stats()["steps"]
    results = await asyncio.gather(*(embed_texts(embedder, [text]) for text in OTHERS + [QUERY]))
    assert np.abs(results[-1][0] - alone).max() <= TOLERANCE
    assert embedder.stats()["steps"] - steps_before < len(results)  # steps were shared


async def test_token_ids_embed_like_their_text(embedder: AsyncEngine) -> None:
    ids = await embedder.tokenize(PARAPHRASE, add_special=True, parse_special=True)
    from_ids, from_text = await embedder.embed([ids]), await embed_texts(embedder, [PARAPHRASE])
    assert np.abs(from_ids - from_text).max() <= TOLERANCE


async def test_refusals_name_the_input(registry: EngineRegistry, model_path: Path) -> None:
    config = EngineConfig("embed-small", str(model_path), n_ctx=256, n_batch=64, embedding=True)
    async with loaded(registry, config) as engine:
        assert engine.embedding is not None and engine.embedding.max_input_tokens == 64
        with pytest.raises(InvalidRequestError, match=r"input\[1\] has 65 tokens") as raised:
            await engine.embed([[2, 3], [2] * 65])
        assert raised.value.param == "input"
        with pytest.raises(InvalidRequestError, match=r"input\[0\]: token ids"):
            await engine.embed([[10**7]])
        with pytest.raises(InvalidRequestError, match=r"input\[0\] is empty"):
            await engine.embed([[]])
        with pytest.raises(EmbeddingOnlyError):
            engine.check_prompt([2, 3], SamplingParams())
        with pytest.raises(EmbeddingOnlyError, match="serves embeddings only"):
            await engine.generate([2, 3], SamplingParams(), "r").__anext__()
        assert len((await engine.embed([[2] * 64]))[0]) == 640  # exactly one step still fits


async def test_a_generation_engine_refuses_embeddings(engine: AsyncEngine) -> None:
    assert engine.embedding is None
    with pytest.raises(NotAnEmbeddingEngineError, match='"embedding": true'):
        await engine.embed([[2, 3]])


async def test_a_cancelled_request_leaves_the_queue(registry: EngineRegistry, model_path: Path) -> None:
    config = EngineConfig("embed-cancel", str(model_path), n_ctx=256, n_batch=64, embedding=True)
    async with loaded(registry, config) as engine:
        long_inputs = [[2] + [1000 + i] * 63 for i in range(8)]  # one step each
        task = asyncio.create_task(engine.embed(long_inputs))
        await until_async(lambda: engine.stats()["steps"] >= 1, what="the first step")  # then hang up
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_async(lambda: engine.stats()["requests_cancelled"] == 1, what="the cancellation")
        stats = engine.stats()
        assert stats["requests_cancelled"] == 1 and stats["inputs_total"] < len(long_inputs)
        vectors = await engine.embed([[2, 3, 4]])  # and it still serves
        assert vectors.shape == (1, 640)


async def test_the_queue_depth_empties_after_a_long_request_is_cancelled(registry: EngineRegistry,
                                                                         model_path: Path) -> None:
    """A job with more inputs than one scan of the queue (1,024) leaves it over several
    scans after its cancellation; the depth must follow to 0, not stay at what was left."""
    config = EngineConfig("embed-long-cancel", str(model_path), n_ctx=256, n_batch=64, embedding=True)
    async with loaded(registry, config) as engine:
        task = asyncio.create_task(engine.embed([[2] + [3000 + i % 500] * 62 for i in range(2000)]))
        await until_async(lambda: engine.stats()["steps"] >= 1, what="the first step")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_async(lambda: engine.stats()["requests_cancelled"] == 1, what="the cancellation")
        await until_async(lambda: engine.stats()["queue_depth"] == 0, what="an empty queue")
        assert engine.stats()["inputs_total"] < 2000
        assert (await engine.embed([[2, 3, 4]])).shape == (1, 640)  # and it still serves
        assert engine.stats()["queue_depth"] == 0


async def test_a_one_input_request_finishes_before_a_giant_one_sent_earlier(registry: EngineRegistry,
                                                                           model_path: Path) -> None:
    """Steps take turns between the waiting requests (before: oldest first, so one input
    waited for every input of a giant request in front of it)."""
    config = EngineConfig("embed-fair", str(model_path), n_ctx=256, n_batch=64, embedding=True)
    async with loaded(registry, config) as engine:
        order: list[str] = []

        async def embed(name: str, inputs: list[list[int]]) -> np.ndarray:
            vectors = await engine.embed(inputs)
            order.append(name)
            return vectors

        giant = asyncio.create_task(embed("giant", [[2] + [4000 + i % 300] * 62 for i in range(120)]))
        await until_async(lambda: engine.stats()["steps"] >= 1, what="the giant's first step")
        small = await embed("small", [[2] + [5000] * 62])
        assert order == ["small"] and not giant.done()
        assert engine.stats()["queue_depth"] > 0  # the giant still waits for most of its steps
        assert small.shape == (1, 640)
        assert (await giant).shape == (120, 640) and order == ["small", "giant"]
        assert engine.stats()["queue_depth"] == 0


async def test_a_request_over_the_token_bound_is_refused(embedder: AsyncEngine) -> None:
    spec = embedder.embedding
    assert spec is not None and spec.max_input_tokens == 512
    at_bound = [[2] * 500] * 600  # 300,000 tokens: accepted (checked, not computed here)
    spec.check(at_bound, embedder.info.n_vocab)
    with pytest.raises(InvalidRequestError, match="300001 tokens in all, more than the 300000") as raised:
        await embedder.embed([*at_bound, [2]])
    assert raised.value.param == "input" and embedder.stats()["queue_depth"] == 0


async def test_removing_the_engine_answers_its_waiting_requests(registry: EngineRegistry,
                                                                 model_path: Path) -> None:
    await registry.add(EngineConfig("embed-removed", str(model_path), n_ctx=256, n_batch=64,
                                    embedding=True))
    async with registry.lease("embed-removed") as engine:
        task = asyncio.create_task(engine.embed([[2] + [2000 + i] * 63 for i in range(8)]))
        await until_async(lambda: engine.stats()["steps"] >= 1, what="the first step")
        await registry.remove("embed-removed")
        with pytest.raises(EngineStoppedError):
            await task
        with pytest.raises(EngineStoppedError):
            await engine.embed([[2, 3]])
