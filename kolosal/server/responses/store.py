"""Stored responses for ``previous_response_id`` and for retrieval: in memory,
bounded in count and in bytes (an entry's size is its JSON: the response, which echoes the
request's tools and instructions, and the conversation), each entry expiring a fixed time
after it was stored. Nothing survives a restart; the least recently stored entries go first
when the store is full, and an entry larger than the whole byte bound is not kept (its
``previous_response_id`` is then unknown, a 404)."""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

logger = logging.getLogger(__name__)
MAX_STORED_RESPONSES = 1000
MAX_STORED_BYTES = 256 * 1024 * 1024
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
                 clock: Callable[[], float] = time.monotonic, max_bytes: int = MAX_STORED_BYTES) -> None:
        if max_entries < 1 or ttl_s <= 0 or max_bytes < 1:
            raise ValueError("a response store needs room for one entry and a positive lifetime")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StoredResponse, int]] = OrderedDict()
        self.num_bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._expire()
        self._drop(response_id)
        size = len(orjson.dumps([stored.response, stored.messages], default=str))
        if size > self.max_bytes:
            logger.warning("response %s not stored: %d bytes, over the store's %d", response_id, size,
                           self.max_bytes)
            return
        self._entries[response_id] = (self._clock() + self.ttl_s, stored, size)
        self.num_bytes += size
        while len(self._entries) > self.max_entries or self.num_bytes > self.max_bytes:
            self._pop_oldest()

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        entry = self._entries.get(response_id)
        return None if entry is None else entry[1]

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self.num_bytes -= entry[2]
        return True

    def _pop_oldest(self) -> None:
        _, (_, _, size) = self._entries.popitem(last=False)
        self.num_bytes -= size

    def _expire(self) -> None:
        """Entries expire in insertion order (one lifetime for all), so the oldest go first."""
        now = self._clock()
        while self._entries:
            expires = next(iter(self._entries.values()))[0]
            if expires > now:
                return
            self._pop_oldest()
