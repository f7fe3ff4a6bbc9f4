"""The KV cells behind the slot table: which prefix a new sequence starts from and how room
is made. Pure Python: libllama's memory is reached through ``KVMemory`` only.

Policy:
- A sequence starts from the longest computed prefix any slot can lend: its own slot's
  cache, or the cells of another slot (a free slot's cache, or a running sequence's computed
  tokens: a shared system prompt in use right now), shared with ``seq_copy``, never
  recomputed or duplicated.
- With sliding-window attention libllama may reuse cells the window no longer sees; a
  prefix is lent only while the cells the next token's window needs are still there.
- Room is made by evicting free slots' caches, least recently used first; running
  sequences are never evicted here (the scheduler preempts them).
- Cells computed under one LoRA adapter set are lent only to a request of the same set
  (``Request.adapters``, ``Slot.adapters``): under another set their keys and values differ.
"""
from __future__ import annotations

from typing import Protocol

from .request import Request
from .slots import Slot, SlotTable


class KVMemory(Protocol):
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool: ...

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None: ...

    def seq_pos_min(self, seq_id: int) -> int: ...


class KVCache:
    """The slot table and the KV cells of its sequences. ``running`` is the scheduler's
    list of running requests (read, never changed here): their computed tokens occupy cells
    and can be lent."""

    def __init__(self, num_slots: int, n_ctx: int, memory: KVMemory, running: list[Request],
                 swa_window: int = 0) -> None:
        self.slots = SlotTable(num_slots)
        self.n_ctx = n_ctx
        self.memory = memory
        self.swa_window = swa_window
        self._running = running

    def slot(self, request: Request) -> Slot:
        return self.slots.slots[request.seq_id]

    # -- accounting -----------------------------------------------------------------------
    def cells_cached(self) -> int:
        """Cells holding finished sequences' tokens, kept as prefix caches."""
        return sum(len(s.cached_ids) for s in self.slots.slots if not s.busy)

    def cells_used(self) -> int:
        return sum(r.num_computed for r in self._running) + self.cells_cached()

    def cells_free(self) -> int:
        return self.n_ctx - self.cells_used()

    def make_room(self, cells: int) -> bool:
        """Evict prefix caches (LRU first) until ``cells`` more tokens fit."""
        free = self.cells_free()
        for slot in self.slots.evictable():
            if free >= cells:
                break
            free += len(slot.cached_ids)
            self.memory.seq_remove(slot.seq_id)
            slot.cached_ids = []
        return free >= cells

    # -- a sequence's cells -----------------------------------------------------------------
    def take_slot(self, request: Request, reuse_prefix: bool) -> tuple[Slot, int, bool]:
        """A free slot for the request, how many leading tokens its KV now holds for it, and
        whether they were shared from another slot's cells (else they are the slot's own
        cache, or none)."""
        tokens = request.token_ids
        acquired = self.slots.acquire(tokens, request.adapters)
        assert acquired is not None
        slot, own = acquired
        slot.adapters = request.adapters
        if reuse_prefix:
            source, shared = self.slots.best_source(tokens, self._holders(slot))
            if source is not None and shared > own and self._window_intact(source.seq_id, shared):
                self.memory.seq_remove(slot.seq_id)
                self.memory.seq_copy(source.seq_id, slot.seq_id, 0, shared)
                return slot, shared, True
            if own and self._window_intact(slot.seq_id, own) and self.memory.seq_remove(slot.seq_id, own, -1):
                return slot, own, False
        self.memory.seq_remove(slot.seq_id)  # start over
        return slot, 0, False

    def share(self, source: Request, target: Request) -> None:
        """Give ``target`` (an n > 1 sibling) every cell of ``source``'s sequence."""
        self.memory.seq_copy(source.seq_id, target.seq_id, 0, -1)

    def drop(self, request: Request, start: int = 0) -> None:
        """Remove the request's cells from position ``start`` on (all by default)."""
        self.memory.seq_remove(request.seq_id, start, -1)

    def release(self, request: Request, step: int) -> None:
        """The request leaves its slot; its computed tokens stay as the slot's cache."""
        self.slots.release(self.slot(request), request.token_ids[:request.num_computed], step)

    def _holders(self, taken: Slot) -> list[tuple[Slot, list[int], int]]:
        """Every other slot with tokens in its KV computed under ``taken``'s adapter set: free
        slots' caches and running sequences' computed tokens, as (slot, tokens, how many of
        them the KV holds)."""
        adapters = taken.adapters
        holders = [(s, s.cached_ids, len(s.cached_ids)) for s in self.slots.slots
                   if not s.busy and s is not taken and s.cached_ids and s.adapters == adapters]
        holders += [(self.slot(r), r.token_ids, r.num_computed) for r in self._running
                    if r.num_computed > 0 and r.adapters == adapters]
        return holders

    def _window_intact(self, seq_id: int, prefix: int) -> bool:
        window = self.swa_window
        return window <= 0 or self.memory.seq_pos_min(seq_id) <= max(0, prefix - window + 1)
