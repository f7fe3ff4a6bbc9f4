"""Speculative decoding with no library: drafting, the cost rule, draft rows in the plan,
acceptance and rollback bookkeeping, the adaptive pause."""
from __future__ import annotations

from typing import Any

import numpy as np

from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import (
    DEFAULT_DRAFT_MAX,
    SPECULATE_ON,
    FinishEvent,
    Request,
    RequestStatus,
    SamplingParams,
    TokenEvent,
)
from kolosal.engine.scheduler import Scheduler, SchedulerPolicy
from kolosal.engine.speculation.drafting import (
    BACKOFF_STEPS,
    DRAFT_STEP_SHARE,
    EXPLORE_STEPS,
    MAX_FAILURES,
    MAX_MATCH,
    PAYOFF_MIN_SAMPLES,
    Drafter,
    DraftPayoff,
    MatchOdds,
    StepCost,
    best_draft_length,
    match_bucket,
)

from .fakes import FakeMemory

# [.. 5 6 7 8 9 5 6 7]: the last 3-gram was seen before, followed by 8 9 5 6 ...
PROMPT = [1, 5, 6, 7, 8, 9, 5, 6, 7]


def make(draft_max: int = 4, n_batch: int = 32, num_slots: int = 2, n_ctx: int = 64,
         **policy: Any) -> Scheduler:
    scheduler = Scheduler(num_slots, n_ctx, n_batch, FakeMemory(),
                          piece_of=lambda t, special: f"<{t}>".encode(), is_eog=lambda t: t == 0,
                          clock=lambda: 0.0, policy=SchedulerPolicy(draft_max=draft_max, **policy))
    for _ in range(20):  # rows nearly free: every draft token is worth its row
        scheduler.speculation.cost.observe(1, 1.0)
        scheduler.speculation.cost.observe(33, 1.001)
    return scheduler


def request(prompt: list[int] = PROMPT, max_tokens: int = 20, rid: str = "r", **params: object) -> Request:
    return Request(rid, list(prompt), SamplingParams(max_tokens=max_tokens, temperature=0.0, **params),  # type: ignore[arg-type]
                   0.0)


def prefill(scheduler: Scheduler, *requests: Request, first: list[int] | None = None) -> StepPlan:
    """Admit and prefill the requests (one step), sampling ``first``; returns the next plan."""
    for r in requests:
        scheduler.add(r)
    plan = scheduler.schedule()
    assert plan is not None and not plan.drafts  # prompts never draft
    scheduler.update(plan, StepOutput(np.array(first or [8] * len(requests))))
    plan = scheduler.schedule()
    assert plan is not None
    return plan


def test_the_draft_is_what_followed_the_last_ngram_and_a_loop_repeats_its_period() -> None:
    assert Drafter(8).propose([1, 2, 3, 4, 5, 1, 2, 3], 4) == [4, 5, 1, 2]
    assert Drafter(8).propose([7, 8, 9, 7, 8, 9, 7, 8, 9], 7) == [7, 8, 9, 7, 8, 9, 7]
    assert Drafter(8).propose([4, 1, 2, 9, 1, 2], 3) == [9, 1, 2]  # a 2-gram when no 3-gram matches
    assert Drafter(8).propose([1, 2, 3, 4], 4) == []


def test_the_index_follows_the_sequence_as_it_grows() -> None:
    drafter, tokens = Drafter(8), list(range(100, 160))  # a long prompt: indexed in one go
    assert drafter.propose(tokens, 3) == []
    tokens += [120, 121, 122]
    assert drafter.propose(tokens, 3) == [123, 124, 125]
    tokens += [7, 120, 121]
    assert drafter.propose(tokens, 2) == [122, 7]  # the latest occurrence wins


def test_the_longest_ngram_that_occurred_picks_the_draft_and_its_match_length() -> None:
    text = list(range(200, 260))  # indexed in one go (vectorised), then token by token
    drafter = Drafter(8)
    tokens = text + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] + [7, 8, 9, 99] + [2, 3, 4, 5, 6, 7, 8]
    assert drafter.propose(tokens, 2) == [9, 10]  # a 3-gram (6 7 8): the match is 7 tokens
    assert drafter.match == 7
    tokens.append(9)
    assert drafter.propose(tokens, 2) == [10, 7]  # an 8-gram (2..9), not the later 7 8 9
    assert drafter.match == 8  # 1 and 99 before them differ
    tokens += [10, 7, 8, 9, 99]
    assert drafter.propose(tokens, 3) == [2, 3, 4] and drafter.match == MAX_MATCH  # (13)
    drafter = Drafter(8)
    assert drafter.propose(text + text[:5], 4) == text[5:9] and drafter.match == 5


