"""Scheduler planning with no library: a fake KV memory that records removals."""
from __future__ import annotations

from typing import Any

import numpy as np

from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import FinishEvent, Request, RequestStatus, SamplingParams, TokenEvent
from kolosal.engine.scheduler import Scheduler, SchedulerPolicy

from .fakes import FakeMemory


def make(num_slots: int = 2, n_ctx: int = 64, n_batch: int = 8, **policy: Any) -> Scheduler:
    return Scheduler(num_slots, n_ctx, n_batch, FakeMemory(), piece_of=lambda t, special: f"<{t}>".encode(),
                     is_eog=lambda t: t == 0, clock=lambda: 0.0, policy=SchedulerPolicy(**policy))


def request(prompt: list[int], max_tokens: int = 4, rid: str = "r") -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0), 0.0)


def test_prefill_is_chunked_by_the_token_budget_and_decode_goes_first() -> None:
    scheduler = make(n_batch=8)
    short, long = request([1, 2], rid="short"), request(list(range(1, 21)), rid="long")
    scheduler.add(short)
    scheduler.add(long)
    plan = scheduler.schedule()
    assert plan is not None
    assert plan.scheduled == [(short, 2), (long, 6)]
    assert plan.sampled == [short] and plan.output_rows.tolist() == [1]
    scheduler.update(plan, StepOutput(np.array([7])))
    plan = scheduler.schedule()
    assert plan is not None
    # The decoding request's single token leads; the long prompt takes the rest.
    assert plan.scheduled == [(short, 1), (long, 7)]
    assert plan.tokens[0] == 7 and plan.positions[0] == 2


def test_finish_on_max_tokens_frees_the_slot_and_keeps_the_prefix() -> None:
    scheduler = make()
    req = request([5, 6, 7], max_tokens=2)
    scheduler.add(req)
    events = []
    for token in (8, 9):
        plan = scheduler.schedule()
        assert plan is not None
        events += scheduler.update(plan, StepOutput(np.array([token])))
    assert isinstance(events[0].event, TokenEvent)
    finish = events[-1].event
    assert isinstance(finish, FinishEvent) and finish.finish_reason.value == "length"
    assert finish.usage.completion_tokens == 2
    assert req.status == RequestStatus.FINISHED
    assert scheduler.kv.slots.num_free == 2
    assert scheduler.kv.slots.slots[0].cached_ids == [5, 6, 7, 8]  # the last token never ran


def after_a_cached_request(second: Request) -> tuple[Scheduler, StepPlan]:
    """The plan for ``second`` once [1, 2, 3, 4, 5] ran and left its cache."""
    scheduler = make()
    first = request([1, 2, 3, 4, 5], max_tokens=1)
    scheduler.add(first)
    plan = scheduler.schedule()
    assert plan is not None
    scheduler.update(plan, StepOutput(np.array([9])))
    scheduler.add(second)
    plan = scheduler.schedule()
    assert plan is not None
    return scheduler, plan


def test_prefix_cache_is_reused_by_the_next_request() -> None:
    second = request([1, 2, 3, 4, 6, 7], max_tokens=1)
    scheduler, plan = after_a_cached_request(second)
    assert second.num_cached == 4 and plan.scheduled == [(second, 2)]
    assert scheduler.counters.cache_hits == 1


def test_a_request_without_cache_prompt_computes_its_whole_prompt() -> None:
    second = Request("uncached", [1, 2, 3, 4, 6],
                     SamplingParams(max_tokens=1, temperature=0.0, cache_prompt=False), 0.0)
    scheduler, plan = after_a_cached_request(second)
    assert second.num_cached == 0 and plan.scheduled == [(second, 5)]
    assert scheduler.counters.cache_hits == 0


def memory_of(scheduler: Scheduler) -> FakeMemory:
    memory = scheduler.kv.memory
    assert isinstance(memory, FakeMemory)
    return memory


SYSTEM = list(range(100, 120))  # a shared system prompt


