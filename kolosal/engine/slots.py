"""KV slots: one seq_id each. A free slot keeps the tokens of its last sequence as a
prefix cache; the table picks the slot whose cache shares the longest prefix."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Slot:
    seq_id: int
    cached_ids: list[int] = field(default_factory=list)  # what the KV holds while free
    busy: bool = False
    last_used: int = 0  # step counter, for LRU eviction


def common_prefix_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    if limit == 0:
        return 0
    if limit < 32:
        for index in range(limit):
            if a[index] != b[index]:
                return index
        return limit
    mismatch = np.flatnonzero(np.asarray(a[:limit]) != np.asarray(b[:limit]))
    return int(mismatch[0]) if len(mismatch) else limit


class SlotTable:
    def __init__(self, num_slots: int) -> None:
        self.slots = [Slot(seq_id) for seq_id in range(num_slots)]

    @property
    def num_free(self) -> int:
        return sum(1 for slot in self.slots if not slot.busy)

    def acquire(self, token_ids: list[int]) -> tuple[Slot, int] | None:
        """Take the free slot with the longest reusable prefix (else the least recently
        used one). Returns the slot and how many leading tokens its KV already holds."""
        best: Slot | None = None
        best_prefix = -1
        for slot in self.slots:
            if slot.busy:
                continue
            prefix = common_prefix_length(slot.cached_ids, token_ids)
            if prefix > best_prefix or (prefix == best_prefix and best is not None
                                        and slot.last_used < best.last_used):
                best, best_prefix = slot, prefix
        if best is None:
            return None
        best.busy = True
        # At least the last token must be computed to get logits for the next one.
        return best, min(best_prefix, len(token_ids) - 1)

    def release(self, slot: Slot, kv_ids: list[int], step: int) -> None:
        slot.busy = False
        slot.cached_ids = kv_ids
        slot.last_used = step

    def evictable(self) -> list[Slot]:
        """Free slots holding cached tokens, least recently used first."""
        return sorted((s for s in self.slots if not s.busy and s.cached_ids), key=lambda s: s.last_used)