def test_draft_rows_follow_the_decode_row_with_logits_on_every_row() -> None:
    scheduler = make()
    r = request()
    plan = prefill(scheduler, r)
    # token_ids = PROMPT + [8]: the last 3-gram (6, 7, 8) was followed by 9 5 6 7.
    assert plan.tokens.tolist() == [8, 9, 5, 6, 7]
    assert plan.positions.tolist() == [9, 10, 11, 12, 13]
    assert plan.seq_ids.tolist() == [r.seq_id] * 5 and plan.logits.tolist() == [1] * 5
    assert plan.sampled == [r] and plan.output_rows.tolist() == [0]
    assert plan.drafts == [(0, 1, 4)] and plan.num_decode_rows == 1


def test_accepted_tokens_are_committed_and_the_rejected_cells_removed() -> None:
    scheduler = make()
    r = request()
    plan = prefill(scheduler, r)
    # Sampled 9 (= draft 1), then 5 (= draft 2), 6 (= draft 3), then 1 instead of draft 4 = 7.
    emissions = scheduler.update(plan, StepOutput(np.array([9]), drafted=[[5, 6, 1]]))
    assert r.token_ids[len(PROMPT):] == [8, 9, 5, 6, 1]
    assert r.num_computed == 13 and r.num_pending == 1  # positions 0..12 are in the KV
    memory = scheduler.kv.memory
    assert isinstance(memory, FakeMemory) and memory.removed[-1] == (r.seq_id, 13, -1)
    (emission,) = emissions  # one event for the whole step
    assert isinstance(emission.event, TokenEvent)
    assert emission.event.text == "<9><5><6><1>" and emission.event.num_tokens == 5
    counters = scheduler.speculation.counters
    assert counters.spec_draft_tokens == 4 and counters.spec_accepted_tokens == 3
    assert scheduler.speculation.last_accepted == 3
    assert r.drafter is not None and (r.drafter.proposed, r.drafter.accepted) == (4, 3)


def test_a_fully_accepted_draft_removes_nothing() -> None:
    scheduler = make()
    r = request()
    plan = prefill(scheduler, r)
    removed_before = len(scheduler.kv.memory.removed)  # type: ignore[attr-defined]
    scheduler.update(plan, StepOutput(np.array([9]), drafted=[[5, 6, 7, 8]]))
    assert r.num_computed == 14 and r.token_ids[-5:] == [9, 5, 6, 7, 8]
    assert len(scheduler.kv.memory.removed) == removed_before  # type: ignore[attr-defined]


def test_a_stop_string_inside_an_accepted_draft_ends_the_request_there() -> None:
    scheduler = make()
    r = request(stop=("<5>",))
    plan = prefill(scheduler, r)
    emissions = scheduler.update(plan, StepOutput(np.array([9]), drafted=[[5, 6, 7, 8]]))
    assert r.status == RequestStatus.FINISHED
    assert r.token_ids[len(PROMPT):] == [8, 9, 5]  # nothing after the stop
    finish = emissions[-1].event
    assert isinstance(finish, FinishEvent) and finish.finish_reason.value == "stop"
    assert finish.usage.completion_tokens == 3
    assert "".join(e.event.text for e in emissions) == "<9>"  # type: ignore[union-attr]
    # The cells of the tokens after it are gone; the cache is exactly what the KV holds.
    assert scheduler.kv.memory.removed[-1] == (r.seq_id, 12, -1)  # type: ignore[attr-defined]
    assert scheduler.kv.slots.slots[r.seq_id].cached_ids == r.token_ids


def test_end_of_generation_and_max_tokens_inside_a_draft() -> None:
    scheduler = make()
    eog = request([1, 5, 6, 7, 8, 0, 5, 6, 7], rid="eog")  # the draft is 0 5 6 7, 0 ends generation
    plan = prefill(scheduler, eog)
    assert plan.tokens.tolist() == [8, 0, 5, 6, 7]
    emissions = scheduler.update(plan, StepOutput(np.array([0]), drafted=[[5, 6, 1]]))
    finish = emissions[-1].event
    assert isinstance(finish, FinishEvent) and finish.finish_reason.value == "stop"
    assert finish.usage.completion_tokens == 2 and eog.token_ids[-1] == 0
    assert scheduler.kv.memory.removed[-1] == (eog.seq_id, 11, -1)  # type: ignore[attr-defined]

    scheduler = make()
    short = request(max_tokens=3, rid="short")
    plan = prefill(scheduler, short)
    assert plan.drafts == [(0, 1, 1)]  # 1 generated, at most 2 more: one draft token + the next
    emissions = scheduler.update(plan, StepOutput(np.array([9]), drafted=[[5]]))
    finish = emissions[-1].event
    assert isinstance(finish, FinishEvent) and finish.finish_reason.value == "length"
    assert finish.usage.completion_tokens == 3


