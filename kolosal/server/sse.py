"""Server-sent events for OpenAI streams. Content chunks are the hot path (one per token
per stream), so each stream precomputes the bytes around the only part that changes."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class ContentChunkEncoder:
    """``encode(index, text)`` == ``event(<chunk with that text>)``, without building dicts."""

    def __init__(self, envelope: dict[str, Any], chat: bool) -> None:
        marker = "\x00KOLOSAL\x00"
        choice: dict[str, Any] = ({"index": 0, "delta": {"content": marker}, "finish_reason": None,
                                   "logprobs": None}
                                  if chat else
                                  {"index": 0, "text": marker, "finish_reason": None, "logprobs": None})
        body = event({**envelope, "choices": [choice]})
        quoted = orjson.dumps(marker)
        head, tail = body.split(quoted)
        index_key = b'"index":0'
        self._parts = [part.split(index_key) for part in (head, tail)]
        self._cache: dict[int, tuple[bytes, bytes]] = {}

    def encode(self, index: int, text: str) -> bytes:
        parts = self._cache.get(index)
        if parts is None:
            replacement = b'"index":' + str(index).encode()
            parts = (replacement.join(self._parts[0]), replacement.join(self._parts[1]))
            self._cache[index] = parts
        return parts[0] + orjson.dumps(text) + parts[1]
