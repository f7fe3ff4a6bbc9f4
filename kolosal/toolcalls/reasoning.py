"""Split a reasoning model's ``<think>…</think>`` block from its answer.

Qwen3, QwQ and the DeepSeek-R1 distills open their output with ``<think>`` (or their
template already wrote it at the end of the prompt, see ``starts_in_reasoning``), reason,
close with ``</think>`` and answer. As llama-server and vLLM do, the block becomes
``reasoning_content`` (trimmed of the surrounding whitespace) and the answer (its leading
whitespace trimmed) ``content``. Only a block at the very start counts: ``<think>`` later
in an answer is content. An unclosed block (the output was cut off) is all reasoning.
"""
from __future__ import annotations

import enum

from .jsonscan import WHITESPACE

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


class _State(enum.Enum):
    START = enum.auto()        # before any non-space text: a <think> may come
    REASONING = enum.auto()
    AFTER = enum.auto()        # just after </think>: drop whitespace
    CONTENT = enum.auto()


class ReasoningSplitter:
    """Feed text deltas; each call returns ``(reasoning, content)`` text to send now.

    ``starts_open``: the prompt ended with ``<think>``, so the output starts inside the
    block (a repeated ``<think>`` at its start is tolerated).
    """

    def __init__(self, starts_open: bool = False) -> None:
        self._starts_open = starts_open
        self._state = _State.START
        self._buffer = ""
        self._reasoning_started = False  # leading whitespace of the reasoning is dropped
        self._held_space = ""            # trailing whitespace of the reasoning so far

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        while self._buffer:
            state = self._state
            if state is _State.START:
                stripped = self._buffer.lstrip(WHITESPACE)
                if OPEN_TAG.startswith(stripped) and not final:
                    break  # nothing but (part of) the opening tag so far
                if stripped.startswith(OPEN_TAG):
                    self._state, self._buffer = _State.REASONING, stripped[len(OPEN_TAG):]
                elif self._starts_open:
                    self._state, self._buffer = _State.REASONING, stripped
                else:
                    self._state = _State.CONTENT
            elif state is _State.REASONING:
                end = self._buffer.find(CLOSE_TAG)
                if end >= 0:
                    self._reason(self._buffer[:end], reasoning)
                    self._held_space = ""
                    self._state, self._buffer = _State.AFTER, self._buffer[end + len(CLOSE_TAG):]
                    continue
                keep = 0 if final else _partial_suffix(self._buffer, CLOSE_TAG)
                self._reason(self._buffer[:len(self._buffer) - keep], reasoning)
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            elif state is _State.AFTER:
                self._buffer = self._buffer.lstrip(WHITESPACE)
                if self._buffer:
                    self._state = _State.CONTENT
            else:
                content.append(self._buffer)
                self._buffer = ""
        return "".join(reasoning), "".join(content)

    def _reason(self, text: str, out: list[str]) -> None:
        if not self._reasoning_started:
            text = text.lstrip(WHITESPACE)
            if not text:
                return
            self._reasoning_started = True
        text = self._held_space + text
        body = text.rstrip(WHITESPACE)
        self._held_space = text[len(body):]
        if body:
            out.append(body)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def split_reasoning(text: str, starts_open: bool = False) -> tuple[str | None, str]:
    """``(reasoning_content, content)`` of a whole generation; reasoning is None when the
    model did not reason (no block, or an empty one)."""
    splitter = ReasoningSplitter(starts_open)
    first = splitter.feed(text)
    last = splitter.finish()
    reasoning = first[0] + last[0]
    return (reasoning or None), first[1] + last[1]
