"""Bytes in, safe text out: incremental UTF-8 decoding and stop-string hold-back."""
from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(slots=True)
class DetokenizerOutput:
    text: str           # text that may be sent now
    stopped: bool       # a stop string matched (text ends right before it)


class Detokenizer:
    """Feed token bytes; get text that never splits a UTF-8 character and never contains
    (or starts to contain) a stop string."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""  # decoded text not yet released: may be the start of a stop string

    def feed(self, piece: bytes) -> DetokenizerOutput:
        text = self._held + self._decoder.decode(piece)
        if not self._stop:
            self._held = ""
            return DetokenizerOutput(text, False)
        cut = self._first_stop(text)
        if cut >= 0:
            self._held = ""
            return DetokenizerOutput(text[:cut], True)
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return DetokenizerOutput(text[:len(text) - keep], False)

    def flush(self) -> str:
        """At the end of generation: release held text (no stop string completed)."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _first_stop(self, text: str) -> int:
        positions = [index for index in (text.find(s) for s in self._stop) if index >= 0]
        return min(positions) if positions else -1

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
