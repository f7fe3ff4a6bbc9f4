"""Continuous batching, in pure Python: which tokens go into the next decode step, and what
the sampled tokens mean afterwards. Never imports libllama, so it tests in milliseconds.

Each step hands out a token budget (``n_batch``): one row per decoding sequence first,
then chunks of pending prompts (at most ``prefill_budget`` tokens while anything decodes),
so a long prompt never stalls running streams; then, from what is left, draft rows of
sequences that speculate (speculative.py), as many as are worth their cost.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .detokenizer import Detokenizer
from .errors import DeadlineExceededError, EngineError, InvalidGrammarError
from .request import (
    DEFAULT_DRAFT_MAX,
    SPECULATE_ON,
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
from .speculative import (
    DRAFT_STEP_SHARE,
    Drafter,
    DraftPayoff,
    MatchOdds,
    StepCost,
    draft_length,
)

PROMPT_LOGPROB_CHUNK = 64  # rows of full-vocabulary logits one request may ask per step


class KVMemory(Protocol):
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool: ...

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None: ...

    def seq_pos_min(self, seq_id: int) -> int: ...


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """The engine's planning knobs (from EngineConfig, and the model's attention window)."""

    prefill_budget: int = 0   # prompt tokens per step while sequences decode; 0: no bound
    draft_max: int = 0        # draft tokens per sequence and step, for requests that do not say
    swa_window: int = 0       # sliding attention window (0: none): older cells may be reused
    pad_rows: bool = False    # add rows to a step where measured times say that makes it cheaper


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
    drafts: list[tuple[int, int, int]] = field(default_factory=list)
    # (index in sampled, first batch row, count) of draft tokens to verify, after the
    # sequence's decode row; their tokens are tokens[first:first + count]
    num_padding: int = 0                      # the last this many drafts are padding rows

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_draft_rows(self) -> int:
        return sum(count for _, _, count in self.drafts)

    def is_padding(self, draft_index: int) -> bool:
        return draft_index >= len(self.drafts) - self.num_padding


@dataclass(slots=True)
class StepOutput:
    """What the runner read from one successful decode."""

    tokens: np.ndarray                                    # one per plan.sampled
    logprobs: list[TokenLogprob | None] = field(default_factory=list)  # per plan.sampled
    prompt_logprobs: list[tuple[Request, list[TokenLogprob]]] = field(default_factory=list)
    drafted: list[list[int]] = field(default_factory=list)
    # per plan.drafts: the tokens after the first one, one per accepted draft token (a
    # draft token is accepted when the token sampled before it equals it)


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
    prefix_copies: int = 0   # requests that took a prefix from another slot's KV
    prefix_copied_tokens: int = 0
    draft_tokens: int = 0    # speculative decoding: draft tokens verified
    accepted_tokens: int = 0  # ... and accepted
    padding_rows: int = 0    # one-token drafts added only to make a step cheaper
    padding_accepted: int = 0  # ... that were accepted all the same


class _PlanBuilder:
    """Accumulates the rows of one step."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.seq_ids: list[int] = []
        self.scheduled: list[tuple[Request, int]] = []
        self.prompt_rows: list[tuple[Request, int, int]] = []
        self.drafts: list[tuple[Request, int, int]] = []
        self.num_padding = 0

    def add(self, request: Request, start: int, count: int) -> None:
        if request.params.prompt_logprobs and start < request.num_prompt - 1:
            self.prompt_rows.append((request, len(self.tokens), start))
        self.tokens.extend(request.token_ids[start:start + count])
        self.positions.extend(range(start, start + count))
        self.seq_ids.extend([request.seq_id] * count)
        self.scheduled.append((request, count))
        self.budget -= count

    def add_draft(self, request: Request, draft: list[int], padding: bool = False) -> None:
        """Draft tokens after the request's decode row (already added), at the positions
        that follow it. Padding drafts come after every other draft."""
        assert padding or not self.num_padding
        self.num_padding += padding
        start = request.num_computed + 1
        self.drafts.append((request, len(self.tokens), len(draft)))
        self.tokens.extend(draft)
        self.positions.extend(range(start, start + len(draft)))
        self.seq_ids.extend([request.seq_id] * len(draft))
        self.budget -= len(draft)

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
        drafts = []
        if self.drafts:
            index_of = {id(request): index for index, request in enumerate(sampled)}
            for request, first, count in self.drafts:
                logits[first:first + count] = 1
                drafts.append((index_of[id(request)], first, count))
        return StepPlan(np.asarray(self.tokens, dtype=np.int32),
                        np.asarray(self.positions, dtype=np.int32),
                        np.asarray(self.seq_ids, dtype=np.int32), logits, self.scheduled, sampled,
                        np.asarray(rows, dtype=np.int32), num_decode_rows, self.prompt_rows, drafts,
                        self.num_padding)


