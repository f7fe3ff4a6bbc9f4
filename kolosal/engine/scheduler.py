"""Continuous batching, in pure Python: which tokens go into the next decode step, and what
the sampled tokens mean afterwards. Never imports libllama, so it tests in milliseconds.

Each step hands out a token budget (``n_batch``): one row per decoding sequence first,
then chunks of pending prompts (at most ``prefill_budget`` tokens while anything decodes),
so a long prompt never stalls running streams; then, from what is left, draft rows of
sequences that speculate (speculative.py), as many as are worth their cost. Every row of a
step belongs to one LoRA adapter set; the sets at work take turns (adapters.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .adapters import AdapterTurns
from .choices import detach_forks, holds_share, over_share_victim, split_group
from .detokenizer import Detokenizer
from .errors import DeadlineExceededError, EngineError, InvalidGrammarError
from .fair_queue import FairQueue, admission_order, first_prompts, unfair_victim
from .kv_cache import KVCache, KVMemory
from .plan import Emission, PlanBuilder, StepOutput, StepPlan
from .request import (
    ErrorEvent,
    FinishEvent,
    FinishReason,
    Request,
    RequestStatus,
    TokenEvent,
    TokenLogprob,
)
from .speculation.policy import Speculation

PROMPT_LOGPROB_CHUNK = 64  # rows of full-vocabulary logits one request may ask per step


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """The engine's planning knobs (from EngineConfig, and the model's attention window)."""

    prefill_budget: int = 0   # prompt tokens per step while sequences decode; 0: no bound
    draft_max: int = 0        # draft tokens per sequence and step, for requests that do not say
    swa_window: int = 0       # sliding attention window (0: none): older cells may be reused
    pad_rows: bool = False    # add rows to a step where measured times say that makes it cheaper


@dataclass(slots=True)
class SchedulerCounters:
    """Named as the engine's stats fields they become."""

    cache_hits: int = 0
    cached_tokens: int = 0
    preemptions: int = 0           # to make KV room (the youngest sequence's cells dropped)
    fairness_preemptions: int = 0  # to give a tenant under its fair share a slot
    share_preemptions: int = 0     # to give a request a slot held beyond another's share
    forked_choices: int = 0        # n > 1 choices that reused their group's prefill
    prefix_copies: int = 0         # requests that took a prefix from another slot's KV
    prefix_copied_tokens: int = 0
    stopped_steps: int = 0         # steps stopped for a newcomer (interrupts.py), planned again


