"""One decode step as data: the rows the scheduler plans (``StepPlan``, built row by row
with ``PlanBuilder``), what the runner reads back from the decode (``StepOutput``) and the
events the scheduler emits afterwards (``Emission``). Pure Python + numpy."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lora import BASE_MODEL, AdapterSet
from .request import Event, Request, TokenLogprob


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
    adapters: AdapterSet = BASE_MODEL         # the LoRA adapter set of every row (adapters.py)

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
    """An event for one request, delivered to its sink once the step is done."""

    request: Request
    event: Event


class PlanBuilder:
    """Accumulates the rows of one step within a token budget: chunks of sequences
    (``add``), then draft rows after their decode rows (``add_draft``), all of one adapter
    set (``adapters``)."""

    def __init__(self, budget: int, adapters: AdapterSet = BASE_MODEL) -> None:
        self.budget = budget
        self.adapters = adapters
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
        """The step as arrays, or None when no row was added. Logits are asked for the last
        row of every chunk that completes its prompt (that sequence samples there; an n > 1
        group's choices all sample the same row), for every draft row, and for every row of
        a chunk whose prompt logprobs were asked."""
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
                        self.num_padding, self.adapters)
