"""KV slots: one seq_id each. A free slot keeps the tokens of its last sequence as a
prefix cache. A new request takes the free slot whose loss costs least (one whose whole
cache it extends, else an empty one, else the least recently used), and any slot, free or
running, can lend it a longer prefix: its cells are shared (``seq_copy``), not recomputed.
Cells are keyed by the LoRA adapter set they were computed under (``Slot.adapters``): a
cache or a running sequence lends its prefix only to a request of the same set."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .lora import BASE_MODEL, AdapterSet

QUICK_COMPARE = 32  # tokens compared in Python before numpy takes over


@dataclass(slots=True)
class Slot:
    seq_id: int
    cached_ids: list[int] = field(default_factory=list)  # what the KV holds while free
    busy: bool = False
    last_used: int = 0  # step counter, for LRU eviction
    adapters: AdapterSet = BASE_MODEL  # the adapter set its cells were computed under


def common_prefix_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    quick = min(limit, QUICK_COMPARE)
    for index in range(quick):
        if a[index] != b[index]:
            return index
    if quick == limit:
        return limit
    mismatch = np.flatnonzero(np.asarray(a[:limit]) != np.asarray(b[:limit]))
    return int(mismatch[0]) if len(mismatch) else limit


class SlotTable:
    def __init__(self, num_slots: int) -> None:
        self.slots = [Slot(seq_id) for seq_id in range(num_slots)]

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    @property
    def num_free(self) -> int:
        return sum(1 for slot in self.slots if not slot.busy)

    def acquire(self, token_ids: list[int], adapters: AdapterSet = BASE_MODEL) -> tuple[Slot, int] | None:
        """Take a free slot: the one whose whole cache this request extends, or that holds
        the request's whole prompt (the longest such: nothing is lost, and a repeated
        request lands in the same cells), else an empty one, else the least recently used,
        so the caches of other conversations stay alive. A cache of another adapter set is
        never reused, only evicted. Returns it and how many leading tokens its own KV
        already holds for this request (never the last token: its logits are needed)."""
        best: Slot | None = None
        best_rank: tuple[int, int, int] = (-1, 0, 0)
        best_prefix = 0
        for slot in self.slots:
            if slot.busy:
                continue
            same_set = slot.adapters == adapters
            prefix = common_prefix_length(slot.cached_ids, token_ids) if same_set else 0
            # nothing lost (the longer the better) > empty > least recently used
            if not slot.cached_ids:
                rank = (1, 0, 0)
            elif same_set and (prefix == len(slot.cached_ids) or prefix >= len(token_ids) - 1):
                rank = (2, prefix, 0)
            else:
                rank = (0, 0, -slot.last_used)
            if rank > best_rank:
                best, best_rank, best_prefix = slot, rank, prefix
        if best is None:
            return None
        best.busy = True
        return best, min(best_prefix, len(token_ids) - 1)

    def best_source(self, token_ids: list[int], candidates: Iterable[tuple[Slot, list[int], int]]
                    ) -> tuple[Slot | None, int]:
        """Of ``candidates`` (a slot, its tokens, how many of them its KV holds), the one
        sharing the longest prefix with ``token_ids``, and that length (capped before the
        last token)."""
        best: Slot | None = None
        best_prefix = 0
        for slot, ids, held in candidates:
            prefix = min(common_prefix_length(ids, token_ids), held)
            if prefix > best_prefix:
                best, best_prefix = slot, prefix
        return best, min(best_prefix, len(token_ids) - 1)

    def release(self, slot: Slot, kv_ids: list[int], step: int) -> None:
        slot.busy = False
        slot.cached_ids = kv_ids
        slot.last_used = step

    def evictable(self) -> list[Slot]:
        """Free slots holding cached tokens, least recently used first."""
        return sorted((s for s in self.slots if not s.busy and s.cached_ids), key=lambda s: s.last_used)
