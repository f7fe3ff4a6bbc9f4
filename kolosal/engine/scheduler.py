"""Continuous batching, in pure Python: which tokens go into the next decode step, and what
the sampled tokens mean afterwards. Never imports libllama, so it tests in milliseconds.

Each step hands out a token budget (``n_batch``): one row per decoding sequence first,
then chunks of pending prompts, so a long prompt never stalls running streams.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .detokenizer import Detokenizer
from .errors import DeadlineExceededError, EngineError, InferenceError
from .request import (
    ErrorEvent,
    Event,
    FinishEvent,
    FinishReason,
    Request,
    RequestStatus,
    TokenEvent,
    TokenLogprob,
)
from .slots import Slot, SlotTable

PROMPT_LOGPROB_CHUNK = 64  # rows of full-vocabulary logits one request may ask per step


class KVMemory(Protocol):
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool: ...

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None: ...


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
    prompt_rows: list[tuple[Request, int, int]] = field(default_factory=list)
    # (request, first batch row, its position) of prompt chunks whose logprobs were asked

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@dataclass(slots=True)
class StepOutput:
    """What the runner read from one successful decode."""

    tokens: np.ndarray                                    # one per plan.sampled
    logprobs: list[TokenLogprob | None] = field(default_factory=list)  # per plan.sampled
    prompt_logprobs: list[tuple[Request, list[TokenLogprob]]] = field(default_factory=list)


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
    forks: int = 0           # n > 1 choices that reused their group's prefill


class _PlanBuilder:
    """Accumulates the rows of one step."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.seq_ids: list[int] = []
        self.scheduled: list[tuple[Request, int]] = []
        self.prompt_rows: list[tuple[Request, int, int]] = []

    def add(self, request: Request, start: int, count: int) -> None:
        if request.params.prompt_logprobs and start < request.num_prompt - 1:
            self.prompt_rows.append((request, len(self.tokens), start))
        self.tokens.extend(request.token_ids[start:start + count])
        self.positions.extend(range(start, start + count))
        self.seq_ids.extend([request.seq_id] * count)
        self.scheduled.append((request, count))
        self.budget -= count

    def build(self, num_decode_rows: int) -> StepPlan | None:
        if not self.scheduled:
            return None
        logits = np.zeros(len(self.tokens), dtype=np.int8)
        for request, first_row, _ in self.prompt_rows:
            count = next(c for r, c in self.scheduled if r is request)
            logits[first_row:first_row + count] = 1
        sampled: list[Request] = []
        rows: list[int] = []
        row = 0
        for request, count in self.scheduled:
            row += count
            if count == request.num_pending:  # this chunk reaches the end: sample
                logits[row - 1] = 1
                if request.params.max_tokens == 0:
                    continue  # prompt only: nothing to sample
                for member in (request, *request.forks):  # n > 1: all choices sample this row
                    sampled.append(member)
                    rows.append(row - 1)
        return StepPlan(np.asarray(self.tokens, dtype=np.int32),
                        np.asarray(self.positions, dtype=np.int32),
                        np.asarray(self.seq_ids, dtype=np.int32), logits, self.scheduled, sampled,
                        np.asarray(rows, dtype=np.int32), num_decode_rows, self.prompt_rows)


