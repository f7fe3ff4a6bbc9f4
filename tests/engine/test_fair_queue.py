"""Fair admission between tenants, with no library: the queue's order (priority classes,
start-time fair queuing by weight) and the scheduler's preemption of a tenant over its fair
share, driven step by step with the fake KV memory."""
from __future__ import annotations

import numpy as np

from kolosal.engine.fair_queue import FairQueue
from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import FinishEvent, Request, RequestStatus, SamplingParams, Tenancy
from kolosal.engine.scheduler import Scheduler, SchedulerPolicy

from .fakes import FakeMemory


def request(rid: str, tenant: str = "", weight: float = 1.0, priority: int = 0, max_tokens: int = 4,
            prompt: list[int] | None = None) -> Request:
    return Request(rid, prompt or [1, 2, 3, 4], SamplingParams(max_tokens=max_tokens, temperature=0.0),
                   0.0, tenancy=Tenancy(tenant, weight, priority))


def order(queue: FairQueue) -> list[str]:
    names = []
    while queue:
        names.append(queue.pop().request_id)
    return names


def test_one_tenant_is_first_come_first_served() -> None:
    queue = FairQueue()
    for index in range(6):
        queue.push(request(f"r{index}"))
    assert order(queue) == [f"r{index}" for index in range(6)]


def test_a_flood_queues_behind_itself_not_ahead_of_another_tenant() -> None:
    queue = FairQueue()
    for index in range(20):
        queue.push(request(f"a{index}", "a"))
    queue.push(request("b0", "b"))
    admitted = order(queue)
    assert admitted.index("b0") <= 1  # after at most the flood's first request


def test_weights_split_admissions_in_proportion() -> None:
    queue = FairQueue()
    for index in range(30):
        queue.push(request(f"a{index}", "a", weight=2.0))
        queue.push(request(f"b{index}", "b", weight=1.0))
    first = order(queue)[:30]
    share_a = sum(name.startswith("a") for name in first)
    assert 19 <= share_a <= 21  # 2:1 of equal-cost requests


def test_a_lower_priority_class_goes_first_whatever_its_arrival() -> None:
    queue = FairQueue()
    queue.push(request("late-low", priority=1))
    queue.push(request("normal"))
    queue.push(request("urgent", priority=-1))
    assert order(queue) == ["urgent", "normal", "late-low"]


def test_a_request_back_in_line_keeps_its_place() -> None:
    queue = FairQueue()
    first, second = request("first"), request("second")
    queue.push(first)
    queue.push(second)
    assert queue.pop() is first
    queue.push(first)  # preempted: back ahead of the one that came after it
    assert order(queue) == ["first", "second"]


def test_after_an_idle_spell_every_tenant_starts_even() -> None:
    queue = FairQueue()
    for index in range(10):
        queue.push(request(f"a{index}", "a"))
    order(queue)  # all admitted: the queue is empty, a's finish tag is far ahead
    queue.push(request("a-next", "a"))
    queue.push(request("b-next", "b"))
    assert order(queue) == ["a-next", "b-next"]  # first come, first served again


def make(num_slots: int, n_batch: int = 64) -> Scheduler:
    return Scheduler(num_slots, 256, n_batch, FakeMemory(), piece_of=lambda t, special: b"x",
                     is_eog=lambda t: False, clock=lambda: 0.0)


def step(scheduler: Scheduler, token: int = 7) -> list[FinishEvent]:
    plan = scheduler.schedule()
    assert plan is not None
    emissions = scheduler.update(plan, StepOutput(np.full(len(plan.sampled), token, dtype=np.int32)))
    return [e.event for e in emissions if isinstance(e.event, FinishEvent)]


