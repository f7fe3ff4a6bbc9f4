"""n > 1, logprobs, prompt logprobs and grammar constraints with the real model."""
from __future__ import annotations

import math
import re

import llguidance
import pytest

from kolosal.engine import AsyncEngine, ErrorEvent, FinishEvent, SamplingParams, TokenEvent, TokenLogprob

from ..near_tie import TOP_LOGPROBS, assert_same_or_near_tie, engine_steps
from .helpers import greedy

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


async def collect(engine: AsyncEngine, ids: list[int], params: SamplingParams, n: int = 1,
                  request_id: str = "t") -> tuple[list[str], list[FinishEvent], list[list[TokenLogprob]]]:
    texts, finishes = [""] * n, [None] * n
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    async for index, event in engine.generate(ids, params, request_id, n=n):
        assert not isinstance(event, ErrorEvent), event
        texts[index] += event.text
        logprobs[index].extend(event.logprobs)
        if isinstance(event, FinishEvent):
            finishes[index] = event  # type: ignore[call-overload]
    assert all(finish is not None for finish in finishes)
    return texts, finishes, logprobs  # type: ignore[return-value]


async def test_n_choices_prefill_the_prompt_once(engine: AsyncEngine) -> None:
    colours = ["red", "blue", "green"]
    prompt = " ".join(f"Item {i} of the inventory is a {colours[i % 3]} box." for i in range(45))
    ids = await engine.tokenize("Unique n=4 test. " + prompt + " Now a short poem about anything:")
    assert len(ids) > 450
    before = engine.stats()
    texts, finishes, _ = await collect(
        engine, ids, SamplingParams(max_tokens=8, temperature=1.5, seed=7, ignore_eos=True), n=4)
    after = engine.stats()
    assert after["forked_choices"] - before["forked_choices"] == 3
    computed = after["prefill_tokens_total"] - before["prefill_tokens_total"]
    assert computed < len(ids) + 4 * 8  # one prefill, not four (each choice decodes its own tokens)
    assert all(f.usage.prompt_tokens == len(ids) and f.usage.completion_tokens == 8 for f in finishes)
    assert len(set(texts)) > 1  # seed + index: the choices sample differently


async def test_seeded_choices_reproduce_their_own_seed(engine: AsyncEngine) -> None:
    """Choice i samples with seed + i. Compared on the first token, which every choice draws
    from the same logits row (later tokens depend on the batch around them: README)."""
    ids = await engine.tokenize("Seeded choices: my favourite word is")
    await collect(engine, ids, greedy(1))  # the same cache state for every run below
    for seed in range(6):
        params = SamplingParams(max_tokens=1, temperature=1.5, seed=seed)
        first, _, _ = await collect(engine, ids, params, n=2)
        second, _, _ = await collect(engine, ids, params.for_choice(1), n=2)
        assert first[1] == second[0]


async def test_greedy_logprobs_pick_the_best_token(engine: AsyncEngine) -> None:
    ids = await engine.tokenize("The three primary colors are")
    _, finishes, logprobs = await collect(engine, ids, greedy(8, logprobs=5, ignore_eos=True))
    entries = logprobs[0]
    assert len(entries) == 8
    for entry in entries:
        assert entry.logprob is not None and entry.logprob <= 0.0
        assert len(entry.top) == 5
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert entry.top[0][0] == entry.token and math.isclose(entry.top[0][1], entry.logprob,
                                                                abs_tol=1e-5)
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1.0 + 1e-4


async def test_prompt_logprobs_match_the_logprobs_of_generating_that_token(engine: AsyncEngine) -> None:
    ids = await engine.tokenize("Water boils at one hundred degrees")
    echo = SamplingParams(max_tokens=0, logprobs=5, prompt_logprobs=True)
    _, finishes, _ = await collect(engine, ids, echo)
    prompt_logprobs = finishes[0].prompt_logprobs
    assert [e.token for e in prompt_logprobs] == ids
    assert prompt_logprobs[0].logprob is None
    assert finishes[0].usage.completion_tokens == 0
    # Position i's logprob is the model's probability of token i after tokens < i: the same
    # number a request for the prefix reports for that token among its top alternatives.
    # Both prefill cold in one batch (prompt logprobs skip the prefix cache): a cached prefix
    # is another batch shape, whose logits differ in more than the last bits (README).
    checked = 0
    for i in range(2, len(ids)):
        _, _, logprobs = await collect(engine, ids[:i], greedy(1, logprobs=5, prompt_logprobs=True))
        top = dict(logprobs[0][0].top)
        if ids[i] in top:
            assert math.isclose(top[ids[i]], prompt_logprobs[i].logprob or 0.0, abs_tol=0.02)
            checked += 1
    assert checked >= 2