class Scheduler:
    def __init__(self, num_slots: int, n_ctx: int, n_batch: int, memory: KVMemory,
                 piece_of: Callable[[int, bool], bytes], is_eog: Callable[[int], bool],
                 clock: Callable[[], float], policy: SchedulerPolicy | None = None) -> None:
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.policy = policy or SchedulerPolicy()
        self.cost = StepCost()  # decode time by row count, for the drafting decision
        self.payoff = DraftPayoff()  # ... and whether drafting has realised more tokens per second
        self.odds = MatchOdds()  # acceptance of draft tokens by the match length they continue
        self.last_accepted = 0  # draft tokens (padding rows too) accepted in the last update
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
        1. Admit waiting requests first-come first-served into free slots, while the running
           sequences and the newcomer fit the context; a group of n choices needs n free
           slots at once. A newcomer starts from the longest prefix any slot holds: its own
           slot's cache, or cells shared from another slot, free or running (``_take_slot``).
        2. Make KV room for one token per decoding sequence: evict prefix caches (least
           recently used first), then preempt the youngest sequence (recomputed later).
        3. One batch row per decoding sequence, so running streams never stall.
        4. The rest of the token budget (``n_batch``, halved after a "no KV slot" decode)
           goes to prompt chunks in admission order, each clipped to the KV room left
           (chunked prefill), at most ``prefill_budget`` tokens in all while any sequence
           decodes (a wave of new prompts would otherwise stretch every stream's step).
           Siblings of an n > 1 group wait for their first request's prompt instead of
           computing it again.
        5. What is left goes to draft rows of speculating sequences (``_plan_drafts``).
        6. A step whose every row has logits may take a row or more where that makes it
           cheaper (``_pad``).
        """
        self._admit()
        if not self.running:
            return None
        decoding = self._ensure_decode_room()
        builder = _PlanBuilder(min(self._budget_cap, self.n_batch))
        for request in decoding[:builder.budget]:
            builder.add(request, request.num_computed, 1)
        num_decode_rows = len(builder.scheduled)
        prompt_budget = builder.budget
        if num_decode_rows and self.policy.prefill_budget:
            prompt_budget = min(prompt_budget, self.policy.prefill_budget)
        self._plan_prompt_chunks(builder, prompt_budget)
        if builder.budget > 0 and num_decode_rows:
            self._plan_drafts(builder, decoding[:num_decode_rows])
            if self.policy.pad_rows and len(builder.scheduled) == num_decode_rows:
                self._pad(builder, decoding[:num_decode_rows])
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
            params = request.params
            self._start(request, reuse_prefix=params.cache_prompt and not params.prompt_logprobs)
            for fork in request.forks:
                self._start(fork, reuse_prefix=False)

    def _start(self, request: Request, reuse_prefix: bool) -> None:
        """Give a request a slot and as long a computed prefix as any slot can lend."""
        slot, prefix = self._take_slot(request, reuse_prefix)
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
            request.drafter = self._drafter_for(request)
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _take_slot(self, request: Request, reuse_prefix: bool) -> tuple[Slot, int]:
        """A free slot and how many leading tokens its KV now holds for the request: its
        own cached prefix, or a longer one whose cells another slot (free, or running: a
        shared system prompt being used right now) shares with it (``seq_copy`` marks the
        cells as the new sequence's too; nothing is recomputed or duplicated)."""
        tokens = request.token_ids
        acquired = self.slots.acquire(tokens)
        assert acquired is not None
        slot, own = acquired
        if reuse_prefix:
            source, shared = self.slots.best_source(tokens, self._kv_holders(slot))
            if source is not None and shared > own and self._window_intact(source.seq_id, shared):
                self.memory.seq_remove(slot.seq_id)
                self.memory.seq_copy(source.seq_id, slot.seq_id, 0, shared)
                self.counters.prefix_copies += 1
                self.counters.prefix_copied_tokens += shared
                return slot, shared
            if own and self._window_intact(slot.seq_id, own) and self.memory.seq_remove(slot.seq_id, own, -1):
                return slot, own
        self.memory.seq_remove(slot.seq_id)  # start over
        return slot, 0

    def _kv_holders(self, taken: Slot) -> list[tuple[Slot, list[int], int]]:
        """Every other slot with tokens in its KV: free slots' caches and running sequences'
        computed tokens, as (slot, tokens, how many of them the KV holds)."""
        holders = [(s, s.cached_ids, len(s.cached_ids)) for s in self.slots.slots
                   if not s.busy and s is not taken and s.cached_ids]
        holders += [(self._slot(r), r.token_ids, r.num_computed) for r in self.running
                    if r.num_computed > 0]
        return holders

    def _window_intact(self, seq_id: int, prefix: int) -> bool:
        """With sliding-window attention, libllama may reuse a sequence's cells that its
        own window no longer sees; a prefix is reusable only while the cells the next
        token's window needs are still there."""
        window = self.policy.swa_window
        return window <= 0 or self.memory.seq_pos_min(seq_id) <= max(0, prefix - window + 1)

    def _drafter_for(self, request: Request) -> Drafter | None:
        """Requests with a grammar or logprobs do not speculate: their rows need masks or
        log-probabilities that a draft row's verification does not compute. A request that
        asks for drafts itself gets them whenever the step has room (like llama-server's
        per-request ``speculative.n_max``); the engine's default drafts only while worth it."""
        params = request.params
        n_max = self.policy.draft_max if params.speculative is None else params.speculative
        if n_max == SPECULATE_ON:
            n_max = self.policy.draft_max or DEFAULT_DRAFT_MAX
        if request.constraint is not None or params.logprobs is not None or params.speculative == 0:
            return None
        if n_max <= 0:  # no drafts of its own; padding rows only (``_pad``)
            return Drafter(0) if self.policy.pad_rows else None
        return Drafter(n_max, asked=params.speculative is not None)

    def _ensure_decode_room(self) -> list[Request]:
        """The sequences that decode one token this step, with KV room made for them."""
        while True:
            decoding = [r for r in self.running if r.num_pending == 1 and not r.awaits_fork]
            if self._make_room(len(decoding)) or not self._preempt_youngest():
                return decoding

    def _plan_prompt_chunks(self, builder: _PlanBuilder, budget: int) -> None:
        for request in self.running:
            if budget <= 0:
                break
            if request.num_pending <= 1 or request.awaits_fork:
                continue
            chunk = min(request.num_pending, budget)
            if request.params.prompt_logprobs:
                chunk = min(chunk, PROMPT_LOGPROB_CHUNK)
            if not self._make_room(len(builder.tokens) + chunk):
                chunk = self.n_ctx - self.kv_cells_used() - len(builder.tokens)
                if chunk <= 0:
                    break
            builder.add(request, request.num_computed, chunk)
            budget -= chunk

    def _plan_drafts(self, builder: _PlanBuilder, decoding: list[Request]) -> None:
        """Draft rows from the budget and the KV cells left, most promising draft first,
        each cut to the length that maximises the step's expected tokens per second
        (``best_draft_length``: acceptance odds by match length from ``MatchOdds``, step times
        by row count measured): at high concurrency a row costs as much as it can yield, and
        drafting stops by itself; where drafted steps have realised fewer tokens per second
        than plain ones, the engine's own drafts stop (``DraftPayoff``). One draft a step may
        try a row count not measured yet; a draft not worth a row is tried with one token now
        and then (``MatchOdds.explore``). The engine's drafts stay out of steps that compute
        prompts and stretch a step that other streams share by at most ``DRAFT_STEP_SHARE``.
        A request that asked for drafts takes them without the cost check. A sequence still
        owing its n > 1 siblings a KV copy does not draft (the copy must hold the prompt
        only)."""
        step = self.counters.steps
        drafters = [(request, request.drafter) for request in decoding
                    if request.drafter is not None and request.drafter.n_max > 0 and not request.forks
                    and not request.drafter.paused(step)]
        if not drafters:
            return
        rows, expected = len(decoding), float(len(decoding))
        # A step that computes prompts is long already, and the new streams wait for it
        # (their TTFT): the engine's own drafts keep out of it.
        engine_drafts = len(builder.tokens) == rows and self.payoff.allows(rows)
        if not engine_drafts:
            drafters = [(request, drafter) for request, drafter in drafters if drafter.asked]
            if not drafters:
                return
        asked = sum(drafter.n_max for _, drafter in drafters if drafter.asked)
        if asked:  # drafts a request asked for may evict prefix caches; the engine's own use free cells
            self._make_room(len(builder.tokens) + min(asked, builder.budget))
        room = min(builder.budget, self.n_ctx - self.kv_cells_used() - len(builder.tokens))
        candidates = []
        for request, drafter in drafters:
            limit = min(drafter.n_max, room, request.params.max_tokens - request.num_generated - 1,
                        self.n_ctx - len(request.token_ids) - 1)
            draft = drafter.propose(request.token_ids, limit)
            if draft:
                chances = self.odds.chances(drafter.match, len(draft), request.sampler is not None)
                candidates.append((chances, draft, request, drafter))
        explore = True  # one draft a step may try a row count whose time is not measured yet
        # other streams wait for this step: the engine's drafts stretch it by a bounded share
        max_seconds = self.cost.seconds(rows) * (1.0 + DRAFT_STEP_SHARE) if rows > 1 else math.inf
        candidates.sort(key=lambda candidate: -candidate[0][0])
        for chances, draft, request, drafter in candidates:
            if room <= 0:
                break
            draft = draft[:room]
            count = len(draft) if drafter.asked else draft_length(
                chances[:room], drafter.match, request.sampler is not None, self.odds, rows, expected,
                self.cost, explore, max_seconds)
            if count == 0:
                continue
            explore = explore and self.cost.measured(rows + count)
            builder.add_draft(request, draft[:count])
            rows, expected, room = rows + count, expected + sum(chances[:count]), room - count

    def _pad(self, builder: _PlanBuilder, decoding: list[Request]) -> None:
        """Rows that make the step cheaper (``StepCost.padding``), each a one-token draft of
        a sequence not drafting yet this step: its prompt-lookup guess, else its last token
        again. Verified like any draft, so an accepted one is a token gained and a rejected
        one only costs its cell, removed after the step; a sequence's drafting record does
        not count them."""
        rows = len(builder.tokens)
        extra = self.cost.padding(rows, builder.budget)
        if not extra:  # most steps: no need to count the KV cells
            return
        free_cells = self.n_ctx - self.kv_cells_used() - rows
        if free_cells < extra:
            extra = self.cost.padding(rows, free_cells)
            if not extra:
                return
        drafting = {id(request) for request, _, _ in builder.drafts}
        for request in decoding:
            drafter = request.drafter
            if (drafter is None or request.forks or id(request) in drafting
                    or request.num_generated + 1 >= request.params.max_tokens
                    or len(request.token_ids) + 1 >= self.n_ctx):
                continue
            guess = drafter.propose(request.token_ids, 1) or request.token_ids[-1:]
            builder.add_draft(request, guess, padding=True)
            extra -= 1
            if not extra:
                return

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
        done, keep accepted drafts (drop the rejected ones' cells), append sampled tokens
        (several for a sequence whose draft was accepted), emit."""
        self.counters.steps += 1
        self._budget_cap = self.n_batch
        self.last_accepted = 0
        emissions: list[Emission] = []
        for request, logprobs in output.prompt_logprobs:
            request.prompt_logprobs.extend(logprobs)
        for request, count in plan.scheduled:
            request.num_computed += count
            prompt_done = request.num_computed == request.num_prompt
            group = [request, *self._fork(request)] if prompt_done else [request]
            if prompt_done and request.params.max_tokens == 0:  # echo-only: prompt logprobs
                emissions.extend(self._finish(member, "", FinishReason.LENGTH) for member in group)
        accepted_after = self._commit_drafts(plan, output) if plan.drafts else None
        now = self.clock()
        logprobs_of = output.logprobs or [None] * len(plan.sampled)
        for index, (request, token, logprob) in enumerate(zip(plan.sampled, output.tokens.tolist(),
                                                              logprobs_of, strict=True)):
            if request.is_finished:  # aborted while the step ran
                continue
            if request.num_generated == 0:
                request.first_token_at = now
            if accepted_after is not None and index in accepted_after:
                emissions.extend(self._advance_many(request, [token, *accepted_after[index]]))
                continue
            request.token_ids.append(token)
            emission = self._advance(request, token, logprob)
            if emission is not None:
                emissions.append(emission)
        return emissions

    def observe_step(self, plan: StepPlan, decode_s: float) -> None:
        """Feed the drafting decision with a step whose every row has logits (after
        ``update``, which counted its accepted draft tokens)."""
        if plan.num_tokens == plan.num_decode_rows + plan.num_draft_rows:
            self.cost.observe(plan.num_tokens, decode_s)
            self.payoff.observe(plan.num_decode_rows, plan.num_draft_rows > plan.num_padding,
                                plan.num_decode_rows + self.last_accepted, decode_s)

    def _commit_drafts(self, plan: StepPlan, output: StepOutput) -> dict[int, list[int]]:
        """Keep the cells of accepted draft tokens, remove the rest, record how each
        sequence's draft did. Returns, per sampled index, the tokens after the first."""
        accepted_after: dict[int, list[int]] = {}
        step = self.counters.steps
        total = padded = 0
        for number, ((index, _, count), after) in enumerate(zip(plan.drafts, output.drafted, strict=True)):
            request = plan.sampled[index]
            accepted = len(after)
            request.num_computed += accepted
            if accepted < count:
                self.memory.seq_remove(request.seq_id, request.num_computed, -1)
            accepted_after[index] = after
            if plan.is_padding(number):
                self.counters.padding_rows += count
                padded += accepted
                continue
            if request.drafter is not None:
                request.drafter.record(count, accepted, step)
                self.odds.record(request.drafter.match, count, accepted, request.sampler is not None)
            self.counters.draft_tokens += count
            total += accepted
        self.counters.accepted_tokens += total
        self.counters.padding_accepted += padded
        self.last_accepted = total + padded
        return accepted_after

    def _advance_many(self, request: Request, tokens: list[int]) -> list[Emission]:
        """Several tokens of one sequence from one step, each through the usual checks in
        order: a stop string, end of generation or max_tokens ends the request at that
        token and the rest are dropped (their cells too). The text of the step goes out as
        one event."""
        text: list[str] = []
        num_tokens = 0
        for token in tokens:
            request.token_ids.append(token)
            emission = self._advance(request, token, None)
            if emission is None:
                continue
            event = emission.event
            if isinstance(event, TokenEvent):
                text.append(event.text)
                num_tokens = event.num_tokens
                continue
            if len(request.token_ids) < request.num_computed:  # cells of dropped tokens
                self.memory.seq_remove(request.seq_id, len(request.token_ids), -1)
            merged = [Emission(request, TokenEvent("".join(text), num_tokens))] if text else []
            return [*merged, emission]
        return [Emission(request, TokenEvent("".join(text), num_tokens))] if text else []

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
            # the token was in the grammar's own mask: the grammar gave up (one of its limits,
            # met only while sampling): the request's error, not the engine's
            return self._fail(request, InvalidGrammarError(
                f"the request's grammar failed at sampled token {token}: {constraint.error}"))
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
