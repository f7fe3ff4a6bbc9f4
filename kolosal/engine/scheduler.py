"""Continuous batching, in pure Python: which tokens go into the next decode step, and what
the sampled tokens mean afterwards. Never imports libllama, so it tests in milliseconds.

Each step hands out a token budget (``n_batch``): one row per decoding sequence first,
then chunks of pending prompts, so a long prompt never stalls running streams.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .detokenizer import Detokenizer
from .errors import DeadlineExceededError, EngineError
from .request import ErrorEvent, Event, FinishEvent, FinishReason, Request, RequestStatus, TokenEvent
from .slots import Slot, SlotTable


class KVMemory(Protocol):
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool: ...


@dataclass(slots=True)
class StepPlan:
    """One llama_batch worth of rows, plus who gets a token from it."""

    tokens: np.ndarray
    positions: np.ndarray
    seq_ids: np.ndarray
    logits: np.ndarray
    scheduled: list[tuple[Request, int]]      # (request, tokens fed this step)
    sampled: list[Request]                    # requests that get a new token
    output_rows: np.ndarray                   # batch row of each sampled request
    num_decode_rows: int                      # leading rows that are single decode tokens

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@dataclass(slots=True)
class Emission:
    request: Request
    event: Event


@dataclass(slots=True)
class SchedulerCounters:
    cache_hits: int = 0
    cached_tokens: int = 0
    preemptions: int = 0
    steps: int = 0


class Scheduler:
    def __init__(self, num_slots: int, n_ctx: int, n_batch: int, memory: KVMemory,
                 piece_of: Callable[[int], bytes], is_eog: Callable[[int], bool],
                 clock: Callable[[], float]) -> None:
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.memory = memory
        self.piece_of = piece_of
        self.is_eog = is_eog
        self.clock = clock
        self.slots = SlotTable(num_slots)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.counters = SchedulerCounters()
        self._budget_cap = n_batch  # lowered after a "no KV slot" decode, restored on success

    # -- inbox ----------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        request.detokenizer = Detokenizer(request.params.stop)
        self.waiting.append(request)

    def abort(self, request: Request) -> bool:
        """Drop a request wherever it is; its KV stays behind as a prefix cache."""
        if request.is_finished:
            return False
        if request in self.waiting:
            self.waiting.remove(request)
            request.status = RequestStatus.CANCELLED
            return True
        self._retire(request, RequestStatus.CANCELLED)
        return True

    def fail(self, requests: list[Request], error: EngineError) -> list[Emission]:
        """Fail requests after a decode error; their KV may be partial, so drop it."""
        emissions = []
        for request in requests:
            if request.is_finished:
                continue
            self.memory.seq_remove(request.seq_id)
            request.num_computed = 0
            self._retire(request, RequestStatus.FAILED)
            emissions.append(Emission(request, ErrorEvent(error)))
        return emissions

    def fail_all(self, error: EngineError) -> list[Emission]:
        emissions = self.fail(list(self.running), error)
        while self.waiting:
            request = self.waiting.popleft()
            request.status = RequestStatus.FAILED
            emissions.append(Emission(request, ErrorEvent(error)))
        return emissions

    def expire(self) -> list[Emission]:
        """Fail every request whose deadline has passed, queued or running."""
        now = self.clock()
        expired = [r for r in (*self.waiting, *self.running)
                   if r.deadline is not None and now >= r.deadline]
        emissions = []
        for request in expired:
            if request in self.waiting:
                self.waiting.remove(request)
                request.status = RequestStatus.FAILED
            else:
                self._retire(request, RequestStatus.FAILED)
            emissions.append(Emission(request, ErrorEvent(DeadlineExceededError(
                f"request {request.request_id} exceeded its deadline"))))
        return emissions

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- KV accounting ----------------------------------------------------------------------
    def kv_cells_cached(self) -> int:
        """Cells holding finished sequences' tokens, kept as prefix caches."""
        return sum(len(s.cached_ids) for s in self.slots.slots if not s.busy)

    def kv_cells_used(self) -> int:
        return sum(r.num_computed for r in self.running) + self.kv_cells_cached()

    def _make_room(self, cells: int) -> bool:
        """Evict prefix caches (LRU first) until ``cells`` more tokens fit."""
        free = self.n_ctx - self.kv_cells_used()
        for slot in self.slots.evictable():
            if free >= cells:
                break
            free += len(slot.cached_ids)
            self.memory.seq_remove(slot.seq_id)
            slot.cached_ids = []
        return free >= cells

    # -- planning ---------------------------------------------------------------------------
    def _admit(self) -> None:
        while self.waiting and self.slots.num_free:
            request = self.waiting[0]
            active = sum(r.num_computed + r.num_pending for r in self.running)
            if self.running and active + request.num_pending > self.n_ctx:
                break  # would not fit even with every cache evicted: wait for room
            acquired = self.slots.acquire(request.token_ids)
            assert acquired is not None
            slot, prefix = acquired
            self.waiting.popleft()
            if not self.memory.seq_remove(slot.seq_id, prefix, -1):
                self.memory.seq_remove(slot.seq_id)  # partial removal impossible: start over
                prefix = 0
            slot.cached_ids = []
            request.seq_id = slot.seq_id
            request.num_computed = prefix
            if request.status == RequestStatus.WAITING and request.num_generated == 0:
                request.num_cached = prefix
                if prefix:
                    self.counters.cache_hits += 1
                    self.counters.cached_tokens += prefix
            request.status = RequestStatus.PREFILLING
            self.running.append(request)

    def _preempt_youngest(self) -> bool:
        if len(self.running) <= 1:
            return False
        victim = self.running[-1]
        self.memory.seq_remove(victim.seq_id)
        victim.num_computed = 0
        self.running.remove(victim)
        self.slots.release(self._slot(victim), [], self.counters.steps)
        victim.status = RequestStatus.WAITING
        self.waiting.appendleft(victim)
        self.counters.preemptions += 1
        return True

    def schedule(self) -> StepPlan | None:
        self._admit()
        if not self.running:
            return None
        decoding = [r for r in self.running if r.num_pending == 1]
        while not self._make_room(len(decoding)):
            if not self._preempt_youngest():
                break
            decoding = [r for r in self.running if r.num_pending == 1]
        budget = min(self._budget_cap, self.n_batch)
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        scheduled: list[tuple[Request, int]] = []
        for request in decoding[:budget]:
            tokens.append(request.token_ids[-1])
            positions.append(request.num_computed)
            seq_ids.append(request.seq_id)
            scheduled.append((request, 1))
        num_decode_rows = len(scheduled)
        budget -= num_decode_rows
        for request in self.running:
            if budget <= 0:
                break
            if request.num_pending <= 1:
                continue
            chunk = min(request.num_pending, budget)
            if not self._make_room(len(tokens) + chunk):
                chunk = self.n_ctx - self.kv_cells_used() - len(tokens)
                if chunk <= 0:
                    break
            start = request.num_computed
            tokens.extend(request.token_ids[start:start + chunk])
            positions.extend(range(start, start + chunk))
            seq_ids.extend([request.seq_id] * chunk)
            scheduled.append((request, chunk))
            budget -= chunk
        if not scheduled:
            return None
        logits = np.zeros(len(tokens), dtype=np.int8)
        sampled: list[Request] = []
        rows: list[int] = []
        row = 0
        for request, count in scheduled:
            row += count
            if count == request.num_pending:  # this chunk reaches the end: sample
                logits[row - 1] = 1
                sampled.append(request)
                rows.append(row - 1)
        return StepPlan(np.asarray(tokens, dtype=np.int32), np.asarray(positions, dtype=np.int32),
                        np.asarray(seq_ids, dtype=np.int32), logits, scheduled, sampled,
                        np.asarray(rows, dtype=np.int32), num_decode_rows)

    # -- after the decode ---------------------------------------------------------------------
    def on_no_kv_slot(self, plan: StepPlan) -> None:
        """libllama found no room (nothing was committed): shrink the budget, evict caches,
        and if the step was decode-only, preempt the youngest sequence."""
        self._make_room(self.n_ctx)
        if plan.num_tokens > len(self.running):
            self._budget_cap = max(1, plan.num_tokens // 2)
        else:
            self._preempt_youngest()

    def update(self, plan: StepPlan, sampled_tokens: np.ndarray) -> list[Emission]:
        """Commit a successful step: advance KV positions, append sampled tokens, emit."""
        self.counters.steps += 1
        self._budget_cap = self.n_batch
        for request, count in plan.scheduled:
            request.num_computed += count
        emissions: list[Emission] = []
        now = self.clock()
        for request, token in zip(plan.sampled, sampled_tokens.tolist(), strict=True):
            if request.is_finished:  # aborted while the step ran
                continue
            if request.num_generated == 0:
                request.first_token_at = now
            request.status = RequestStatus.DECODING
            request.token_ids.append(token)
            emission = self._advance(request, token)
            if emission is not None:
                emissions.append(emission)
        return emissions

    def _advance(self, request: Request, token: int) -> Emission | None:
        detokenizer = request.detokenizer
        assert isinstance(detokenizer, Detokenizer)
        params = request.params
        if self.is_eog(token) and not params.ignore_eos:
            return self._finish(request, detokenizer.flush(), FinishReason.STOP)
        output = detokenizer.feed(self.piece_of(token))
        if output.stopped:
            return self._finish(request, output.text, FinishReason.STOP)
        if request.num_generated >= params.max_tokens or len(request.token_ids) >= self.n_ctx:
            return self._finish(request, output.text + detokenizer.flush(), FinishReason.LENGTH)
        if not output.text:
            return None
        return Emission(request, TokenEvent(output.text, request.num_generated))

    def _finish(self, request: Request, text: str, reason: FinishReason) -> Emission:
        self._retire(request, RequestStatus.FINISHED)
        return Emission(request, FinishEvent(text, reason, request.usage()))

    def _retire(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        if request in self.running:
            self.running.remove(request)
            kv_ids = request.token_ids[:request.num_computed]
            self.slots.release(self._slot(request), kv_ids, self.counters.steps)

    def _slot(self, request: Request) -> Slot:
        return self.slots.slots[request.seq_id]