def test_requests_that_do_not_speculate() -> None:
    scheduler = make(draft_max=0)
    off_by_engine, asked = request(rid="a"), request(rid="b", speculative=SPECULATE_ON)
    plan = prefill(scheduler, off_by_engine, asked, first=[8, 8])
    assert off_by_engine.drafter is None
    assert asked.drafter is not None and asked.drafter.n_max == DEFAULT_DRAFT_MAX
    assert [(plan.sampled[i], count) for i, _, count in plan.drafts] == [(asked, DEFAULT_DRAFT_MAX)]

    scheduler = make(draft_max=6, num_slots=3)
    off = request(rid="off", speculative=0)
    logprobs = request(rid="lp", logprobs=2)
    own = request(rid="own", speculative=2)
    for r in (off, logprobs, own):
        scheduler.add(r)
    scheduler.schedule()
    assert off.drafter is None and logprobs.drafter is None
    assert own.drafter is not None and own.drafter.n_max == 2


def test_drafts_take_only_the_budget_left_after_decode_rows_and_prompts() -> None:
    scheduler = make(n_batch=6, num_slots=3)
    a, b = request([5, 6, 5], rid="a"), request([5, 6, 5], rid="b")  # then 6: a 2-token loop
    for r in (a, b):
        scheduler.add(r)
    plan = scheduler.schedule()
    assert plan is not None and plan.num_tokens == 6
    scheduler.update(plan, StepOutput(np.array([6, 6])))
    plan = scheduler.schedule()
    assert plan is not None
    assert plan.num_decode_rows == 2 and plan.num_draft_rows == 4  # 6 - 2 decode rows
    scheduler.update(plan, StepOutput(np.array([1, 1]), drafted=[[] for _ in plan.drafts]))
    scheduler.add(request(list(range(30, 60)), rid="long"))
    plan = scheduler.schedule()
    assert plan is not None
    assert plan.num_decode_rows == 2 and plan.num_draft_rows == 0  # the prompt chunk came first
    assert plan.num_tokens == 6


