"""Constrained decoding with llguidance: one matcher per request, token masks computed in
Rust without the GIL, only for the rows that are constrained.

The grammar string is llguidance's (JSON Schema, Lark or regex compiled by the server's
``kolosal.toolcalls`` helpers); the tokenizer is built from the GGUF's own vocabulary
(``kolosal.llama.grammar``) and every matcher call goes through llguidance's C ABI
(``kolosal.llama.guidance``), so neither building the tokenizer nor computing a mask ever
holds up the event loop.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..llama.guidance import GrammarTokenizer, Matcher, ParserLimits, new_matcher
from ..toolcalls.limits import deep_call
from .errors import InvalidGrammarError

# Bound the work one grammar may cost per step and to build: a hostile schema hits these
# and fails its own request (400 at submission, or a grammar error), never the engine.
PARSER_LIMITS = ParserLimits(step_lexer_fuel=400_000, step_max_items=100_000,
                             max_grammar_size=400_000, verbose_errors=False)
ROWS_PER_HELPER = 4  # a step's masks are split over helper threads past this many rows


class Constraint:
    """One request's grammar state: which tokens may come next, advanced per token."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher

    def consume(self, token: int) -> bool:
        """Advance on a sampled token; False if the grammar rejects it."""
        return self.matcher.consume(token)

    @property
    def is_stopped(self) -> bool:
        """Nothing but end-of-generation may follow: the output is complete."""
        return self.matcher.is_stopped

    @property
    def error(self) -> str:
        return self.matcher.error


class GrammarEngine:
    """Per model: the llguidance tokenizer and one bitmask row per KV slot."""

    def __init__(self, tokenizer: GrammarTokenizer, num_slots: int) -> None:
        self.tokenizer = tokenizer
        self.bitmask = np.zeros((num_slots, tokenizer.mask_words), dtype=np.int32)
        self._helpers: ThreadPoolExecutor | None = None

    def compile(self, grammar: str) -> Constraint:
        """A fresh matcher for ``grammar`` (can take up to ~100 ms for a big schema: call it
        off the event loop), built on a deep-stack thread (``toolcalls.limits``). Its first
        mask is computed here too: a grammar that fails there (a ``$ref`` cycle that admits
        no document) or allows nothing at all is the request's error, a 400 before anything
        is queued. Raises InvalidGrammarError."""
        matcher = deep_call(lambda: new_matcher(self.tokenizer, grammar, PARSER_LIMITS))
        if matcher.is_error:
            raise InvalidGrammarError(f"invalid grammar: {matcher.error}")
        first = np.zeros(self.tokenizer.mask_words, dtype=np.int32)
        if not matcher.fill_mask(first.ctypes.data) or matcher.is_error:
            reason = " ".join(matcher.error.replace("<non-verbose/>", "").split())
            raise InvalidGrammarError(f"invalid grammar: it fails before its first token ({reason}): "
                                      "it admits no document (e.g. a $ref cycle)")
        if not first.any() and not matcher.is_accepting:
            raise InvalidGrammarError("invalid grammar: it admits no output (no token can start "
                                      "a valid document: e.g. a $ref cycle, or contradicting constraints)")
        return Constraint(matcher)

    def fill_masks(self, slots: Sequence[tuple[Constraint, int]]) -> None:
        """Compute the next-token mask of each (constraint, slot) into ``bitmask[slot]``.
        A matcher that fails here is left in its error state: the token sampled from the
        row is then refused by ``consume`` and the request ends with the grammar's error.
        Past ROWS_PER_HELPER rows the work is split over helper threads (each C call
        releases the GIL)."""
        jobs = [(constraint.matcher, self.bitmask[slot].ctypes.data) for constraint, slot in slots]
        if len(jobs) <= ROWS_PER_HELPER:
            _fill(jobs)
            return
        if self._helpers is None:
            self._helpers = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                               thread_name_prefix="kolosal-masks")
        chunks = [jobs[i:i + ROWS_PER_HELPER] for i in range(0, len(jobs), ROWS_PER_HELPER)]
        for future in [self._helpers.submit(_fill, chunk) for chunk in chunks]:
            future.result()

    def mask(self, slot: int) -> np.ndarray:
        row: np.ndarray = self.bitmask[slot]
        return row

    def close(self) -> None:
        if self._helpers is not None:
            self._helpers.shutdown(wait=True)


def _fill(jobs: list[tuple[Matcher, int]]) -> None:
    for matcher, address in jobs:
        matcher.fill_mask(address)
