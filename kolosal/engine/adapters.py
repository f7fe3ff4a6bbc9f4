"""Which adapter set a step computes. Pure Python.

libllama applies one set of LoRA adapters (with their scales) to a whole context per
decode, so a step carries the rows of one adapter set only (``Request.adapters``, see
lora.py; ``()`` is the base model). Policy: the sets that have work (a running sequence
that is not waiting for its n > 1 group's prompt) take turns, one step each, in a fixed
cyclic order (sorted), so every set with work gets a step in every round and none starves,
whatever the others' loads. The rows of the other sets wait for their turn; with one set
at work (the usual case: no adapters at all) every step is that set's and nothing changes.
Decode rows, prompt chunks and draft rows all follow the step's set.
"""
from __future__ import annotations

from .lora import BASE_MODEL, AdapterSet
from .request import Request


class AdapterTurns:
    """Round-robin over the adapter sets of the running sequences; ``current`` is the set
    of the last step planned."""

    def __init__(self) -> None:
        self.current: AdapterSet = BASE_MODEL

    def pick(self, running: list[Request]) -> AdapterSet:
        """The adapter set of the next step: the one after ``current`` in sorted order
        among the sets that have work (wrapping around), or ``current`` when none has."""
        sets = sorted({request.adapters for request in running if not request.awaits_fork})
        if sets:
            later = [adapters for adapters in sets if adapters > self.current]
            self.current = later[0] if later else sets[0]
        return self.current
