"""Engine statistics: written by the engine thread, read by anyone without a lock.

The thread builds a new frozen snapshot after each step and swaps the reference, which
is atomic in CPython, so readers never see a half-updated record.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .request import ErrorEvent, FinishEvent, Request

if TYPE_CHECKING:
    from .plan import StepPlan
    from .scheduler import Scheduler

RATE_WINDOW_S = 5.0


class RateWindow:
    """Rates of a few counts over the last ``RATE_WINDOW_S`` seconds (sums kept as the
    window moves, so a rate costs no rescan)."""

    def __init__(self, width: int = 2) -> None:
        self._entries: deque[tuple[float, tuple[int, ...]]] = deque()
        self._sums = [0] * width

    def add(self, now: float, *counts: int) -> tuple[float, ...]:
        """Count these at ``now``; returns the rates including them."""
        self._entries.append((now, counts))
        for index, count in enumerate(counts):
            self._sums[index] += count
        return self.rates(now)

    def rates(self, now: float) -> tuple[float, ...]:
        """Per second, each count over the window ending at ``now`` (0.0 when empty)."""
        while self._entries and now - self._entries[0][0] > RATE_WINDOW_S:
            for index, count in enumerate(self._entries.popleft()[1]):
                self._sums[index] -= count
        if not self._entries:
            return tuple(0.0 for _ in self._sums)
        span = max(now - self._entries[0][0], 1e-3) if len(self._entries) > 1 else RATE_WINDOW_S
        return tuple(total / span for total in self._sums)


@dataclass(frozen=True, slots=True)
class StepProfile:
    """Cumulative seconds per phase of the scheduler step."""

    schedule_s: float = 0.0
    fill_and_decode_s: float = 0.0
    decode_s: float = 0.0
    sample_s: float = 0.0
    update_s: float = 0.0
    deliver_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.schedule_s + self.fill_and_decode_s + self.sample_s + self.update_s + self.deliver_s


@dataclass(frozen=True, slots=True)
class EngineStats:
    slots_total: int
    kv_cells_total: int
    slots_busy: int = 0
    queue_depth: int = 0
    kv_cells_used: int = 0
    kv_cells_cached: int = 0   # of kv_cells_used: prefix caches of finished requests
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    last_step_ms: float = 0.0
    last_batch_tokens: int = 0
    steps: int = 0
    cache_hits: int = 0
    cached_tokens: int = 0
    preemptions: int = 0
    fairness_preemptions: int = 0   # a tenant over its fair share gave up a slot
    share_preemptions: int = 0      # a client request over its share of the slots gave up one
    prompt_tokens_total: int = 0
    generated_tokens_total: int = 0
    requests_finished: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    # Prompt tokens of finished or failed requests, and how many of them came from the
    # prefix cache: counted together at the end, so hits <= queries at every scrape.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prefill_tokens_total: int = 0   # prompt tokens computed (cached and shared ones are not)
    forked_choices: int = 0         # n > 1 choices that reused their group's computed prompt
    prefix_copies: int = 0          # requests that took a prefix from another slot's KV cells
    prefix_copied_tokens: int = 0   # ... and how many tokens those prefixes held
    stopped_steps: int = 0          # decode steps stopped for a newcomer tenant, planned again
    spec_draft_tokens: int = 0      # speculative decoding: draft tokens verified
    spec_accepted_tokens: int = 0   # ... and accepted (each saves a decode step)
    padding_rows: int = 0           # rows added only because they made a step cheaper
    padding_accepted_tokens: int = 0  # ... whose one-token draft was accepted all the same
    profile: StepProfile = StepProfile()

    @property
    def slots_free(self) -> int:
        return self.slots_total - self.slots_busy

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slots_free"] = self.slots_free
        return data


class StatsRecorder:
    def __init__(self, slots_total: int, kv_cells_total: int) -> None:
        self.snapshot = EngineStats(slots_total=slots_total, kv_cells_total=kv_cells_total)
        self._window = RateWindow()  # prefill and decode tokens

    def _occupancy(self, scheduler: Scheduler) -> dict[str, Any]:
        """The scheduler's state and counters (their fields are named as ours)."""
        return {"slots_busy": len(scheduler.running), "queue_depth": len(scheduler.waiting),
                "kv_cells_used": scheduler.kv.cells_used(),
                "kv_cells_cached": scheduler.kv.cells_cached(),
                **_flat(scheduler.counters), **_flat(scheduler.speculation.counters)}

    def record_idle(self, scheduler: Scheduler) -> None:
        prefill, decode = self._window.rates(time.monotonic())
        self.snapshot = replace(self.snapshot, prefill_tokens_per_s=prefill,
                                decode_tokens_per_s=decode, **self._occupancy(scheduler))

    def record_step(self, plan: StepPlan, scheduler: Scheduler, *, schedule_s: float,
                    decode_s: float, sample_s: float, run_s: float, update_s: float,
                    deliver_s: float, ok: bool) -> None:
        now = time.monotonic()
        prefill_rows = plan.num_tokens - plan.num_decode_rows - plan.num_draft_rows
        if ok:
            self._window.add(now, prefill_rows, plan.num_decode_rows + scheduler.speculation.last_accepted)
        prefill, decode = self._window.rates(now)
        old = self.snapshot
        profile = old.profile
        profile = StepProfile(profile.schedule_s + schedule_s,
                              profile.fill_and_decode_s + run_s - sample_s,
                              profile.decode_s + decode_s, profile.sample_s + sample_s,
                              profile.update_s + update_s, profile.deliver_s + deliver_s)
        self.snapshot = replace(
            old, prefill_tokens_per_s=prefill, decode_tokens_per_s=decode,
            last_step_ms=(schedule_s + run_s + update_s + deliver_s) * 1000.0,
            last_batch_tokens=plan.num_tokens, steps=old.steps + 1, profile=profile,
            prefill_tokens_total=old.prefill_tokens_total + (prefill_rows if ok else 0),
            **self._occupancy(scheduler))

    def record_finish(self, request: Request, event: FinishEvent | ErrorEvent) -> None:
        old = replace(self.snapshot,
                      prefix_cache_queries=self.snapshot.prefix_cache_queries + request.num_prompt,
                      prefix_cache_hits=self.snapshot.prefix_cache_hits + request.num_cached)
        if isinstance(event, FinishEvent):
            self.snapshot = replace(old, requests_finished=old.requests_finished + 1,
                                    prompt_tokens_total=old.prompt_tokens_total + request.num_prompt,
                                    generated_tokens_total=old.generated_tokens_total
                                    + request.num_generated)
        else:
            self.snapshot = replace(old, requests_failed=old.requests_failed + 1)

    def record_cancel(self) -> None:
        self.snapshot = replace(self.snapshot, requests_cancelled=self.snapshot.requests_cancelled + 1)


def _flat(counters: Any) -> dict[str, Any]:
    """A slotted dataclass of plain numbers as a dict, per step: ``dataclasses.asdict``
    deep-copies field by field and cost ~0.1 ms of every step."""
    return {name: getattr(counters, name) for name in counters.__slots__}
