"""Speculation as one policy object beside the scheduler: which sequences draft, how many
draft rows a step gets, which padding rows make a step cheaper, and what a verified step
accepted. It owns everything the drafting decision learns (step times by row count, the
acceptance odds, the payoff of drafted steps) and its counters.

The seam is three calls, made by the scheduler in this order for each step:
``plan(builder, decoding, step)`` adds draft and padding rows to a step being planned,
``commit(plan, output, step)`` keeps the accepted drafts' cells and returns the tokens they
gained, ``observe(plan, decode_s)`` feeds the step's time back. ``drafter_for`` gives an
admitted request its drafter (or none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..kv_cache import KVCache
from ..plan import PlanBuilder, StepOutput, StepPlan
from ..request import DEFAULT_DRAFT_MAX, SPECULATE_ON, Request
from .drafting import DRAFT_STEP_SHARE, Drafter, DraftPayoff, MatchOdds, StepCost, draft_length

Candidate = tuple[list[float], list[int], Request, Drafter]  # (chances, draft, request, drafter)


@dataclass(slots=True)
class SpeculationCounters:
    """Named as the engine's stats fields they become."""

    spec_draft_tokens: int = 0        # draft tokens verified
    spec_accepted_tokens: int = 0     # ... and accepted
    padding_rows: int = 0             # one-token drafts added only to make a step cheaper
    padding_accepted_tokens: int = 0  # ... that were accepted all the same


