"""Row padding with no library: a step whose row count does not fill the CPU kernels' tiles
takes one-token drafts where measured step times say that makes it cheaper; they are
verified like any draft and never count in a sequence's drafting record."""
from __future__ import annotations

import numpy as np

from kolosal.engine.plan import StepOutput
from kolosal.engine.scheduler import Scheduler
from kolosal.engine.speculation.drafting import MAX_TABLE_ROWS, MIN_SAMPLES, StepCost

from .fakes import FakeMemory
from .test_speculative import PROMPT, make, prefill, request


def table(**seconds_by_rows: float) -> StepCost:
    """A cost table with these row counts measured, e.g. table(r3=0.052, r4=0.040)."""
    cost = StepCost()
    for _ in range(MIN_SAMPLES):
        for name, seconds in seconds_by_rows.items():
            cost.observe(int(name[1:]), seconds)
    return cost


def padded(num_requests: int = 3, n_ctx: int = 64) -> Scheduler:
    """A scheduler that pads (its engine not speculating) and on whose CPU 3 rows cost
    more than 4, as measured on a 2-core AVX2 machine (benchmarks/RESULTS.md)."""
    scheduler = make(draft_max=0, num_slots=num_requests, n_ctx=n_ctx, pad_rows=True)
    scheduler.speculation.cost = table(r1=0.017, r2=0.028, r3=0.052, r4=0.040)
    return scheduler


def test_padding_is_decided_on_measured_times_only() -> None:
    cost = table(r1=0.017, r2=0.028, r3=0.052, r4=0.040, r5=0.063, r8=0.071)
    assert cost.padding(3, most=8) == 1                 # 4 rows cost less than 3
    assert cost.padding(4, most=8) == 0                 # 5 and 6 rows cost more (6 unmeasured)
    assert cost.padding(1, most=8) == 0                 # a single stream's steps stay as they are
    assert cost.padding(3, most=0) == 0                 # no room
    assert cost.padding(5, most=8) == 1                 # 6 is one above a measured count: tried
    assert cost.padding(9, most=8) == 0                 # 9 never measured: nothing to compare
    for _ in range(MIN_SAMPLES):
        cost.observe(6, 0.054)
        cost.observe(7, 0.077)
    assert cost.padding(5, most=8) == 1 and cost.padding(7, most=8) == 1
    assert cost.padding(5, most=0) == 0
    # Up to three rows, the cheapest measured count wins; a margin keeps equal counts apart.
    cheap_at_8 = table(r5=0.070, r6=0.069, r7=0.068, r8=0.050)
    assert cheap_at_8.padding(5, most=8) == 3 and cheap_at_8.padding(5, most=2) == 0
    assert table(r3=0.050, r4=0.0495).padding(3, most=8) == 0
    # The table times row counts up to MAX_TABLE_ROWS: past it a count could never be
    # measured, and would be "tried" on every step.
    assert table(**{f"r{MAX_TABLE_ROWS}": 1.0}).padding(MAX_TABLE_ROWS, most=8) == 0


def test_an_odd_step_takes_a_padding_row_that_is_a_one_token_draft() -> None:
    scheduler = padded()
    requests = [request(rid=f"r{i}") for i in range(3)]
    plan = prefill(scheduler, *requests)
    assert plan.num_decode_rows == 3 and plan.num_tokens == 4 and plan.logits.tolist() == [1] * 4
    # token_ids = PROMPT + [8]: prompt lookup guesses 9, the token that followed (6, 7, 8).
    assert plan.drafts == [(0, 3, 1)] and plan.num_padding == 1 and plan.is_padding(0)
    assert plan.tokens.tolist()[3] == 9 and plan.positions.tolist()[3] == len(PROMPT) + 1
    assert plan.seq_ids.tolist()[3] == requests[0].seq_id


def test_a_padding_row_accepted_is_a_token_gained_rejected_its_cell_is_removed() -> None:
    scheduler = padded()
    a, b, c = (request(rid=f"r{i}") for i in range(3))
    plan = prefill(scheduler, a, b, c)
    scheduler.update(plan, StepOutput(np.array([9, 4, 4]), drafted=[[5]]))  # a: 9 = the guess
    assert a.token_ids[len(PROMPT):] == [8, 9, 5] and a.num_computed == len(PROMPT) + 2
    counters = scheduler.speculation.counters
    assert counters.padding_rows == 1 and counters.padding_accepted_tokens == 1
    assert counters.spec_draft_tokens == 0 and scheduler.speculation.last_accepted == 1
    assert a.drafter is not None and a.drafter.proposed == 0  # its record is not touched
    second = scheduler.schedule()
    assert second is not None and second.num_padding == 1
    (index, _, _), = second.drafts
    rejected = second.sampled[index]
    scheduler.update(second, StepOutput(np.array([3, 3, 3]), drafted=[[]]))
    memory = scheduler.kv.memory
    assert isinstance(memory, FakeMemory)
    assert memory.removed[-1] == (rejected.seq_id, rejected.num_computed, -1)
    assert counters.padding_rows == 2 and counters.padding_accepted_tokens == 1


def test_where_no_padding_goes() -> None:
    # A request that turned speculation off, or asked for logprobs, gets no draft rows at all.
    scheduler = padded()
    off, logprobs, plain = request(rid="off", speculative=0), request(rid="lp", logprobs=1), request(rid="p")
    plan = prefill(scheduler, off, logprobs, plain)
    assert off.drafter is None and logprobs.drafter is None
    assert [plan.sampled[i] for i, _, _ in plan.drafts] == [plain]
    # Nobody left to pad with: the step stays as it is.
    scheduler = padded()
    plan = prefill(scheduler, *(request(rid=f"o{i}", speculative=0) for i in range(3)))
    assert plan.num_tokens == 3 and not plan.drafts
    # One more token would pass max_tokens: no padding row for that sequence.
    scheduler = padded()
    plan = prefill(scheduler, *(request(rid=f"m{i}", max_tokens=2) for i in range(3)))
    assert plan.num_tokens == 3 and not plan.drafts
    # No free KV cell for it (3 prompts of 9 tokens and 3 decode rows fill 30 cells).
    scheduler = padded(n_ctx=3 * len(PROMPT) + 3)
    plan = prefill(scheduler, *(request(rid=f"k{i}") for i in range(3)))
    assert plan.num_tokens == 3 and not plan.drafts
    # Off by policy (row_padding off, or a deterministic engine).
    scheduler = make(draft_max=0, num_slots=3)
    scheduler.speculation.cost = table(r3=0.052, r4=0.040)
    plan = prefill(scheduler, *(request(rid=f"n{i}") for i in range(3)))
    assert plan.num_tokens == 3 and all(r.drafter is None for r in plan.sampled)


def test_a_step_with_a_prompt_chunk_is_not_padded() -> None:
    """Padding is decided on the times of steps whose every row has logits."""
    scheduler = padded(num_requests=4)
    plan = prefill(scheduler, *(request(rid=f"r{i}") for i in range(2)))
    scheduler.update(plan, StepOutput(np.array([4, 4])))
    scheduler.add(request([20, 21], rid="new"))
    mixed = scheduler.schedule()
    assert mixed is not None and mixed.num_decode_rows == 2 and mixed.num_tokens == 4
    assert not mixed.drafts
