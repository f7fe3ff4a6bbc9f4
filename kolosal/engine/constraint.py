"""Constrained decoding with llguidance: one matcher per request, token masks computed in
Rust (in parallel, without the GIL) only for the rows that are constrained.

The grammar string is llguidance's (JSON Schema, Lark or regex compiled by the server's
``kolosal.toolcalls`` helpers); the tokenizer is built from the GGUF's own vocabulary.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from ..toolcalls.limits import deep_call
from .errors import InvalidGrammarError

# Bound the work one grammar may cost per step and to build: a hostile schema hits these
# and fails its own request (400 at submission, or a grammar error), never the engine.
PARSER_LIMITS = llguidance.LLParserLimits(step_lexer_fuel=400_000, step_max_items=100_000,
                                          max_grammar_size=400_000, verbose_errors=False)


class Constraint:
    """One request's grammar state: which tokens may come next, advanced per token."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def consume(self, token: int) -> bool:
        """Advance on a sampled token; False if the grammar rejects it."""
        return bool(self.matcher.consume_token(token))

    @property
    def is_stopped(self) -> bool:
        """Nothing but end-of-generation may follow: the output is complete."""
        return bool(self.matcher.is_stopped())

    @property
    def error(self) -> str:
        return str(self.matcher.get_error())


class GrammarEngine:
    """Per model: the llguidance tokenizer and one bitmask row per KV slot."""

    def __init__(self, tokenizer: Any, num_slots: int) -> None:
        self.tokenizer = tokenizer
        self.executor = llguidance.LLExecutor(num_threads=2)
        self.bitmask = llg_numpy.allocate_token_bitmask(num_slots, tokenizer.vocab_size)

    def compile(self, grammar: str) -> Constraint:
        """A fresh matcher for ``grammar`` (can take up to ~100 ms for a big schema: call it
        off the event loop), built on a deep-stack thread (``toolcalls.limits``). Its first
        mask is computed here too: a grammar that fails there (a ``$ref`` cycle that admits
        no document) or allows nothing at all is the request's error, a 400 before anything
        is queued. Raises InvalidGrammarError."""
        matcher = deep_call(lambda: llguidance.LLMatcher(self.tokenizer, grammar, log_level=0,
                                                         limits=PARSER_LIMITS))
        if matcher.is_error():
            raise InvalidGrammarError(f"invalid grammar: {matcher.get_error()}")
        first = llg_numpy.allocate_token_bitmask(1, self.tokenizer.vocab_size)
        llg_numpy.fill_next_token_bitmask(matcher, first, 0)
        if matcher.is_error():
            reason = " ".join(matcher.get_error().replace("<non-verbose/>", "").split())
            raise InvalidGrammarError(f"invalid grammar: it fails before its first token ({reason}): "
                                      "it admits no document (e.g. a $ref cycle)")
        if not first.any() and not matcher.is_accepting():
            raise InvalidGrammarError("invalid grammar: it admits no output (no token can start "
                                      "a valid document: e.g. a $ref cycle, or contradicting constraints)")
        return Constraint(matcher)

    def fill_masks(self, slots: Sequence[tuple[Constraint, int]]) -> None:
        """Compute the next-token mask of each (constraint, slot) into ``bitmask[slot]``."""
        llg_numpy.fill_next_token_bitmask_par(
            self.executor, [(constraint.matcher, slot) for constraint, slot in slots], self.bitmask)

    def mask(self, slot: int) -> np.ndarray:
        row: np.ndarray = self.bitmask[slot]
        return row