class Speculation:
    """Draft rows for the engine's sequences (see the module docstring for the seam).

    ``draft_max``: draft tokens per sequence and step for requests that do not say;
    ``pad_rows``: add rows to a step where measured times say that makes it cheaper."""

    def __init__(self, kv: KVCache, draft_max: int = 0, pad_rows: bool = False) -> None:
        self.kv = kv
        self.draft_max = draft_max
        self.pad_rows = pad_rows
        self.cost = StepCost()        # decode time by row count, for the drafting decision
        self.payoff = DraftPayoff()   # ... and whether drafting has realised more tokens per second
        self.odds = MatchOdds()       # acceptance of draft tokens by the match length they continue
        self.last_accepted = 0        # draft tokens (padding rows too) accepted in the last commit
        self.counters = SpeculationCounters()

    def drafter_for(self, request: Request) -> Drafter | None:
        """Requests with a grammar or logprobs do not speculate: their rows need masks or
        log-probabilities that a draft row's verification does not compute. A request that
        asks for drafts itself gets them whenever the step has room (like llama-server's
        per-request ``speculative.n_max``); the engine's default drafts only while worth it."""
        params = request.params
        n_max = self.draft_max if params.speculative is None else params.speculative
        if n_max == SPECULATE_ON:
            n_max = self.draft_max or DEFAULT_DRAFT_MAX
        if request.constraint is not None or params.logprobs is not None or params.speculative == 0:
            return None
        if n_max <= 0:  # no drafts of its own; padding rows only (``_pad``)
            return Drafter(0) if self.pad_rows else None
        return Drafter(n_max, asked=params.speculative is not None)

    # -- planning -------------------------------------------------------------------------
    def plan(self, builder: PlanBuilder, decoding: list[Request], step: int) -> None:
        """Draft rows for a step whose decode rows (``decoding``) are in ``builder``, from
        the budget left; then, in a step whose every row has logits, padding rows."""
        if builder.budget <= 0 or not decoding:
            return
        prompts = len(builder.scheduled) > len(decoding)
        self._draft(builder, decoding, step, prompts)
        if self.pad_rows and not prompts:
            self._pad(builder, decoding)

    def _draft(self, builder: PlanBuilder, decoding: list[Request], step: int, prompts: bool) -> None:
        """Draft rows from the budget and the KV cells left, most promising draft first,
        each cut to the length that maximises the step's expected tokens per second
        (``best_draft_length``: acceptance odds by match length from ``MatchOdds``, step times
        by row count measured): at high concurrency a row costs as much as it can yield, and
        drafting stops by itself; where drafted steps have realised fewer tokens per second
        than plain ones, the engine's own drafts stop (``DraftPayoff``). One draft a step may
        try a row count not measured yet; a draft not worth a row is tried with one token now
        and then (``MatchOdds.explore``). The engine's drafts stay out of steps that compute
        prompts (those are long already, and the new streams wait for them) and stretch a
        step that other streams share by at most ``DRAFT_STEP_SHARE``. A request that asked
        for drafts takes them without the cost check. A sequence still owing its n > 1
        siblings a KV copy does not draft (the copy must hold the prompt only)."""
        rows = len(decoding)
        engine_drafts = not prompts and self.payoff.allows(rows)
        drafters = [(request, request.drafter) for request in decoding
                    if request.drafter is not None and request.drafter.n_max > 0 and not request.forks
                    and not request.drafter.paused(step) and (engine_drafts or request.drafter.asked)]
        if not drafters:
            return
        asked = sum(drafter.n_max for _, drafter in drafters if drafter.asked)
        if asked:  # drafts a request asked for may evict prefix caches; the engine's own use free cells
            self.kv.make_room(len(builder.tokens) + min(asked, builder.budget))
        room = min(builder.budget, self.kv.cells_free() - len(builder.tokens))
        self._choose(builder, self._candidates(drafters, room), rows, room)

    def _choose(self, builder: PlanBuilder, candidates: list[Candidate], rows: int, room: int) -> None:
        """Each candidate, most likely first, takes the draft length worth its rows
        (``draft_length``; what a request asked for, uncut) while the room lasts."""
        expected = float(rows)
        explore = True  # one draft a step may try a row count whose time is not measured yet
        # other streams wait for this step: the engine's drafts stretch it by a bounded share
        max_seconds = self.cost.seconds(rows) * (1.0 + DRAFT_STEP_SHARE) if rows > 1 else math.inf
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

    def _candidates(self, drafters: list[tuple[Request, Drafter]], room: int) -> list[Candidate]:
        """Each drafter's proposal within its limits, with the odds of each of its tokens,
        most likely first token first."""
        candidates = []
        n_ctx = self.kv.n_ctx
        for request, drafter in drafters:
            limit = min(drafter.n_max, room, request.params.max_tokens - request.num_generated - 1,
                        n_ctx - len(request.token_ids) - 1)
            draft = drafter.propose(request.token_ids, limit)
            if draft:
                chances = self.odds.chances(drafter.match, len(draft), request.sampler is not None)
                candidates.append((chances, draft, request, drafter))
        candidates.sort(key=lambda candidate: -candidate[0][0])
        return candidates

    def _pad(self, builder: PlanBuilder, decoding: list[Request]) -> None:
        """Rows that make the step cheaper (``StepCost.padding``), each a one-token draft of
        a sequence not drafting yet this step: its prompt-lookup guess, else its last token
        again. Verified like any draft, so an accepted one is a token gained and a rejected
        one only costs its cell, removed after the step; a sequence's drafting record does
        not count them."""
        rows = len(builder.tokens)
        extra = self.cost.padding(rows, builder.budget)
        if not extra:  # most steps: no need to count the KV cells
            return
        free_cells = self.kv.cells_free() - rows
        if free_cells < extra:
            extra = self.cost.padding(rows, free_cells)
            if not extra:
                return
        drafting = {id(request) for request, _, _ in builder.drafts}
        n_ctx = self.kv.n_ctx
        for request in decoding:
            drafter = request.drafter
            if (drafter is None or request.forks or id(request) in drafting
                    or request.num_generated + 1 >= request.params.max_tokens
                    or len(request.token_ids) + 1 >= n_ctx):
                continue
            guess = drafter.propose(request.token_ids, 1) or request.token_ids[-1:]
            builder.add_draft(request, guess, padding=True)
            extra -= 1
            if not extra:
                return

    # -- after the decode -------------------------------------------------------------------
    def commit(self, plan: StepPlan, output: StepOutput, step: int) -> dict[int, list[int]]:
        """Keep the cells of accepted draft tokens, remove the rest, record how each
        sequence's draft did. Returns, per index in ``plan.sampled``, the tokens gained
        after the sampled one."""
        accepted_after: dict[int, list[int]] = {}
        total = padded = 0
        counters = self.counters
        for number, ((index, _, count), after) in enumerate(zip(plan.drafts, output.drafted, strict=True)):
            request = plan.sampled[index]
            accepted = len(after)
            request.num_computed += accepted
            if accepted < count:
                self.kv.drop(request, request.num_computed)
            accepted_after[index] = after
            if plan.is_padding(number):
                counters.padding_rows += count
                padded += accepted
                continue
            if request.drafter is not None:
                request.drafter.record(count, accepted, step)
                self.odds.record(request.drafter.match, count, accepted, request.sampler is not None)
            counters.spec_draft_tokens += count
            total += accepted
        counters.spec_accepted_tokens += total
        counters.padding_accepted_tokens += padded
        self.last_accepted = total + padded
        return accepted_after

    def observe(self, plan: StepPlan, decode_s: float) -> None:
        """Feed the drafting decision with a step whose every row has logits (after
        ``commit``, which counted its accepted draft tokens)."""
        if plan.num_tokens == plan.num_decode_rows + plan.num_draft_rows:
            self.cost.observe(plan.num_tokens, decode_s)
            self.payoff.observe(plan.num_decode_rows, plan.num_draft_rows > plan.num_padding,
                                plan.num_decode_rows + self.last_accepted, decode_s)
