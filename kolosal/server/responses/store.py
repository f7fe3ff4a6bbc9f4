"""Stored responses for ``previous_response_id`` and for retrieval: in memory,
bounded in count, each entry expiring a fixed time after it was stored. Nothing survives a
restart; the least recently stored entry goes first when the store is full."""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_STORED_RESPONSES = 1000
STORED_RESPONSE_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response object as returned, and the conversation it ends (chat messages: the
    earlier turns, this request's input, this response's output; no instructions, which
    OpenAI does not carry over)."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]


class ResponseStore:
    """An insertion-ordered map with a size bound and a time-to-live. The event loop is the
    only caller, so no lock; expired entries are dropped as they are met (oldest first)."""

    def __init__(self, max_entries: int = MAX_STORED_RESPONSES, ttl_s: float = STORED_RESPONSE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("a response store needs room for one entry and a positive lifetime")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._expire()
        self._entries.pop(response_id, None)
        self._entries[response_id] = (self._clock() + self.ttl_s, stored)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        entry = self._entries.get(response_id)
        return None if entry is None else entry[1]

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._entries.pop(response_id, None) is not None

    def _expire(self) -> None:
        """Entries expire in insertion order (one lifetime for all), so the oldest go first."""
        now = self._clock()
        while self._entries:
            expires, _ = next(iter(self._entries.values()))
            if expires > now:
                return
            self._entries.popitem(last=False)
