"""Scheduler planning with no library: a fake KV memory that records removals."""
from __future__ import annotations

import numpy as np

from kolosal.engine.request import FinishEvent, Request, RequestStatus, SamplingParams, TokenEvent
from kolosal.engine.scheduler import Scheduler, StepOutput


class FakeMemory:
    def __init__(self) -> None:
        self.removed: list[tuple[int, int, int]] = []
        self.copied: list[tuple[int, int]] = []

    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool:
        self.removed.append((seq_id, start, end))
        return True

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        self.copied.append((src, dst))

    def seq_pos_min(self, seq_id: int) -> int:
        return 0


def make(num_slots: int = 2, n_ctx: int = 64, n_batch: int = 8) -> Scheduler:
    return Scheduler(num_slots, n_ctx, n_batch, FakeMemory(), piece_of=lambda t, special: f"<{t}>".encode(),
                     is_eog=lambda t: t == 0, clock=lambda: 0.0)


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
    assert scheduler.slots.num_free == 2
    assert scheduler.slots.slots[0].cached_ids == [5, 6, 7, 8]  # the last token never ran


def test_prefix_cache_is_reused_by_the_next_request() -> None:
    scheduler = make()
    first = request([1, 2, 3, 4, 5], max_tokens=1)
    scheduler.add(first)
    plan = scheduler.schedule()
    assert plan is not None
    scheduler.update(plan, StepOutput(np.array([9])))
    second = request([1, 2, 3, 4, 6, 7], max_tokens=1)
    scheduler.add(second)
    plan = scheduler.schedule()
    assert plan is not None
    assert second.num_cached == 4 and plan.scheduled == [(second, 2)]
    assert scheduler.counters.cache_hits == 1


def test_eog_finishes_with_stop() -> None:
    scheduler = make()
    req = request([1, 2])
    scheduler.add(req)
    plan = scheduler.schedule()
    assert plan is not None
    (emission,) = scheduler.update(plan, StepOutput(np.array([0])))
    assert isinstance(emission.event, FinishEvent)
    assert emission.event.finish_reason.value == "stop"


def test_abort_frees_slot_and_waiting_requests_get_it() -> None:
    scheduler = make(num_slots=1)
    a, b = request([1, 2], rid="a"), request([3, 4], rid="b")
    scheduler.add(a)
    scheduler.add(b)
    plan = scheduler.schedule()
    assert plan is not None and plan.scheduled == [(a, 2)]
    assert scheduler.abort(a)
    plan = scheduler.schedule()
    assert plan is not None and plan.scheduled == [(b, 2)]


def test_kv_pressure_preempts_the_youngest_and_it_resumes_later() -> None:
    scheduler = make(num_slots=2, n_ctx=12, n_batch=16)
    a, b = request([1, 2, 3, 4], max_tokens=20, rid="a"), request([5, 6, 7, 8], max_tokens=20, rid="b")
    scheduler.add(a)
    scheduler.add(b)
    for _ in range(4):
        plan = scheduler.schedule()
        assert plan is not None
        scheduler.update(plan, StepOutput(np.array([10] * len(plan.sampled))))
    assert scheduler.counters.preemptions >= 1
    assert b.status == RequestStatus.WAITING and b.num_computed == 0
    assert scheduler.kv_cells_used() <= 12


def test_n_choices_share_one_prefill_and_fork_the_kv() -> None:
    scheduler = make(num_slots=3, n_batch=4)
    leader = request([1, 2, 3, 4, 5, 6], max_tokens=2, rid="c0")
    forks = [request([1, 2, 3, 4, 5, 6], max_tokens=2, rid=f"c{i}") for i in (1, 2)]
    for fork in forks:
        fork.fork_of = leader
        leader.forks.append(fork)
    scheduler.add(leader)
    assert scheduler.num_waiting == 3
    plan = scheduler.schedule()
    assert plan is not None
    assert plan.scheduled == [(leader, 4)] and plan.sampled == []  # siblings compute nothing
    assert scheduler.slots.num_free == 0
    scheduler.update(plan, StepOutput(np.empty(0, dtype=np.int32)))
    plan = scheduler.schedule()
    assert plan is not None
    assert plan.scheduled == [(leader, 2)]
    assert plan.sampled == [leader, *forks] and plan.output_rows.tolist() == [1, 1, 1]
    scheduler.update(plan, StepOutput(np.array([7, 8, 9])))
    memory = scheduler.memory
    assert isinstance(memory, FakeMemory)
    assert memory.copied == [(leader.seq_id, forks[0].seq_id), (leader.seq_id, forks[1].seq_id)]
    assert [r.token_ids[-1] for r in (leader, *forks)] == [7, 8, 9]
    assert all(r.num_computed == 6 for r in (leader, *forks))
    plan = scheduler.schedule()
    assert plan is not None and plan.num_decode_rows == 3  # each choice decodes on its own


def test_a_sibling_whose_first_request_is_cancelled_computes_the_prompt_itself() -> None:
    scheduler = make(num_slots=2, n_batch=4)
    leader, fork = request([1, 2, 3, 4, 5, 6], rid="c0"), request([1, 2, 3, 4, 5, 6], rid="c1")
    fork.fork_of = leader
    leader.forks.append(fork)
    scheduler.add(leader)
    plan = scheduler.schedule()
    assert plan is not None and plan.scheduled == [(leader, 4)]
    scheduler.update(plan, StepOutput(np.empty(0, dtype=np.int32)))
    assert scheduler.abort(leader)
    assert fork.fork_of is None
    plan = scheduler.schedule()
    assert plan is not None and plan.scheduled == [(fork, 4)]


def test_prompt_only_request_asks_logits_for_every_prompt_row_and_finishes_unsampled() -> None:
    scheduler = make(n_batch=16)
    req = Request("echo", [1, 2, 3, 4], SamplingParams(max_tokens=0, logprobs=1, prompt_logprobs=True), 0.0)
    scheduler.add(req)
    plan = scheduler.schedule()
    assert plan is not None
    assert plan.logits.tolist() == [1, 1, 1, 1] and plan.sampled == []
    assert plan.prompt_rows == [(req, 0, 0)]
    (emission,) = scheduler.update(plan, StepOutput(np.empty(0, dtype=np.int32)))
    assert isinstance(emission.event, FinishEvent)
    assert emission.event.usage.completion_tokens == 0
    assert emission.event.prompt_logprobs[0].logprob is None  # the first token has no context


class FakeConstraint:
    """Accepts tokens below 50 and is complete after three of them."""

    def __init__(self) -> None:
        self.count = 0

    def consume(self, token: int) -> bool:
        self.count += 1
        return token < 50

    @property
    def is_stopped(self) -> bool:
        return self.count >= 3

    error = "rejected"


def test_a_complete_grammar_finishes_with_stop_and_a_rejected_token_fails() -> None:
    scheduler = make()
    done, broken = request([1, 2], max_tokens=10, rid="done"), request([3, 4], max_tokens=10, rid="broken")
    done.constraint = FakeConstraint()  # type: ignore[assignment]
    broken.constraint = FakeConstraint()  # type: ignore[assignment]
    scheduler.add(done)
    scheduler.add(broken)
    events = []
    for tokens in ([5, 60], [6], [7]):
        plan = scheduler.schedule()
        assert plan is not None
        events += scheduler.update(plan, StepOutput(np.array(tokens)))
    by_request = {e.request.request_id: e.event for e in events if not isinstance(e.event, TokenEvent)}
    assert isinstance(by_request["done"], FinishEvent) and by_request["done"].finish_reason.value == "stop"
    assert by_request["broken"].__class__.__name__ == "ErrorEvent"