def test_a_tenant_under_its_share_takes_a_slot_from_one_over_it_once() -> None:
    scheduler = make(num_slots=2)
    flood = [request(f"a{index}", "a", max_tokens=50) for index in range(4)]
    for member in flood:
        scheduler.add(member)
    step(scheduler)
    assert [r.request_id for r in scheduler.running] == ["a0", "a1"]
    newcomer = request("b0", "b", max_tokens=50)
    scheduler.add(newcomer)
    step(scheduler)
    assert newcomer.status == RequestStatus.RUNNING
    assert scheduler.counters.fairness_preemptions == 1
    victim = flood[1]
    assert victim.status == RequestStatus.WAITING and victim.num_computed == 0
    for _ in range(5):  # a at its share, b at its share: no more preemptions either way
        step(scheduler)
    assert scheduler.counters.fairness_preemptions == 1
    assert sorted(r.request_id for r in scheduler.running) == ["a0", "b0"]


def test_one_tenant_alone_is_never_preempted_for_fairness() -> None:
    scheduler = make(num_slots=2)
    for index in range(5):
        scheduler.add(request(f"a{index}", "a", max_tokens=3))
    finished = []
    for _ in range(20):
        if not scheduler.has_work:
            break
        finished += step(scheduler)
    assert len(finished) == 5 and scheduler.counters.fairness_preemptions == 0


def test_a_better_priority_class_preempts_a_worse_one() -> None:
    scheduler = make(num_slots=1)
    background = request("background", priority=1, max_tokens=50)
    scheduler.add(background)
    step(scheduler)
    urgent = request("urgent", priority=0, max_tokens=2)
    scheduler.add(urgent)
    step(scheduler)
    assert urgent.status == RequestStatus.RUNNING and background.status == RequestStatus.WAITING
    finished = step(scheduler)
    assert urgent.status == RequestStatus.FINISHED and len(finished) == 1
    step(scheduler)
    assert background.status == RequestStatus.RUNNING  # and it resumes with its tokens so far
    assert background.num_generated >= 1


def test_a_preempted_request_resumes_and_finishes_with_all_its_tokens() -> None:
    scheduler = make(num_slots=2)
    scheduler.add(request("a0", "a", max_tokens=12))
    victim = request("victim", "a", max_tokens=6)
    scheduler.add(victim)
    step(scheduler)
    step(scheduler)
    scheduler.add(request("b0", "b", max_tokens=2))
    finished: list[FinishEvent] = []
    for _ in range(20):
        if not scheduler.has_work:
            break
        finished += step(scheduler)
    assert scheduler.counters.fairness_preemptions == 1
    assert victim.status == RequestStatus.FINISHED
    assert victim.token_ids == [1, 2, 3, 4] + [7] * 6
    assert sorted(event.usage.completion_tokens for event in finished) == [2, 6, 12]


def test_members_of_an_n_group_are_never_the_victim_before_their_prompt_is_shared() -> None:
    scheduler = make(num_slots=4, n_batch=16)
    prompt = list(range(1, 101))  # prefilled over several steps
    leader = request("a-0", "a", max_tokens=50, prompt=prompt)
    sibling = request("a-1", "a", max_tokens=50, prompt=prompt)
    sibling.fork_of = leader
    leader.forks.append(sibling)
    scheduler.add(leader)
    others = [request(f"a{index}", "a", max_tokens=50) for index in range(2)]
    for other in others:
        scheduler.add(other)
    assert scheduler.schedule() is not None  # the group holds two slots (its share), prompt half done
    newcomer = request("b0", "b")
    scheduler.add(newcomer)
    scheduler.schedule()
    assert newcomer.status == RequestStatus.RUNNING and scheduler.counters.fairness_preemptions == 1
    assert others[1].status == RequestStatus.WAITING  # not a member of the group
    assert leader.status == sibling.status == RequestStatus.RUNNING and sibling.fork_of is leader


def rows_of(plan: StepPlan) -> list[tuple[str, int]]:
    return [(member.request_id, count) for member, count in plan.scheduled]


def flooded(num_slots: int = 4, policy: SchedulerPolicy | None = None) -> Scheduler:
    """Tenant a's two sequences decoding, slots to spare."""
    scheduler = Scheduler(num_slots, 256, 64, FakeMemory(), piece_of=lambda t, special: b"x",
                          is_eog=lambda t: False, clock=lambda: 0.0, policy=policy)
    for index in range(2):
        scheduler.add(request(f"a{index}", "a", max_tokens=50))
    step(scheduler)
    return scheduler