def test_a_prefix_is_shared_from_a_running_slot_instead_of_recomputed() -> None:
    scheduler = make(num_slots=3, n_batch=64)
    first = request(SYSTEM + [1, 2, 3], max_tokens=20, rid="first")
    scheduler.add(first)
    plan = scheduler.schedule()
    assert plan is not None
    scheduler.update(plan, StepOutput(np.array([9])))  # first decodes now
    second = request(SYSTEM + [4, 5], max_tokens=20, rid="second")
    scheduler.add(second)
    plan = scheduler.schedule()
    assert plan is not None
    assert second.seq_id != first.seq_id
    assert memory_of(scheduler).copied_ranges == [(first.seq_id, second.seq_id, 0, len(SYSTEM))]
    assert second.num_cached == len(SYSTEM) and second.num_computed == len(SYSTEM)
    assert plan.scheduled == [(first, 1), (second, 2)]  # only its own suffix is computed
    assert plan.positions[1:].tolist() == [20, 21]
    assert scheduler.counters.prefix_copies == 1 and scheduler.counters.cached_tokens == len(SYSTEM)


def test_a_free_slots_cache_is_lent_and_stays_whole() -> None:
    scheduler = make(num_slots=3, n_batch=64)
    first = request(SYSTEM + [1, 2, 3], max_tokens=1, rid="first")
    scheduler.add(first)
    plan = scheduler.schedule()
    assert plan is not None
    scheduler.update(plan, StepOutput(np.array([9])))  # finished: its slot caches the conversation
    cached = list(scheduler.kv.slots.slots[first.seq_id].cached_ids)
    second = request(SYSTEM + [4, 5], max_tokens=1, rid="second")
    scheduler.add(second)
    scheduler.schedule()
    # It took an empty slot and borrowed the shared prefix: the first conversation's cache
    # is still there for its next turn.
    assert second.seq_id != first.seq_id and second.num_cached == len(SYSTEM)
    assert scheduler.kv.slots.slots[first.seq_id].cached_ids == cached
    assert memory_of(scheduler).copied == [(first.seq_id, second.seq_id)]


def test_a_request_that_extends_a_whole_cache_takes_that_slot() -> None:
    scheduler = make(num_slots=3, n_batch=64)
    turn = request(SYSTEM + [1, 2], max_tokens=1, rid="turn1")
    scheduler.add(turn)
    plan = scheduler.schedule()
    assert plan is not None
    scheduler.update(plan, StepOutput(np.array([9])))
    nxt = request(SYSTEM + [1, 2, 7, 8], max_tokens=1, rid="turn2")
    scheduler.add(nxt)
    scheduler.schedule()
    assert nxt.seq_id == turn.seq_id and nxt.num_cached == len(SYSTEM) + 2
    assert memory_of(scheduler).copied == []


def test_a_prefix_whose_window_cells_were_reused_is_not_shared() -> None:
    scheduler = make(num_slots=3, n_ctx=128, n_batch=64, swa_window=8)
    first = request(SYSTEM + [1, 2, 3], max_tokens=20, rid="first")
    scheduler.add(first)
    plan = scheduler.schedule()
    assert plan is not None
    scheduler.update(plan, StepOutput(np.array([9])))
    memory_of(scheduler).pos_min[first.seq_id] = 14  # cells of positions 0..13 were reused
    second = request(SYSTEM + [4, 5], max_tokens=20, rid="second")  # needs positions >= 13
    scheduler.add(second)
    scheduler.schedule()
    assert second.num_cached == 0 and memory_of(scheduler).copied == []
    memory_of(scheduler).pos_min[first.seq_id] = 13
    third = request(SYSTEM + [6, 7], max_tokens=20, rid="third")
    scheduler.add(third)
    scheduler.schedule()
    assert third.num_cached == len(SYSTEM)


def test_the_prefill_budget_bounds_prompt_tokens_while_sequences_decode() -> None:
    scheduler = make(num_slots=3, n_ctx=256, n_batch=64, prefill_budget=16)
    first = request(list(range(1, 101)), rid="first")
    scheduler.add(first)
    plan = scheduler.schedule()
    assert plan is not None and plan.num_tokens == 64  # nothing decodes: the whole n_batch
    scheduler.update(plan, StepOutput(np.empty(0, dtype=np.int32)))
    plan = scheduler.schedule()
    assert plan is not None and plan.num_tokens == 36
    scheduler.update(plan, StepOutput(np.array([9])))
    second = request(list(range(200, 240)), rid="second")
    scheduler.add(second)
    plan = scheduler.schedule()  # "first" decodes: "second" gets 16 prompt tokens per step
    assert plan is not None
    assert plan.num_decode_rows == 1 and plan.scheduled == [(first, 1), (second, 16)]
