"""The prefix cache never changes a result (issue 16, item 9): a request that reuses a cached
prefix gets the next-token log-probabilities of a cold run, to float rounding.

What may legitimately differ is the batch shape: libllama's CPU kernels are not batch
invariant (README, Known limits), and a warm request prefills only its uncached suffix. So
the cold engine is given an n_batch that splits its prompt at the same place, and everything
that is the cache's own doing remains under test: the cells left by an earlier request with
another continuation, the removal of that tail, where the new cells land, the positions."""
from __future__ import annotations

from pathlib import Path

import pytest

from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry
from kolosal.engine.request import TokenLogprob
from kolosal.llama import Model

from ..engine.helpers import greedy, loaded, run

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

PREFIX = ("The history of the printing press begins in the fifteenth century, when Johannes "
          "Gutenberg combined movable metal type, oil-based ink and a screw press into a system that")
EARLIER = PREFIX + " was slow at first"   # what the warm engine's cache holds beyond the prefix
SUFFIXES = [" changed Europe.", " made books cheap and"]
TOLERANCE = 1e-3  # log-probability; measured: 0.0 (bitwise equal) on this build
TOP = 20


async def first_token(engine: AsyncEngine, ids: list[int]) -> tuple[int, TokenLogprob]:
    result = await run(engine, ids, greedy(1, logprobs=TOP))
    assert result.finish is not None and result.finish.logprobs
    return result.finish.usage.cached_tokens, result.finish.logprobs[0]


def assert_same_distribution(cold: TokenLogprob, warm: TokenLogprob) -> None:
    cold_top, warm_top = dict(cold.top), dict(warm.top)
    assert warm.token == cold.token
    common = set(cold_top) & set(warm_top)
    assert len(common) >= TOP - 2  # only a near-tie at the cut-off may swap in or out
    for token in common:
        assert abs(cold_top[token] - warm_top[token]) <= TOLERANCE, (token, cold_top[token], warm_top[token])


@pytest.mark.parametrize("earlier", ["other continuation", "same prompt"])
@pytest.mark.parametrize("suffix", SUFFIXES)
async def test_a_cached_prefix_gives_the_cold_logits(suffix: str, earlier: str, model_path: Path,
                                                     llama_model: Model) -> None:
    ids = llama_model.vocab.tokenize(PREFIX + suffix)
    if earlier == "same prompt":  # all but its last token cached: a one-row prefill
        earlier_ids, reused = ids, len(ids) - 1
    else:  # the shared prefix cached, the earlier request's tail removed
        earlier_ids, reused = llama_model.vocab.tokenize(EARLIER), len(llama_model.vocab.tokenize(PREFIX))
    assert ids[:reused] == earlier_ids[:reused] and len(ids) - reused <= reused

    def config(engine_id: str) -> EngineConfig:  # n_batch: a cold prefill splits at `reused` too
        return EngineConfig(engine_id, str(model_path), n_ctx=512, n_parallel=1, n_batch=reused)

    registry = EngineRegistry()
    try:
        async with loaded(registry, config("cold")) as cold:
            cached, cold_logprobs = await first_token(cold, ids)
            assert cached == 0
        async with loaded(registry, config("warm")) as warm:
            await run(warm, earlier_ids, greedy(8))
            cached, warm_logprobs = await first_token(warm, ids)
            assert cached == reused
        assert_same_distribution(cold_logprobs, warm_logprobs)
    finally:
        await registry.close_all()
