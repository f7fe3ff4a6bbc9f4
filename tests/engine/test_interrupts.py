"""A tenant's first request stops the decode step in flight (kolosal/engine/interrupts.py):
the policy alone, the engine thread's handling of a stopped step with a fake runner, and the
real model: a stopped step leaves nothing behind."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from kolosal.engine import EngineConfig, EngineRegistry, FinishEvent, SamplingParams, Tenancy, TokenEvent
from kolosal.engine import interrupts as interrupts_module
from kolosal.engine.engine_thread import EngineThread
from kolosal.engine.interrupts import StepInterrupts, TenantsInFlight
from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import Request

from ..near_tie import TOP_LOGPROBS, assert_same_or_near_tie, engine_steps
from .fakes import FakeResult, FakeRunner
from .helpers import greedy, loaded, run, wait_until_idle

FLOOD_TOKENS = 96
NEWCOMER_TOKENS = 6


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.policy = StepInterrupts(lambda: self.calls.append("interrupt"),
                                     lambda: self.calls.append("resume"))

    def stops(self) -> int:
        return self.calls.count("interrupt")


def test_only_a_decode_step_after_a_long_completed_one_may_be_stopped() -> None:
    r = Recorder()
    policy = r.policy
    policy.arm(True)
    policy.request()
    assert r.stops() == 0  # no step measured yet
    policy.disarm(0.2, stopped=False)
    policy.arm(False)  # prompt-only step
    policy.request()
    assert r.stops() == 0
    policy.disarm(0.01, stopped=False)
    policy.arm(True)  # the last step was short (a GPU's are): nothing to win
    policy.request()
    assert r.stops() == 0
    policy.disarm(0.2, stopped=False)
    policy.arm(True)
    policy.request()
    assert r.stops() == 1
    policy.disarm(0.05, stopped=True)
    policy.arm(True)  # never two steps in a row
    policy.request()
    assert r.stops() == 1
    policy.disarm(0.2, stopped=False)
    policy.arm(True)
    policy.request()
    assert r.stops() == 2
    assert r.calls.count("resume") == 6  # every arm clears what an earlier request left


def test_a_step_past_half_its_expected_time_is_let_finish() -> None:
    r = Recorder()
    r.policy.arm(True)
    r.policy.disarm(0.02, stopped=False)  # a 20 ms step (MIN_STEP_S patched below)
    original = interrupts_module.MIN_STEP_S
    interrupts_module.MIN_STEP_S = 0.0
    try:
        r.policy.arm(True)
        time.sleep(0.011)  # past half of the 20 ms the previous step took
        r.policy.request()
        assert r.stops() == 0
        r.policy.disarm(0.02, stopped=False)
        r.policy.arm(True)
        r.policy.request()  # at once: within the first half
        assert r.stops() == 1
    finally:
        interrupts_module.MIN_STEP_S = original


def test_a_request_between_steps_stops_nothing() -> None:
    r = Recorder()
    r.policy.arm(True)
    r.policy.disarm(0.2, stopped=False)
    r.policy.request()
    assert r.stops() == 0


class StoppingRunner(FakeRunner):
    """Reports the first decode step with decode rows as stopped, then runs as FakeRunner."""

    def __init__(self) -> None:
        super().__init__()
        self.plans: list[list[tuple[str, int]]] = []
        self.stopped_once = False

    def run(self, plan: StepPlan) -> FakeResult:
        self.plans.append([(r.request_id, r.num_computed) for r in plan.sampled])
        if plan.num_decode_rows and not self.stopped_once:
            self.stopped_once = True
            return FakeResult(StepOutput(np.empty(0, dtype=np.int32)), ok=False, stopped=True,
                              status_name="ABORTED")
        return super().run(plan)


def test_a_stopped_step_commits_nothing_and_is_planned_again() -> None:
    runner = StoppingRunner()
    thread = EngineThread(runner, n_parallel=2, n_batch=16, max_queue=4, name="fake")
    requests = [Request(name, [1, 2, 3, 4], SamplingParams(max_tokens=4, temperature=0.0), 0.0)
                for name in ("a", "b")]
    for request in requests:
        thread.submit(request)
    thread._take_commands(block=False)
    thread._step()  # both prompts
    before = [(r.num_computed, list(r.token_ids)) for r in requests]
    thread._step()  # the first decode step: stopped
    assert [(r.num_computed, list(r.token_ids)) for r in requests] == before
    assert thread.scheduler.counters.stopped_steps == 1
    assert thread.snapshot().stopped_steps == 1
    thread._step()  # the same rows again, now committed
    assert runner.plans[2] == runner.plans[1]
    assert all(len(r.token_ids) == len(ids) + 1 for r, (_, ids) in zip(requests, before, strict=True))



@pytest.mark.model
async def test_a_stopped_decode_leaves_no_trace(registry: EngineRegistry, model_path: Path) -> None:
    """Stopped steps (forced: a newcomer stops the step in flight whatever its length and
    progress) give the same greedy texts as runs where nothing stops, up to near ties; the
    engine ends idle."""
    flood_prompts = ["def fibonacci(n):", "In 1969, astronauts", "The quick brown fox"]
    newcomer_prompt = "Water boils at"
    config = EngineConfig("stops", str(model_path), n_ctx=2048, n_parallel=8)
    async with loaded(registry, config) as engine:
        alone = [await run(engine, p, greedy(FLOOD_TOKENS, logprobs=TOP_LOGPROBS)) for p in flood_prompts]
        alone.append(await run(engine, newcomer_prompt, greedy(NEWCOMER_TOKENS, logprobs=TOP_LOGPROBS)))
        references = [engine_steps(r.logprobs, engine.token_piece) for r in alone]
    original = interrupts_module.MIN_STEP_S, interrupts_module.STOP_WITHIN
    interrupts_module.MIN_STEP_S, interrupts_module.STOP_WITHIN = 0.0, 1e9
    try:
        async with loaded(registry, EngineConfig("stops-2", str(model_path), n_ctx=2048,
                                                 n_parallel=8)) as engine:
            async def tenant_run(prompt: str, tokens: int, tenant: str) -> str:
                ids = await engine.tokenize(prompt)
                chunks = []
                async for _, event in engine.generate(ids, greedy(tokens), f"{tenant}-{prompt[:8]}",
                                                      tenancy=Tenancy(tenant)):
                    if isinstance(event, (TokenEvent, FinishEvent)):
                        chunks.append(event.text)
                return "".join(chunks)

            flood = [asyncio.create_task(tenant_run(p, FLOOD_TOKENS, "a")) for p in flood_prompts]
            await asyncio.sleep(0.2)  # the flood decodes
            newcomers = []
            for number in range(20):  # each a tenant of its own: its first request stops a step
                newcomers.append(await tenant_run(newcomer_prompt, NEWCOMER_TOKENS, f"new-{number}"))
                if engine.stats()["stopped_steps"] >= 2 or all(task.done() for task in flood):
                    break
            texts = await asyncio.gather(*flood)
            stats = await wait_until_idle(engine)
            assert stats["stopped_steps"] >= 1
            assert stats["slots_busy"] == 0
    finally:
        interrupts_module.MIN_STEP_S, interrupts_module.STOP_WITHIN = original
    for prompt, reference, text in zip(flood_prompts, references[:-1], texts, strict=True):
        assert_same_or_near_tie(reference, text, prompt)
    for text in newcomers:
        assert_same_or_near_tie(references[-1], text, newcomer_prompt)


def test_a_newcomer_is_a_tenant_first_request_beside_others() -> None:
    tenants = TenantsInFlight()
    assert not tenants.arrive("a")  # alone: nothing to stop
    assert not tenants.arrive("a")  # a tenant with a request in flight waits its turn
    assert tenants.arrive("b")
    tenants.leave("b")
    assert tenants.arrive("b")  # again once its requests are done
    tenants.leave("a")
    tenants.leave("a")
    tenants.leave("b")
    assert not tenants.arrive("c")
