"""LoRA adapter sets with no library: one set per step, sets taking turns, prefix caches
kept per set, and how requests' and engines' adapter settings are checked."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kolosal.engine import EngineConfig, InvalidRequestError
from kolosal.engine.adapters import AdapterTurns
from kolosal.engine.lora import MAX_LORA_SCALE, LoraSpec, LoraTable
from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import Request, SamplingParams
from kolosal.engine.scheduler import Scheduler
from kolosal.options import OptionValueError

from .test_scheduler import make

A = ((0, 0.5),)
B = ((0, 1.0), (1, 1.0))  # sorted: (), A, B


def request(prompt: list[int], adapters: tuple[tuple[int, float], ...] = (), max_tokens: int = 4,
            rid: str = "r") -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0), 0.0,
                   adapters=adapters)


def step(scheduler: Scheduler) -> StepPlan:
    plan = scheduler.schedule()
    assert plan is not None
    assert all(r.adapters == plan.adapters for r, _ in plan.scheduled), "a step mixed adapter sets"
    assert all(r.adapters == plan.adapters for r in plan.sampled)
    scheduler.update(plan, StepOutput(np.full(len(plan.sampled), 7, dtype=np.int32)))
    return plan


def test_a_step_never_mixes_adapter_sets_and_the_sets_take_turns() -> None:
    scheduler = make(num_slots=4, n_batch=64)
    requests = [request([1, 2, 3], (), 6, "base"), request([1, 2, 3], A, 6, "a1"),
                request([4, 5], A, 6, "a2"), request([6, 7, 8, 9], B, 6, "b")]
    for member in requests:
        scheduler.add(member)
    sets = [step(scheduler).adapters for _ in range(9)]
    assert sets == [A, B, ()] * 3  # round-robin in sorted order from the base set, a step each
    assert all(r.num_generated == 3 for r in requests)  # each set's rows ran in its turns


def test_two_sets_alternate_so_neither_starves_a_long_prompt_included() -> None:
    scheduler = make(num_slots=2, n_ctx=256, n_batch=8)
    long = request(list(range(1, 60)), A, 2, "long")  # 59 prompt tokens: 8 steps of its own
    short = request([1, 2], B, 50, "short")
    scheduler.add(long)
    scheduler.add(short)
    plans = [step(scheduler) for _ in range(12)]
    assert [p.adapters for p in plans[:12]] == [A, B] * 6
    assert short.num_generated == 6 and long.num_computed == 48  # both advance every round


def test_one_set_at_work_takes_every_step() -> None:
    scheduler = make()
    only = request([1, 2, 3], B, 3)
    scheduler.add(only)
    assert [step(scheduler).adapters for _ in range(3)] == [B, B, B]


def test_turns_skip_sets_with_no_work_and_wrap_around() -> None:
    turns = AdapterTurns()
    waiting_fork = request([1], B)
    waiting_fork.fork_of = request([1], B)  # holds a slot but has nothing to compute yet
    running = [request([1], A), waiting_fork, request([1], ())]
    assert [turns.pick(running) for _ in range(4)] == [A, (), A, ()]
    assert turns.pick([]) == ()  # nothing at work: the last set stays


def test_no_kv_slot_on_a_step_with_a_prompt_chunk_shrinks_it_whatever_the_other_sets_run() -> None:
    scheduler = make(num_slots=4, n_batch=64)
    others = [request([1, 2], B, 20, f"b{i}") for i in range(3)]
    for member in others:
        scheduler.add(member)
    step(scheduler)  # B's prompts; A's comes next, a 3-token chunk: fewer rows than running
    scheduler.add(request([4, 5, 6], A, 4, "a"))
    plan = scheduler.schedule()
    assert plan is not None and plan.adapters == A and plan.num_tokens == 3 < len(scheduler.running)
    scheduler.on_no_kv_slot(plan)
    assert scheduler.counters.preemptions == 0 and len(scheduler.running) == 4


def finish(scheduler: Scheduler, member: Request) -> None:
    scheduler.add(member)
    while not member.is_finished:
        step(scheduler)


def test_a_prefix_cache_is_lent_only_within_its_adapter_set() -> None:
    scheduler = make(num_slots=3)
    prompt = [1, 2, 3, 4, 5, 6]
    finish(scheduler, request(prompt, A, 1, "a"))
    under_b = request(prompt, B, 1, "b")
    finish(scheduler, under_b)
    assert under_b.num_cached == 0
    base = request(prompt, (), 1, "base")
    finish(scheduler, base)
    assert base.num_cached == 0
    again = request(prompt, A, 1, "a-again")
    finish(scheduler, again)
    assert again.num_cached == 5  # its set's cache survived in its slot


def test_a_running_sequence_lends_its_cells_only_within_its_set() -> None:
    scheduler = make(num_slots=3, n_batch=64)
    prompt = list(range(1, 12))
    runner = request(prompt, A, 20, "running")
    scheduler.add(runner)
    step(scheduler)
    other = request(prompt + [99], B, 1, "other-set")
    same = request(prompt + [98], A, 1, "same-set")
    scheduler.add(other)
    scheduler.add(same)
    step(scheduler)
    assert other.num_cached == 0 and same.num_cached == 11
    assert scheduler.counters.prefix_copies == 1


def test_the_lora_table_resolves_a_requests_set() -> None:
    table = LoraTable((LoraSpec("a.gguf"), LoraSpec("b.gguf", 0.0), LoraSpec("c.gguf", 0.25)))
    assert table.resolve(None) == ((0, 1.0), (2, 0.25))  # the defaults, zero scales dropped
    assert table.resolve([(2, 0.5), (1, 1.0)]) == ((1, 1.0), (2, 0.5))  # only those named, sorted
    assert table.resolve([]) == () and table.resolve([(0, 0.0)]) == ()
    table.set_scales([(1, 2.0)])
    assert table.resolve(None) == ((1, 2.0),)
    assert table.describe() == [{"id": 0, "path": "a.gguf", "scale": 0.0},
                                {"id": 1, "path": "b.gguf", "scale": 2.0},
                                {"id": 2, "path": "c.gguf", "scale": 0.0}]


@pytest.mark.parametrize(("entries", "reason"), [
    ([(3, 1.0)], "unknown LoRA adapter id 3"),
    ([(-1, 1.0)], "unknown LoRA adapter id -1"),
    ([(True, 1.0)], "unknown LoRA adapter id True"),
    ([("0", 1.0)], "unknown LoRA adapter id '0'"),
    ([(0, 1.0), (0, 0.5)], "given twice"),
    ([(0, -0.5)], "must be in"),
    ([(0, math.nan)], "must be in"),
    ([(0, math.inf)], "must be in"),
    ([(0, MAX_LORA_SCALE * 2)], "must be in"),
    ([(0, "1")], "must be a number"),
    ([(0,)], "is \\(id, scale\\)"),
])
def test_bad_lora_entries_are_refused_naming_lora(entries: list[tuple[int, float]], reason: str) -> None:
    table = LoraTable((LoraSpec("a.gguf"), LoraSpec("b.gguf"), LoraSpec("c.gguf")))
    for call in (table.resolve, table.set_scales):
        with pytest.raises(InvalidRequestError, match=reason) as caught:
            call(entries)
        assert caught.value.param == "lora"
    assert table.resolve(None) == ((0, 1.0), (1, 1.0), (2, 1.0))  # a refused change changes nothing


def test_engine_config_takes_adapters_in_their_config_forms(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    config = EngineConfig("e", "m", lora=[str(a), {"path": str(b), "scale": 0.5}])  # type: ignore[arg-type]
    assert config.lora == (LoraSpec(str(a)), LoraSpec(str(b), 0.5))
    assert EngineConfig("e", "m", lora=config.lora) == config


@pytest.mark.parametrize(("value", "reason"), [
    (["missing.gguf"], "No such file"),
    ([{"path": "DIR"}], "not a regular file"),
    ([{"path": "A", "scale": -1}], "must be in"),
    ([{"path": "A", "scale": float("nan")}], "must be in"),
    ([{"path": "A", "weight": 1}], "not weight"),
    ([{"path": ""}], "needs a path"),
    ("A", "must be a list"),
    ([7], "is a path or"),
])
def test_bad_engine_adapters_are_option_errors_named_lora(tmp_path: Path, value: object, reason: str) -> None:
    (tmp_path / "a.gguf").write_bytes(b"x")

    def real(item: object) -> object:
        if isinstance(item, dict):
            return {k: {"A": str(tmp_path / "a.gguf"), "DIR": str(tmp_path)}.get(v, v)
                    if isinstance(v, str) else v for k, v in item.items()}
        return str(tmp_path / "a.gguf") if item == "A" else item
    given = real(value) if isinstance(value, str) else [real(item) for item in value]  # type: ignore[attr-defined]
    with pytest.raises(OptionValueError, match=reason) as caught:
        EngineConfig("e", "m", lora=given)  # type: ignore[arg-type]
    assert caught.value.name == "lora"