class Scheduler:
    def __init__(self, num_slots: int, n_ctx: int, n_batch: int, memory: KVMemory,
                 piece_of: Callable[[int, bool], bytes], is_eog: Callable[[int], bool],
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
        """Queue a request (with its n > 1 siblings in ``request.forks``)."""
        for member in (request, *request.forks):
            member.detokenizer = Detokenizer(member.params.stop)
        self.waiting.append(request)

    @property
    def num_waiting(self) -> int:
        """Requests queued for a slot, the siblings of a queued group included."""
        return sum(1 + len(r.forks) for r in self.waiting)

    def abort(self, request: Request) -> bool:
        """Drop a request wherever it is; its KV stays behind as a prefix cache."""
        if request.is_finished:
            return False
        if request in self.waiting:
            self.waiting.remove(request)
            self._detach_forks(request)
            request.status = RequestStatus.CANCELLED
            return True
        leader = request.fork_of
        if leader is not None and request.status == RequestStatus.WAITING:
            leader.forks.remove(request)  # queued inside its group
            request.fork_of = None
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

    def fail_step(self, plan: StepPlan, error: EngineError) -> list[Emission]:
        """A step broke half-way (a bug, not a decode error): every request in it gets the
        error, including one this step had already finished (its finish was never sent)."""
        members = list(dict.fromkeys([*(r for r, _ in plan.scheduled), *plan.sampled]))
        emissions = []
        for request in members:
            if request.status == RequestStatus.CANCELLED:
                continue
            if request in self.running:
                self.memory.seq_remove(request.seq_id)
                request.num_computed = 0
                self._retire(request, RequestStatus.FAILED)
            request.status = RequestStatus.FAILED
            emissions.append(Emission(request, ErrorEvent(error)))
        return emissions

    def fail_all(self, error: EngineError) -> list[Emission]:
        emissions = self.fail(list(self.running), error)
        while self.waiting:
            request = self.waiting.popleft()
            for member in (request, *request.forks):
                member.status = RequestStatus.FAILED
                member.fork_of = None
                emissions.append(Emission(member, ErrorEvent(error)))
            request.forks.clear()
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
                self._detach_forks(request)
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
    def schedule(self) -> StepPlan | None:
        """Plan the next decode step, or None when there is nothing to compute.

        Policy, in order:
        1. Admit waiting requests first-come first-served into free slots, each into the slot
           whose prefix cache shares most of its tokens, while the running sequences and the
           newcomer fit the context; a group of n choices needs n free slots at once.
        2. Make KV room for one token per decoding sequence: evict prefix caches (least
           recently used first), then preempt the youngest sequence (recomputed later).
        3. One batch row per decoding sequence, so running streams never stall.
        4. The rest of the token budget (``n_batch``, halved after a "no KV slot" decode)
           goes to prompt chunks in admission order, each clipped to the KV room left
           (chunked prefill). Siblings of an n > 1 group wait for their first request's
           prompt instead of computing it again.
        """
        self._admit()
        if not self.running:
            return None
        decoding = self._ensure_decode_room()
        builder = _PlanBuilder(min(self._budget_cap, self.n_batch))
        for request in decoding[:builder.budget]:
            builder.add(request, request.num_computed, 1)
        num_decode_rows = len(builder.scheduled)
        self._plan_prompt_chunks(builder)
        return builder.build(num_decode_rows)

    def _admit(self) -> None:
        while self.waiting:
            request = self.waiting[0]
            group = [request, *request.forks]
            if self.slots.num_free < len(group):
                break
            active = sum(r.num_computed + r.num_pending for r in self.running)
            if self.running and active + request.num_pending > self.n_ctx:
                break  # would not fit even with every cache evicted: wait for room
            self.waiting.popleft()
            self._start(request, reuse_prefix=not request.params.prompt_logprobs)
            for fork in request.forks:
                self._start(fork, reuse_prefix=False)

    def _start(self, request: Request, reuse_prefix: bool) -> None:
        """Give a request a slot, reusing as much of the slot's cached prefix as allowed."""
        acquired = self.slots.acquire(request.token_ids)
        assert acquired is not None
        slot, prefix = acquired
        if not reuse_prefix or not self.memory.seq_remove(slot.seq_id, prefix, -1):
            self.memory.seq_remove(slot.seq_id)  # start over
            prefix = 0
        slot.cached_ids = []
        first_admission = request.seq_id < 0
        request.seq_id = slot.seq_id
        request.num_computed = prefix
        if first_admission:
            request.num_cached = prefix
            if prefix:
                self.counters.cache_hits += 1
                self.counters.cached_tokens += prefix
            if request.params.prompt_logprobs:
                request.prompt_logprobs = [TokenLogprob(request.prompt_ids[0], None)]
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _ensure_decode_room(self) -> list[Request]:
        """The sequences that decode one token this step, with KV room made for them."""
        while True:
            decoding = [r for r in self.running if r.num_pending == 1 and not r.awaits_fork]
            if self._make_room(len(decoding)) or not self._preempt_youngest():
                return decoding

    def _plan_prompt_chunks(self, builder: _PlanBuilder) -> None:
        for request in self.running:
            if builder.budget <= 0:
                break
            if request.num_pending <= 1 or request.awaits_fork:
                continue
            chunk = min(request.num_pending, builder.budget)
            if request.params.prompt_logprobs:
                chunk = min(chunk, PROMPT_LOGPROB_CHUNK)
            if not self._make_room(len(builder.tokens) + chunk):
                chunk = self.n_ctx - self.kv_cells_used() - len(builder.tokens)
                if chunk <= 0:
                    break
            builder.add(request, request.num_computed, chunk)

    def _preempt_youngest(self) -> bool:
        if len(self.running) <= 1:
            return False
        victim = self.running[-1]
        self._detach_forks(victim)
        if victim.fork_of is not None:
            victim.fork_of.forks.remove(victim)
            victim.fork_of = None  # it will compute its own prompt
        self.memory.seq_remove(victim.seq_id)
        victim.num_computed = 0
        self.running.remove(victim)
        self.slots.release(self._slot(victim), [], self.counters.steps)
        victim.status = RequestStatus.WAITING
        self.waiting.appendleft(victim)
        self.counters.preemptions += 1
        return True

    def _detach_forks(self, request: Request) -> None:
        """The group's first request is gone before its prompt was computed: each sibling
        computes the prompt itself (queued ones go back to the front of the queue)."""
        for fork in request.forks:
            fork.fork_of = None
            if fork.status == RequestStatus.WAITING:
                self.waiting.appendleft(fork)
        request.forks.clear()

    # -- after the decode ---------------------------------------------------------------------
    def on_no_kv_slot(self, plan: StepPlan) -> None:
        """libllama found no room (nothing was committed): shrink the budget, evict caches,
        and if the step was decode-only, preempt the youngest sequence."""
        self._make_room(self.n_ctx)
        if plan.num_tokens > len(self.running):
            self._budget_cap = max(1, plan.num_tokens // 2)
        else:
            self._preempt_youngest()

    def update(self, plan: StepPlan, output: StepOutput) -> list[Emission]:
        """Commit a successful step: advance KV positions, fork n > 1 groups whose prompt is
        done, append sampled tokens, emit."""
        self.counters.steps += 1
        self._budget_cap = self.n_batch
        emissions: list[Emission] = []
        for request, logprobs in output.prompt_logprobs:
            request.prompt_logprobs.extend(logprobs)
        for request, count in plan.scheduled:
            request.num_computed += count
            prompt_done = request.num_computed == request.num_prompt
            group = [request, *self._fork(request)] if prompt_done else [request]
            if prompt_done and request.params.max_tokens == 0:  # echo-only: prompt logprobs
                emissions.extend(self._finish(member, "", FinishReason.LENGTH) for member in group)
        now = self.clock()
        logprobs_of = output.logprobs or [None] * len(plan.sampled)
        for request, token, logprob in zip(plan.sampled, output.tokens.tolist(), logprobs_of,
                                           strict=True):
            if request.is_finished:  # aborted while the step ran
                continue
            if request.num_generated == 0:
                request.first_token_at = now
            request.token_ids.append(token)
            emission = self._advance(request, token, logprob)
            if emission is not None:
                emissions.append(emission)
        return emissions

    def _fork(self, request: Request) -> list[Request]:
        """Share the computed prompt with the group's other choices (one KV copy each)."""
        forks = list(request.forks)
        for fork in forks:
            self.memory.seq_copy(request.seq_id, fork.seq_id, 0, -1)
            fork.num_computed = request.num_computed
            fork.num_cached = request.num_cached
            fork.fork_of = None
            self.counters.forks += 1
        request.forks.clear()
        return forks

    def _advance(self, request: Request, token: int, logprob: TokenLogprob | None) -> Emission | None:
        detokenizer = request.detokenizer
        assert detokenizer is not None
        params = request.params
        constraint = request.constraint
        if self.is_eog(token) and (not params.ignore_eos or constraint is not None):
            return self._finish(request, detokenizer.flush(), FinishReason.STOP)
        if logprob is not None:
            request.pending_logprobs.append(logprob)
        if constraint is not None and not constraint.consume(token):
            return self._fail(request, InferenceError(
                f"the sampled token {token} broke the request's grammar: {constraint.error}"))
        output = detokenizer.feed(self.piece_of(token, params.special_as_text))
        if output.stopped or (constraint is not None and constraint.is_stopped):
            return self._finish(request, output.text + detokenizer.flush(), FinishReason.STOP)
        if request.num_generated >= params.max_tokens or len(request.token_ids) >= self.n_ctx:
            return self._finish(request, output.text + detokenizer.flush(), FinishReason.LENGTH)
        if not output.text:
            return None
        return Emission(request, TokenEvent(output.text, request.num_generated,
                                            request.take_logprobs()))

    def _finish(self, request: Request, text: str, reason: FinishReason) -> Emission:
        self._retire(request, RequestStatus.FINISHED)
        return Emission(request, FinishEvent(text, reason, request.usage(), request.take_logprobs(),
                                             tuple(request.prompt_logprobs)))

    def _fail(self, request: Request, error: EngineError) -> Emission:
        self._retire(request, RequestStatus.FAILED)
        return Emission(request, ErrorEvent(error))

    def _retire(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self._detach_forks(request)
        if request.fork_of is not None:  # a sibling gone before its group's prompt was done
            request.fork_of.forks.remove(request)
            request.fork_of = None
        if request in self.running:
            self.running.remove(request)
            kv_ids = request.token_ids[:request.num_computed]
            self.slots.release(self._slot(request), kv_ids, self.counters.steps)

    def _slot(self, request: Request) -> Slot:
        return self.slots.slots[request.seq_id]