def test_a_tenant_with_nothing_decoding_gets_a_step_of_its_own_for_its_prompt() -> None:
    """Its first token comes after one short step instead of a step that carries the
    flood's decode rows too; then everyone decodes together again."""
    scheduler = flooded()
    scheduler.add(request("b0", "b", max_tokens=50, prompt=[11, 12, 13, 14]))
    plan = scheduler.schedule()
    assert plan is not None and rows_of(plan) == [("b0", 4)] and plan.num_decode_rows == 0
    scheduler.update(plan, StepOutput(np.full(len(plan.sampled), 7, dtype=np.int32)))
    plan = scheduler.schedule()
    assert plan is not None and sorted(rows_of(plan)) == [("a0", 1), ("a1", 1), ("b0", 1)]


def test_prompt_steps_never_come_twice_in_a_row() -> None:
    scheduler = flooded(num_slots=6)
    scheduler.add(request("b0", "b", max_tokens=50, prompt=[11, 12, 13, 14]))
    scheduler.add(request("c0", "c", max_tokens=50, prompt=[21, 22, 23, 24]))
    step(scheduler)  # b0 and c0 share one prompt step
    scheduler.add(request("d0", "d", max_tokens=50, prompt=[31, 32, 33, 34]))
    plan = scheduler.schedule()
    assert plan is not None
    assert sorted(rows_of(plan)) == [("a0", 1), ("a1", 1), ("b0", 1), ("c0", 1), ("d0", 4)]


def test_the_one_tenant_case_and_long_prompts_batch_as_before() -> None:
    scheduler = flooded()
    scheduler.add(request("a2", "a", max_tokens=50, prompt=[41, 42, 43, 44]))  # a already decodes
    plan = scheduler.schedule()
    assert plan is not None and sorted(rows_of(plan)) == [("a0", 1), ("a1", 1), ("a2", 4)]

    scheduler = flooded(policy=SchedulerPolicy(prefill_budget=8))
    scheduler.add(request("b0", "b", max_tokens=50, prompt=list(range(101, 121))))  # 20 > 8 tokens
    plan = scheduler.schedule()
    assert plan is not None and sorted(rows_of(plan)) == [("a0", 1), ("a1", 1), ("b0", 8)]


def test_two_equal_closed_loop_floods_split_the_slots_evenly() -> None:
    """A floods first and fills every slot; C's flood comes a step later. Each finished
    request is replaced by its tenant's next (closed loops), all of one length, so slots
    free in waves. A tenant at its share whose requests lead the line must not keep the
    other below its share for a wave (measured before: 24,948 vs 23,052 tokens, one wave
    of 64 steps at 20 vs 12 slots)."""
    slots = 32
    scheduler = Scheduler(slots, 5120, 512, FakeMemory(), piece_of=lambda t, special: b"x",
                          is_eog=lambda t: False, clock=lambda: 0.0)
    counter = iter(range(100_000))

    def submit(tenant: str) -> None:
        scheduler.add(request(f"{tenant}{next(counter)}", tenant, max_tokens=64, prompt=list(range(1, 21))))

    for _ in range(2 * slots):
        submit("a")
    step(scheduler)
    for _ in range(2 * slots):
        submit("c")
    tokens = {"a": 0, "c": 0}
    for _ in range(1500):
        plan = scheduler.schedule()
        assert plan is not None
        held = [member.tenancy.tenant for member in scheduler.running]
        assert abs(held.count("a") - held.count("c")) <= 2, held
        for member in plan.sampled:
            tokens[member.tenancy.tenant] += 1
        emissions = scheduler.update(plan, StepOutput(np.full(len(plan.sampled), 7, dtype=np.int32)))
        for emission in emissions:
            if isinstance(emission.event, FinishEvent):
                submit(emission.request.tenancy.tenant)
    assert abs(tokens["a"] - tokens["c"]) <= 0.01 * (tokens["a"] + tokens["c"]), tokens