class Scheduler:
    """Admission, chunking, update and retirement of the engine's requests; the KV cells
    are ``kv``'s (kv_cache.py), draft rows ``speculation``'s (speculation/policy.py)."""

    def __init__(self, num_slots: int, n_ctx: int, n_batch: int, memory: KVMemory,
                 piece_of: Callable[[int, bool], bytes], is_eog: Callable[[int], bool],
                 clock: Callable[[], float], policy: SchedulerPolicy | None = None) -> None:
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.policy = policy or SchedulerPolicy()
        self.piece_of = piece_of
        self.is_eog = is_eog
        self.clock = clock
        self.waiting = FairQueue()
        self.running: list[Request] = []
        self.kv = KVCache(num_slots, n_ctx, memory, self.running, self.policy.swa_window)
        self.speculation = Speculation(self.kv, self.policy.draft_max, self.policy.pad_rows)
        self.turns = AdapterTurns()
        self.counters = SchedulerCounters()
        self.steps = 0  # successful steps: the clock of slot LRU and draft pauses
        self._budget_cap = n_batch  # lowered after a "no KV slot" decode, restored on success
        self._prompt_step = False  # the last step planned was prompt-only (step 0 of schedule)

    # -- inbox ----------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        """Queue a request (with its n > 1 siblings in ``request.forks``)."""
        request.group = request.group or request.request_id
        for member in (request, *request.forks):
            member.detokenizer = Detokenizer(member.params.stop)
            member.watch = member.params.watch() if member.params.watch is not None else None
            member.group = request.group
        self.waiting.push(request)

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
            detach_forks(request, self.waiting)
            request.status = RequestStatus.CANCELLED
            return True
        if request.fork_of is not None and request.status == RequestStatus.WAITING:
            request.fork_of.forks.remove(request)  # queued inside its group
            request.fork_of = None
            request.status = RequestStatus.CANCELLED
            return True
        self._retire(request, RequestStatus.CANCELLED)
        return True

    def fail(self, requests: list[Request], error: EngineError) -> list[Emission]:
        """Fail requests after a decode error; their KV may be partial, so drop it."""
        emissions = []
        for request in (r for r in requests if not r.is_finished):
            self.kv.drop(request)
            request.num_computed = 0
            self._retire(request, RequestStatus.FAILED)
            emissions.append(Emission(request, ErrorEvent(error)))
        return emissions

    def fail_step(self, plan: StepPlan, error: EngineError) -> list[Emission]:
        """A step broke half-way (a bug, not a decode error): every request in it gets the
        error, including one this step had already finished (its finish was never sent)."""
        members = list(dict.fromkeys([*(r for r, _ in plan.scheduled), *plan.sampled]))
        emissions = []
        for request in (r for r in members if r.status != RequestStatus.CANCELLED):
            if request in self.running:
                self.kv.drop(request)
                request.num_computed = 0
                self._retire(request, RequestStatus.FAILED)
            request.status = RequestStatus.FAILED
            emissions.append(Emission(request, ErrorEvent(error)))
        return emissions

    def fail_all(self, error: EngineError) -> list[Emission]:
        emissions = self.fail(list(self.running), error)
        while self.waiting:
            request = self.waiting.pop()
            for member in (request, *request.forks):
                member.status = RequestStatus.FAILED
                member.fork_of = None
                emissions.append(Emission(member, ErrorEvent(error)))
            request.forks.clear()
        return emissions

    def expire(self) -> list[Emission]:
        """Fail every request whose deadline has passed, queued or running."""
        now = self.clock()
        emissions = []
        live = (*self.waiting, *self.running)
        for request in [r for r in live if r.deadline is not None and now >= r.deadline]:
            if request in self.waiting:
                self.waiting.remove(request)
                detach_forks(request, self.waiting)
                request.status = RequestStatus.FAILED
            else:
                self._retire(request, RequestStatus.FAILED)
            emissions.append(Emission(request, ErrorEvent(DeadlineExceededError(
                f"request {request.request_id} exceeded its deadline"))))
        return emissions

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- planning ---------------------------------------------------------------------------
    def schedule(self) -> StepPlan | None:
        """Plan the next decode step, or None when there is nothing to compute.

        Policy, in order (0. at most every other step, the short prompts of tenants with
        nothing decoding while others decode get a step of their own: ``first_prompts``):
        1. Admit waiting requests in the fair queue's order (priority class, then weighted
           fair between tenants, then first come first served) into free slots while all
           fits the context; a group of n choices takes the free slots it can, within its
           client request's share while others wait (``choices.py``). With none free, a
           request takes the slot of the youngest member of a client request beyond its share
           (``over_share_victim``), else a tenant under its fair share takes the slot of one
           over it (``unfair_victim``; victims' cells stay as a cache). Members beyond their
           share let those behind pass. A newcomer starts from the longest prefix any slot
           holds, free or running (``KVCache.take_slot``).
        2. Make KV room for one token per decoding sequence: evict prefix caches (least
           recently used first), then preempt the youngest sequence (recomputed later).
        3. One batch row per decoding sequence, so running streams never stall.
        4. The rest of the token budget (``n_batch``, halved after a "no KV slot" decode)
           goes to prompt chunks in admission order, each clipped to the KV room left
           (chunked prefill), at most ``prefill_budget`` tokens in all while any sequence
           decodes (a wave of new prompts would otherwise stretch every stream's step).
           Siblings of an n > 1 group wait for their first request's prompt instead of
           computing it again.
        5. What is left goes to draft rows of speculating sequences, and a step whose every
           row has logits may take a row or more where that makes it cheaper
           (``Speculation.plan``).
        Steps 3 to 5 take only the sequences of the step's LoRA adapter set: the sets at
        work take turns (``AdapterTurns``); the others' rows wait for theirs.
        """
        self._admit()
        if not self.running:
            return None
        builder = PlanBuilder(min(self._budget_cap, self.n_batch), self.turns.pick(self.running))
        if not self._prompt_step:  # 0.
            self._plan_prompt_chunks(builder, builder.budget, first_prompts(
                self.running, self.policy.prefill_budget or builder.budget))
        self._prompt_step = bool(builder.scheduled)
        if builder.scheduled:
            return builder.build(0)
        decoding = [r for r in self._ensure_decode_room() if r.adapters == builder.adapters]
        for request in decoding[:builder.budget]:
            builder.add(request, request.num_computed, 1)
        num_decode_rows = len(builder.scheduled)
        prefill_budget = (self.policy.prefill_budget or builder.budget) if num_decode_rows else builder.budget
        self._plan_prompt_chunks(builder, min(builder.budget, prefill_budget))
        self.speculation.plan(builder, decoding[:num_decode_rows], self.steps)
        return builder.build(num_decode_rows)

    def _admit(self) -> None:
        """Waiting requests into free slots, in the fair queue's order (see ``schedule``)."""
        for request in admission_order(self.running, self.waiting, self.kv.slots.num_slots):
            if not self._free_slots_for(request):
                if holds_share(self.running, request, self.kv.slots.num_slots):
                    continue  # its client request has its share: those behind it may pass
                break
            active = sum(r.num_computed + r.num_pending for r in self.running)
            if self.running and active + request.num_pending > self.n_ctx:
                break  # would not fit even with every cache evicted: wait for room
            self.waiting.take(request)
            self._start(request, request.params.cache_prompt and not request.params.prompt_logprobs)
            for fork in split_group(request, self.waiting, self.running, self.kv.slots.num_free,
                                    self.kv.slots.num_slots):
                self._start(fork, reuse_prefix=False)

    def _start(self, request: Request, reuse_prefix: bool) -> None:
        """Give a request a slot and as long a computed prefix as any slot can lend."""
        slot, prefix, shared = self.kv.take_slot(request, reuse_prefix)
        if shared:
            self.counters.prefix_copies += 1
            self.counters.prefix_copied_tokens += prefix
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
            request.drafter = self.speculation.drafter_for(request)
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _ensure_decode_room(self) -> list[Request]:
        """The sequences that decode one token this step, with KV room made for them."""
        while True:
            decoding = [r for r in self.running if r.num_pending == 1 and not r.awaits_fork]
            if self.kv.make_room(len(decoding)) or not self._preempt_youngest():
                return decoding

    def _plan_prompt_chunks(self, builder: PlanBuilder, budget: int,
                            among: list[Request] | None = None) -> None:
        """Chunks of pending prompts (``among``'s, else all) in admission order within
        ``budget``, clipped to the KV room left (prompt-logprobs chunks capped too)."""
        for request in self.running if among is None else among:
            if budget <= 0:
                break
            if request.num_pending <= 1 or request.awaits_fork or request.adapters != builder.adapters:
                continue
            chunk = min(request.num_pending, budget,
                        PROMPT_LOGPROB_CHUNK if request.params.prompt_logprobs else budget)
            if not self.kv.make_room(len(builder.tokens) + chunk):
                chunk = self.kv.cells_free() - len(builder.tokens)
                if chunk <= 0:
                    break
            builder.add(request, request.num_computed, chunk)
            budget -= chunk

    def _free_slots_for(self, request: Request) -> bool:
        """Whether a slot is free, after preempting if it must: the youngest member of a
        client request beyond its share (``over_share_victim``), else one of a tenant over
        its fair share (``unfair_victim``)."""
        num_slots = self.kv.slots.num_slots
        while not self.kv.slots.num_free:
            victim = over_share_victim(self.running, request, num_slots)
            if victim is not None:
                self.counters.share_preemptions += 1
            else:
                victim = unfair_victim(self.running, self.waiting, request, num_slots)
                if victim is None:
                    return False
                self.counters.fairness_preemptions += 1
            self._preempt(victim, keep_cells=True)
        return True

    def _preempt_youngest(self) -> bool:
        """Send the youngest running sequence back to the queue, its cells dropped to make
        KV room (it is recomputed when admitted again). False when only one runs."""
        if len(self.running) <= 1:
            return False
        self._preempt(self.running[-1], keep_cells=False)
        self.counters.preemptions += 1
        return True

    def _preempt(self, victim: Request, keep_cells: bool) -> None:
        """Back to its place in the queue (its tag is kept). Its computed cells stay as its
        slot's prefix cache (``keep_cells``) or are dropped."""
        detach_forks(victim, self.waiting)
        if victim.fork_of is not None:
            victim.fork_of.forks.remove(victim)
            victim.fork_of = None  # it will compute its own prompt
        if not keep_cells:
            self.kv.drop(victim)
            victim.num_computed = 0
        self.kv.release(victim, self.steps)
        victim.num_computed = 0
        self.running.remove(victim)
        victim.status = RequestStatus.WAITING
        self.waiting.push(victim)

    # -- after the decode ---------------------------------------------------------------------
    def on_no_kv_slot(self, plan: StepPlan) -> None:
        """libllama found no room (nothing was committed): shrink the budget, evict caches,
        and if the step was decode-only, preempt the youngest sequence."""
        self.kv.make_room(self.n_ctx)
        if plan.num_tokens > plan.num_decode_rows:
            self._budget_cap = max(1, plan.num_tokens // 2)
        else:
            self._preempt_youngest()

    def update(self, plan: StepPlan, output: StepOutput) -> list[Emission]:
        """Commit a successful step: advance KV positions, fork n > 1 groups whose prompt is
        done, keep accepted drafts (drop the rejected ones' cells), append sampled tokens
        (several for a sequence whose draft was accepted), emit."""
        self.steps += 1
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
        accepted_after = self.speculation.commit(plan, output, self.steps)
        now = self.clock()
        logprobs_of = output.logprobs or [None] * len(plan.sampled)
        for index, (request, token, logprob) in enumerate(zip(plan.sampled, output.tokens.tolist(),
                                                              logprobs_of, strict=True)):
            if request.is_finished:  # aborted while the step ran
                continue
            if request.num_generated == 0:
                request.first_token_at = now
            if index in accepted_after:
                emissions.extend(self._advance_many(request, [token, *accepted_after[index]]))
                continue
            request.token_ids.append(token)
            emission = self._advance(request, token, logprob)
            if emission is not None:
                emissions.append(emission)
        return emissions

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
                self.kv.drop(request, len(request.token_ids))
            merged = [Emission(request, TokenEvent("".join(text), num_tokens))] if text else []
            return [*merged, emission]
        return [Emission(request, TokenEvent("".join(text), num_tokens))] if text else []

    def _fork(self, request: Request) -> list[Request]:
        """Share the computed prompt with the group's other choices (one KV copy each)."""
        forks = list(request.forks)
        for fork in forks:
            self.kv.share(request, fork)
            fork.num_computed = request.num_computed
            fork.num_cached = request.num_cached
            fork.fork_of = None
            self.counters.forked_choices += 1
        request.forks.clear()
        return forks

    def _advance(self, request: Request, token: int, logprob: TokenLogprob | None) -> Emission | None:
        """One sampled token of a sequence (already appended to its tokens): end of
        generation, a grammar that gave up, a stop string, its watch (``OutputWatch``),
        max_tokens or the context's end finish it; else its new text (if any) goes out."""
        detokenizer = request.detokenizer
        assert detokenizer is not None
        params = request.params
        constraint = request.constraint
        if self.is_eog(token):  # never sampled under ignore_eos (the runner bans it) but by a grammar
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
        if request.watch_ends(output.text):
            return self._finish(request, output.text, FinishReason.STOP)
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
        """The request leaves: its siblings go on alone and its slot is freed, the computed
        tokens kept as the slot's prefix cache."""
        request.status = status
        detach_forks(request, self.waiting)
        if request.fork_of is not None:  # a sibling gone before its group's prompt was done
            request.fork_of.forks.remove(request)
            request.fork_of = None
        if request in self.running:
            self.running.remove(request)
            self.kv.release(request, self.steps)