def line_cost(fixed: float, per_row: float, rows: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> StepCost:
    cost = StepCost()
    for count in rows * 10:
        cost.observe(count, fixed + per_row * count)
    return cost


def test_rows_that_cost_more_than_they_yield_are_not_drafted() -> None:
    # Compute-bound: a step costs 10 ms per row and (almost) nothing fixed.
    cost = line_cost(0.001, 0.010, rows=(1, 2, 4, 8, 16, 32, 33, 34))
    fixed, per_row = cost.line()
    assert abs(per_row - 0.010) < 5e-4 and abs(fixed - 0.5 * per_row) < 1e-9  # the floor
    assert best_draft_length([0.9, 0.81], 32, 32.0, cost) == 0
    # A memory-bound step (12 ms fixed, 1 ms per row): a likely token is worth a row...
    memory_bound = line_cost(0.012, 0.001, rows=tuple(range(1, 10)))
    assert best_draft_length([0.6], 1, 1.0, memory_bound) == 1
    # ... until the step already expects as much as it costs.
    assert best_draft_length([0.05], 4, 3.5, memory_bound) == 0


def test_the_measured_time_of_each_row_count_decides_not_a_line() -> None:
    # ggml's CPU matmuls take rows in blocks: measured, 9 rows cost far more than 8 or 10.
    cost = line_cost(0.008, 0.0065, rows=(1, 2))
    for _ in range(3):
        cost.observe(8, 0.062)
        cost.observe(9, 0.083)
        cost.observe(10, 0.069)
    assert abs(cost.seconds(9) - 0.083) < 0.005 and abs(cost.seconds(10) - 0.069) < 0.005
    # One draft token at 0.9 does not pay for the ninth row; two pay for the tenth.
    assert best_draft_length([0.9], 8, 8.0, cost) == 0
    assert best_draft_length([0.9, 0.81], 8, 8.0, cost) == 2
    for _ in range(10):  # the tenth row turns out dearer: no draft at all
        cost.observe(10, 0.078)
    assert best_draft_length([0.9, 0.81], 8, 8.0, cost) == 0
    # A row count not measured yet: the nearest smaller one measured, plus the line's slope
    # for each further row; or, to explore, nothing more, so a draft tries it ...
    _, per_row = cost.line()
    assert abs(cost.seconds(12) - (cost.seconds(10) + 2 * per_row)) < 1e-12
    assert cost.seconds(12, explore=True) == cost.seconds(10)
    assert best_draft_length([0.9, 0.81], 10, 10.0, cost, explore=True) == 2
    # ... until it is measured (twice) and its own time decides.
    for _ in range(2):
        cost.observe(12, 0.095)
    assert cost.measured(12) and best_draft_length([0.9, 0.81], 10, 10.0, cost, explore=True) == 1


def test_one_draft_a_step_explores_an_unmeasured_row_count() -> None:
    scheduler = make(num_slots=4, n_batch=64, n_ctx=256)
    # compute-bound; nothing above 4 measured
    scheduler.speculation.cost = line_cost(0.001, 0.010, rows=(1, 2, 3, 4))
    plan = prefill(scheduler, *[request(rid=f"r{i}") for i in range(4)])
    assert plan.num_decode_rows == 4
    counts = [count for _, _, count in plan.drafts]
    # The first sequence's whole draft tries 8 rows (a fresh sequence's 0.6 would not pay
    # for one row at the line's cost); the others are measured against the line: probes at most.
    assert counts[0] == 4 and all(count == 1 for count in counts[1:])


def test_drafting_stops_where_it_realises_fewer_tokens_per_second() -> None:
    payoff = DraftPayoff()
    for _ in range(PAYOFF_MIN_SAMPLES):
        assert payoff.allows(8)  # too little evidence yet
        payoff.observe(8, drafted=False, tokens=8, seconds=0.062)   # 129 tokens/s
        payoff.observe(8, drafted=True, tokens=9, seconds=0.083)    # 108 tokens/s
        payoff.observe(1, drafted=False, tokens=1, seconds=0.016)   # 62 tokens/s
        payoff.observe(1, drafted=True, tokens=3, seconds=0.046)    # 65 tokens/s
    assert payoff.allows(1)  # one sequence: drafts pay
    for _ in range(PAYOFF_MIN_SAMPLES):
        payoff.observe(4, drafted=True, tokens=5, seconds=0.05)
    assert not payoff.allows(4)  # drafted steps measured, plain ones not yet: a plain step
    allowed = [payoff.allows(8) for _ in range(2 * EXPLORE_STEPS)]
    assert sum(allowed) == 2 and allowed[EXPLORE_STEPS - 1]  # held back, but tried now and then


def test_the_engine_stops_its_drafts_where_they_did_not_pay_but_not_the_drafts_asked_for() -> None:
    scheduler = make(num_slots=2)
    for _ in range(PAYOFF_MIN_SAMPLES):
        scheduler.speculation.payoff.observe(2, drafted=False, tokens=2, seconds=0.02)
        scheduler.speculation.payoff.observe(2, drafted=True, tokens=2, seconds=0.05)
    engine_default, asked = request(rid="engine"), request(rid="asked", speculative=2)
    plan = prefill(scheduler, engine_default, asked)
    assert plan.num_decode_rows == 2
    assert [plan.sampled[index].request_id for index, _, _ in plan.drafts] == ["asked"]


def test_a_sequence_whose_drafts_keep_failing_pauses_with_backoff() -> None:
    drafter = Drafter(4)
    for step in range(MAX_FAILURES):
        assert not drafter.paused(step)
        drafter.record(4, 0, step)
    paused_at = MAX_FAILURES - 1
    assert drafter.paused(paused_at + 1)
    assert not drafter.paused(paused_at + BACKOFF_STEPS)  # tries again ...
    for step in range(paused_at + BACKOFF_STEPS, paused_at + BACKOFF_STEPS + MAX_FAILURES):
        drafter.record(4, 0, step)
    resumed = paused_at + BACKOFF_STEPS + MAX_FAILURES - 1
    assert drafter.paused(resumed + BACKOFF_STEPS)  # ... and waits twice as long
    assert not drafter.paused(resumed + 2 * BACKOFF_STEPS)
    drafter.record(4, 3, resumed + 2 * BACKOFF_STEPS)
    assert drafter.backoff == BACKOFF_STEPS  # a success resets the backoff


def test_a_paused_sequence_plans_no_draft_rows() -> None:
    scheduler = make()
    r = request()
    plan = prefill(scheduler, r)
    assert plan.drafts and r.drafter is not None
    for _ in range(MAX_FAILURES):
        r.drafter.record(4, 0, scheduler.steps)
    plan = scheduler.schedule()  # type: ignore[assignment]
    assert plan is not None and not plan.drafts and plan.num_tokens == 1  # a draft exists, unused


def test_acceptance_steers_the_draft_length() -> None:
    scheduler = Scheduler(1, 256, 64, FakeMemory(), piece_of=lambda t, special: b"x", is_eog=lambda t: False,
                          clock=lambda: 0.0, policy=SchedulerPolicy(draft_max=16))
    for _ in range(2):  # a CPU curve, every row count measured: 8 ms fixed, 6 ms per row
        for rows in range(1, 18):
            scheduler.speculation.cost.observe(rows, 0.008 + 0.006 * rows)
    r = Request("loop", [3, 4, 5] * 6, SamplingParams(max_tokens=200, temperature=0.0), 0.0)
    plan = prefill(scheduler, r, first=[3])
    assert plan.num_draft_rows == 1  # a new sequence starts with a short draft
    lengths = []
    loop = [3, 4, 5]
    for _ in range(6):  # every draft accepted: the drafts grow
        draft = plan.tokens[1:].tolist()
        bonus = loop[(loop.index(draft[-1]) + 1) % 3]
        scheduler.update(plan, StepOutput(np.array([draft[0]]), drafted=[draft[1:] + [bonus]]))
        plan = scheduler.schedule()  # type: ignore[assignment]
        lengths.append(plan.num_draft_rows)
    assert lengths[-1] > 3 and lengths == sorted(lengths)


def costly(scheduler: Scheduler, fixed: float, per_row: float) -> Scheduler:
    scheduler.speculation.cost = line_cost(fixed, per_row, rows=tuple(range(1, 41)))  # every count measured
    return scheduler


def test_odds_by_match_length_learn_from_every_verified_draft() -> None:
    assert [match_bucket(n) for n in (2, 3, 6, 7, 11, 12, 40)] == [2, 3, 6, 7, 7, 8, 8]
    odds = MatchOdds()
    assert odds.chance(3, sampled=False) == 0.6  # the prior
    # A draft on a 3-token match: tokens 1 and 2 (matches 3, 4) accepted, token 3 (match 5)
    # rejected, token 4 never tested.
    odds.record(3, proposed=4, accepted=2, sampled=False)
    assert odds.chance(3, False) == odds.chance(4, False) == (1 + 1.2) / (1 + 2.0)
    assert odds.chance(5, False) == 1.2 / (1 + 2.0) and odds.chance(6, False) == 0.6
    assert odds.chance(3, sampled=True) == 0.6  # greedy and sampled requests apart
    chances = odds.chances(3, 3, False)
    assert chances == [odds.chance(3, False), chances[0] * odds.chance(4, False),
                       chances[1] * odds.chance(5, False)]
    for _ in range(2000):  # old evidence fades: the odds follow the load
        odds.record(20, proposed=1, accepted=1, sampled=False)
    for _ in range(400):
        odds.record(20, proposed=1, accepted=0, sampled=False)
    assert odds.chance(12, False) < 0.5


def test_a_draft_not_worth_a_row_is_tried_now_and_then() -> None:
    # One row costs twice the fixed part: the prior 0.6 is not worth a row, a sure draft
    # would be: every EXPLORE_STEPS-th such draft goes in with one token.
    loop = [5, 6, 7]
    scheduler = costly(make(n_ctx=256), 0.010, 0.020)
    r = request(loop * 6, max_tokens=200)  # a 12+ token match from the start, and on
    plan = prefill(scheduler, r, first=[5])
    draft_steps = []
    for step in range(2 * EXPLORE_STEPS):
        if plan.drafts:
            draft_steps.append(step)
            assert plan.num_draft_rows == 1
        following = loop[(loop.index(r.token_ids[-1]) + 1) % 3]
        scheduler.update(plan, StepOutput(np.array([following]), drafted=[[] for _ in plan.drafts]))
        plan = scheduler.schedule()  # type: ignore[assignment]
    assert draft_steps == [EXPLORE_STEPS - 1, 2 * EXPLORE_STEPS - 1]


def test_drafts_stretch_a_step_that_other_streams_share_by_a_bounded_share() -> None:
    # Memory-bound (10 ms a step, 1 ms a row) and long matches always accepted so far:
    # every draft token of a copying loop pays.
    def sure(scheduler: Scheduler) -> Scheduler:
        for _ in range(200):
            scheduler.speculation.odds.record(MAX_MATCH, 16, 16, sampled=False)
        return costly(scheduler, 0.010, 0.001)

    alone = sure(make(draft_max=16, n_batch=64, n_ctx=512))
    plan = prefill(alone, request([5, 6, 7] * 6, max_tokens=100), first=[5])
    assert plan.num_draft_rows == 16  # one stream: the step takes the whole draft
    shared = sure(make(draft_max=16, num_slots=4, n_batch=128, n_ctx=512))
    plan = prefill(shared, *[request([5, 6, 7] * 6, max_tokens=100, rid=f"r{i}") for i in range(4)],
                   first=[5] * 4)
    # Four streams wait for the step: at most DRAFT_STEP_SHARE longer than its 4 rows alone
    # in the made-up table above (10 units a step, 1 a row; no clock): 4 rows cost 14 units,
    # so the step may hold this many rows in all.
    most_rows = int(14 * (1 + DRAFT_STEP_SHARE) + 1e-9) - 10
    assert plan.num_decode_rows == 4 and plan.num_draft_rows > 0 and plan.num_tokens <= most_rows
    asked = costly(make(draft_max=16, num_slots=4, n_batch=128, n_ctx=512), 0.010, 0.001)
    plan = prefill(asked, *[request([5, 6, 7] * 6, max_tokens=100, rid=f"r{i}", speculative=16)
                            for i in range(4)], first=[5] * 4)
    assert plan.num_draft_rows == 4 * 16  # drafts a request asked for: not bounded


def test_a_step_that_computes_a_prompt_carries_no_engine_drafts() -> None:
    def next_plan(speculative: int | None) -> StepPlan:
        scheduler = make(num_slots=2, n_batch=64, n_ctx=256)
        params: dict[str, Any] = {} if speculative is None else {"speculative": speculative}
        prefill(scheduler, request(rid="copying", **params))  # its next step would draft
        scheduler.add(request(list(range(30, 50)), rid="new"))
        plan = scheduler.schedule()
        assert plan is not None and plan.num_decode_rows == 1
        assert plan.tokens[1:21].tolist() == list(range(30, 50))  # the new prompt, whole
        return plan

    assert not next_plan(None).drafts  # the new stream's first token does not wait for drafts
    assert next_plan(4).num_draft_rows == 4  # a request that asked for drafts still gets them


def test_no_draft_where_none_can_pay() -> None:
    scheduler = costly(make(num_slots=8, n_batch=128, n_ctx=256), 0.0, 0.010)  # compute-bound
    requests = [request(rid=f"r{i}") for i in range(8)]
    plan = prefill(scheduler, *requests)
    assert plan.num_decode_rows == 8 and not plan.drafts


def test_a_request_that_asks_for_drafts_gets_them_where_the_engine_would_not() -> None:
    scheduler = costly(make(num_slots=8, n_batch=128, n_ctx=256), 0.0, 0.010)  # no draft pays
    engine_default = [request(rid=f"r{i}") for i in range(7)]
    asked = request(rid="asked", speculative=2)
    plan = prefill(scheduler, *engine_default, asked)
    assert plan.num_decode_rows == 8
    assert [count for _, _, count in plan.drafts] == [2]  # only the request that asked, all it asked


def test_drafts_a_request_asked_for_evict_a_prefix_cache_where_the_cache_is_full() -> None:
    def fill_then_draft(asked: bool) -> tuple[int, int]:
        scheduler = make(num_slots=2, n_ctx=41)  # room for the decode row and one more
        first = request(prompt=list(range(100, 130)), max_tokens=1, rid="cached")  # 30 cells stay
        scheduler.add(first)
        plan = scheduler.schedule()
        assert plan is not None
        scheduler.update(plan, StepOutput(np.array([8])))
        second = request(rid="drafting", speculative=2) if asked else request(rid="drafting")
        plan = prefill(scheduler, second)
        return plan.num_draft_rows, scheduler.kv.cells_cached()

    assert fill_then_draft(asked=False) == (1, 30)  # the engine's drafts use the one free cell
    assert fill_then_draft(asked=True) == (2, 0)    # an asked draft evicts the cache