async def test_a_grammar_holds_the_output_to_its_language(engine: AsyncEngine) -> None:
    ids = await engine.tokenize("My favourite number is")
    grammar = llguidance.LLMatcher.grammar_from_regex(r"[0-9]{3}-[a-z]{2,4}")
    texts, finishes, _ = await collect(engine, ids, greedy(30, grammar=grammar), n=2)
    for text, finish in zip(texts, finishes, strict=True):
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", text), text
        assert finish.finish_reason.value == "stop"


async def test_constrained_and_free_requests_share_steps_without_cross_talk(engine: AsyncEngine) -> None:
    import asyncio

    free_ids = await engine.tokenize("def fibonacci(n):")
    solo, _, solo_logprobs = await collect(engine, free_ids,
                                           greedy(12, ignore_eos=True, logprobs=TOP_LOGPROBS))
    grammar = llguidance.LLMatcher.grammar_from_regex(r"(yes|no)")
    constrained_ids = await engine.tokenize("Is the sky blue? Answer:")

    async def constrained(index: int) -> str:
        texts, _, _ = await collect(engine, constrained_ids, greedy(5, grammar=grammar),
                                    request_id=f"c{index}")
        return texts[0]

    results = await asyncio.gather(*(constrained(i) for i in range(4)),
                                   collect(engine, free_ids, greedy(12, ignore_eos=True), request_id="free"))
    assert all(text in ("yes", "no") for text in results[:4])
    free = results[4]
    assert isinstance(free, tuple)
    reference = engine_steps(solo_logprobs[0], engine.token_piece)
    assert_same_or_near_tie(reference, free[0][0], "free beside constrained")


async def test_token_events_carry_their_logprobs(engine: AsyncEngine) -> None:
    ids = await engine.tokenize("1, 2, 3, 4,")
    count = 0
    async for _, event in engine.generate(ids, greedy(5, logprobs=0, ignore_eos=True), "lp"):
        if isinstance(event, (TokenEvent, FinishEvent)):
            count += len(event.logprobs)
            assert all(entry.top == () for entry in event.logprobs)
    assert count == 5


async def test_a_single_request_runs_beside_n_choices_that_fill_every_slot(engine: AsyncEngine) -> None:
    """n at the engine's slot count: alone the choices take every slot; a single request
    sent meanwhile takes back one slot beyond the request's share and finishes while the
    choices still run (before, it waited for them all); each choice's text is its text
    alone, up to near ties; n above the slots is a 400 naming them."""
    import asyncio

    from kolosal.engine import InvalidRequestError

    n = engine.info.n_parallel
    ids = await engine.tokenize("Big n request: the names of twenty animals, one per line:")
    params = greedy(48, ignore_eos=True, logprobs=TOP_LOGPROBS)
    _, _, alone_logprobs = await collect(engine, ids, params, n=n, request_id="big-alone")
    before = engine.stats()["share_preemptions"]
    order: list[str] = []
    decoding = asyncio.Event()  # every choice has sent text: they hold every slot

    async def big() -> list[str]:
        texts = [""] * n
        async for index, event in engine.generate(ids, params, "big", n=n):
            assert not isinstance(event, ErrorEvent), event
            texts[index] += event.text
            if all(texts):
                decoding.set()
        order.append("big")
        return texts

    async def single() -> None:
        await decoding.wait()
        single_ids = await engine.tokenize("A single request:")
        texts, finishes, _ = await collect(engine, single_ids, greedy(4, ignore_eos=True), request_id="one")
        assert finishes[0].usage.completion_tokens == 4
        order.append("single")

    texts, _ = await asyncio.gather(big(), single())
    assert order == ["single", "big"]
    assert engine.stats()["share_preemptions"] - before >= 1
    assert all(text for text in texts)
    for index, text in enumerate(texts):
        reference = engine_steps(alone_logprobs[index], engine.token_piece)
        assert_same_or_near_tie(reference, text, f"choice {index} beside a single request")
    too_many = f"n={n + 1} is more than this engine's {n} slots"
    with pytest.raises(InvalidRequestError, match=too_many) as raised:
        await collect(engine, ids, params, n=n + 1)
    assert raised.value.param == "n"
