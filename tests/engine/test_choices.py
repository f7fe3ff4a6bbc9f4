"""One client request's share of the slots (choices.py), with no library: a request of n
choices alone takes every slot, newcomers take back slots beyond its share, and choices
that wait finish with all their tokens; driven step by step with the fake KV memory."""
from __future__ import annotations

import numpy as np

from kolosal.engine.choices import group_share
from kolosal.engine.plan import StepOutput
from kolosal.engine.request import FinishEvent, Request, RequestStatus, SamplingParams
from kolosal.engine.scheduler import Scheduler

from .fakes import FakeMemory

PROMPT = list(range(1, 41))


def make(num_slots: int = 4, n_batch: int = 64) -> Scheduler:
    return Scheduler(num_slots, 1024, n_batch, FakeMemory(), piece_of=lambda t, special: b"x",
                     is_eog=lambda t: False, clock=lambda: 0.0)


def group(rid: str, n: int, max_tokens: int = 20, prompt: list[int] | None = None) -> list[Request]:
    members = [Request(f"{rid}-{index}", list(prompt or PROMPT),
                       SamplingParams(max_tokens=max_tokens, temperature=0.0), 0.0, group=rid)
               for index in range(n)]
    for fork in members[1:]:
        fork.fork_of = members[0]
        members[0].forks.append(fork)
    return members


def single(rid: str, max_tokens: int = 4) -> Request:
    return Request(rid, [90, 91, 92], SamplingParams(max_tokens=max_tokens, temperature=0.0), 0.0)


def step(scheduler: Scheduler) -> list[Request]:
    """One step (every sampled token is 7); the requests it finished."""
    plan = scheduler.schedule()
    assert plan is not None
    emissions = scheduler.update(plan, StepOutput(np.full(len(plan.sampled), 7, dtype=np.int32)))
    return [e.request for e in emissions if isinstance(e.event, FinishEvent)]


def run_out(scheduler: Scheduler, limit: int = 200) -> list[Request]:
    finished: list[Request] = []
    for _ in range(limit):
        if not scheduler.has_work:
            return finished
        finished += step(scheduler)
    raise AssertionError("the scheduler did not run out of work")


def running_of(scheduler: Scheduler, rid: str) -> int:
    return sum(1 for r in scheduler.running if r.group == rid)


def test_the_share_is_half_the_slots_at_least_one() -> None:
    assert [group_share(slots) for slots in (1, 2, 3, 4, 8, 9)] == [1, 1, 1, 2, 4, 4]


def test_alone_a_request_takes_every_slot_and_forks_its_prompt_once() -> None:
    scheduler = make()
    members = group("big", 4)
    scheduler.add(members[0])
    step(scheduler)
    assert running_of(scheduler, "big") == 4 and scheduler.kv.slots.num_free == 0
    finished = run_out(scheduler)
    assert len(finished) == 4 and scheduler.counters.forked_choices == 3
    assert all(m.num_generated == 20 and m.token_ids[40:] == [7] * 20 for m in members)


def test_newcomers_take_back_the_slots_beyond_the_share_and_no_more() -> None:
    scheduler = make()
    members = group("big", 4)
    scheduler.add(members[0])
    step(scheduler)  # the whole prompt in one step: the choices are forked and decoding
    first = single("s1", max_tokens=30)
    scheduler.add(first)
    step(scheduler)
    assert first.status == RequestStatus.RUNNING and running_of(scheduler, "big") == 3
    assert members[3].status == RequestStatus.WAITING  # the youngest choice gave its slot
    second, third = single("s2", max_tokens=30), single("s3", max_tokens=30)
    scheduler.add(second)
    scheduler.add(third)
    step(scheduler)  # the waiting choice holds its group's place but lets s2 pass it
    assert second.status == RequestStatus.RUNNING and running_of(scheduler, "big") == 2
    assert third.status == RequestStatus.WAITING  # the big request is down to its share
    assert scheduler.counters.share_preemptions == 2 and scheduler.counters.fairness_preemptions == 0
    finished = run_out(scheduler)
    assert len(finished) == 7
    assert all(m.num_generated == 20 and m.token_ids == PROMPT + [7] * 20 for m in members)
    assert all(s.num_generated == 30 for s in (first, second, third))


def test_a_choice_that_waits_for_its_prompt_gives_its_slot_at_no_cost() -> None:
    scheduler = make(n_batch=16)  # the prompt takes three steps
    members = group("big", 4)
    scheduler.add(members[0])
    step(scheduler)
    newcomer = single("s1")
    scheduler.add(newcomer)
    step(scheduler)
    assert newcomer.status == RequestStatus.RUNNING
    assert members[3].fork_of is None and members[3] not in members[0].forks
    assert members[3].status == RequestStatus.WAITING and members[3].num_computed == 0
    finished = run_out(scheduler)
    assert len(finished) == 5
    assert all(m.token_ids == PROMPT + [7] * 20 for m in members)
    # the three that stayed were forked; the one that left took the prompt's cells from a slot
    assert scheduler.counters.forked_choices == 2 and scheduler.counters.prefix_copies >= 1


def test_beside_others_a_request_starts_with_its_share_and_the_rest_wait() -> None:
    scheduler = make(num_slots=8)
    busy = single("busy", max_tokens=100)
    scheduler.add(busy)
    step(scheduler)
    members = group("big", 8)
    scheduler.add(members[0])
    queued_after = single("after", max_tokens=3)
    scheduler.add(queued_after)
    step(scheduler)
    assert running_of(scheduler, "big") == 4  # its share: 4 of 8 while "after" waits
    assert queued_after.status == RequestStatus.RUNNING
    finished = run_out(scheduler)
    assert len(finished) == 10
    assert all(m.token_ids == PROMPT + [7] * 20 for m in members)


def test_a_choice_beyond_the_share_waits_without_preempting() -> None:
    scheduler = make(num_slots=2)
    members = group("big", 2)
    scheduler.add(members[0])
    step(scheduler)
    urgent = Request("urgent", [5, 6], SamplingParams(max_tokens=3, temperature=0.0), 0.0)
    scheduler.add(urgent)
    step(scheduler)
    assert urgent.status == RequestStatus.RUNNING and running_of(scheduler, "big") == 1
    # the waiting choice finds the slots full and its request at its share: it waits
    step(scheduler)
    assert members[1].status == RequestStatus.WAITING and scheduler.counters.share_preemptions == 1
    run_out(scheduler)
    assert all(m.token_ids == PROMPT + [7] * 20 for m in members)


def test_an_aborted_choice_that_waits_leaves_the_queue() -> None:
    scheduler = make()
    members = group("big", 4)
    scheduler.add(members[0])
    step(scheduler)
    scheduler.add(single("s1", max_tokens=30))
    step(scheduler)
    assert members[3].status == RequestStatus.WAITING and scheduler.num_waiting == 1
    assert scheduler.abort(members[3])
    assert scheduler.num_waiting == 0 and members[3].status == RequestStatus.CANCELLED
    assert len(run_out(scheduler)) == 4
