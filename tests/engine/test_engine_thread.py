"""The engine thread's bookkeeping, driven step by step with a fake runner (no library)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kolosal.engine.engine_thread import EngineThread
from kolosal.engine.errors import EngineOverloadedError
from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import ErrorEvent, Event, EventSink, Request, SamplingParams

from .fakes import FakeResult, FakeRunner


def request(name: str) -> Request:
    return Request(name, [1, 2, 3, 4], SamplingParams(max_tokens=20, temperature=0.0), 0.0)


def test_the_queue_count_follows_preemptions() -> None:
    thread = EngineThread(FakeRunner(), n_parallel=2, n_batch=16, max_queue=2, name="fake")
    thread.submit(request("a"))
    thread.submit(request("b"))
    with pytest.raises(EngineOverloadedError):
        thread.submit(request("refused"))
    thread._take_commands(block=False)
    assert thread.num_queued == 2
    thread._step()
    assert thread.num_queued == 0  # both admitted
    for _ in range(10):
        thread._step()
        if thread.scheduler.counters.preemptions:
            break
    assert thread.scheduler.counters.preemptions == 1
    assert thread.num_queued == 1  # the preempted request waits again, counted once
    thread.submit(request("c"))
    with pytest.raises(EngineOverloadedError):  # the limit did not loosen
        thread.submit(request("d"))
    assert thread.num_queued == 2


def test_a_refused_group_takes_no_queue_room() -> None:
    thread = EngineThread(FakeRunner(), n_parallel=2, n_batch=16, max_queue=2, name="fake")
    leader = request("c0")
    for index in (1, 2):
        fork = request(f"c{index}")
        fork.fork_of = leader
        leader.forks.append(fork)
    with pytest.raises(EngineOverloadedError):
        thread.submit(leader)
    assert thread.num_queued == 0



class BrokenRunner(FakeRunner):
    """Returns a malformed output: the step breaks inside update(), after it finished the
    one-token request."""

    def run(self, plan: StepPlan) -> FakeResult:
        return FakeResult(StepOutput(np.full(len(plan.sampled), 5, dtype=np.int32),
                                     prompt_logprobs=[("not", "a pair", "!")]))  # type: ignore[list-item]


async def test_a_step_that_breaks_after_finishing_a_request_still_answers_it() -> None:
    thread = EngineThread(BrokenRunner(), n_parallel=2, n_batch=16, max_queue=4, name="broken")
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    done = Request("one-token", [1, 2, 3], SamplingParams(max_tokens=1, temperature=0.0), 0.0,
                   sink=EventSink(asyncio.get_running_loop(), events))
    thread.start()
    try:
        thread.submit(done)
        _, event = await asyncio.wait_for(events.get(), timeout=30)
        assert isinstance(event, ErrorEvent)
        assert thread.scheduler.kv.slots.num_free == 2
    finally:
        thread.shutdown()
        await asyncio.to_thread(thread.join)
