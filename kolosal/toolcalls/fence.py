"""A chat answer constrained to JSON may sit in a Markdown code fence, as llama-server's
grammar for ``response_format`` allows (common/chat-auto-parser-generator.cpp in the pinned
source): whitespace, then either the JSON or "```json", whitespace, the JSON, whitespace,
"```". Chat models are trained to write JSON inside such a fence; a grammar that forbids it
pushes a small model off its usual path, and it runs on until ``max_tokens`` far more often
(benchmarks/RESULTS.md, issue 27). The content the client gets is the JSON alone:
``FenceStripper`` removes the fence and the whitespace around it as the text streams.

The grammar side is ``grammar.json_schema_grammar(..., fenced=True)``; which requests get
it is ``server.completions.constraints.json_answer``.
"""
from __future__ import annotations

FENCE_OPEN = "```json"
FENCE_CLOSE = "```"
_WHITESPACE = " \t\r\n"
# The closing run the grammar allows is one whitespace run of at most 23 characters (the
# bounded ``space`` of schema_bounds) and the fence: anything further back is JSON.
MAX_HELD = 64


class FenceStripper:
    """Feed the text of a fenced JSON answer; get the JSON alone, never split from its
    context: a run at the end that may be the closing whitespace and fence is held until
    more text shows it is not."""

    __slots__ = ("_lead", "_in_body", "_held")

    def __init__(self) -> None:
        self._lead = ""        # text before the JSON: whitespace and an opening fence
        self._in_body = False
        self._held = ""        # the end of the body so far that may be whitespace and a fence

    def feed(self, text: str) -> str:
        if not self._in_body:
            text = self._skip_lead(text)
            if not self._in_body:
                return ""
        text = self._held + text
        cut = max(_tail_start(text), len(text) - MAX_HELD)
        self._held = text[cut:]
        return text[:cut]

    def finish(self) -> str:
        """The end of the output: what is held is the closing whitespace and fence (or,
        for an output cut off by ``max_tokens``, whitespace it ended in): dropped."""
        self._held = ""
        return ""

    def _skip_lead(self, text: str) -> str:
        """Consume leading whitespace and the opening fence; return the start of the JSON
        (setting ``_in_body``), or "" while the lead may go on."""
        lead = (self._lead + text).lstrip(_WHITESPACE)
        if lead.startswith(FENCE_OPEN):
            lead = lead[len(FENCE_OPEN):].lstrip(_WHITESPACE)
            if not lead:
                self._lead = FENCE_OPEN  # seen: what follows is whitespace, then the JSON
                return ""
        elif FENCE_OPEN.startswith(lead):  # empty, or a part of the fence so far
            self._lead = lead
            return ""
        self._lead = ""
        self._in_body = True
        return lead


def _tail_start(text: str) -> int:
    """Where the run at the end of ``text`` that may still be the closing whitespace and
    fence begins: up to three backticks, and the whitespace before them (found from the
    end: the cost is the run's length, never the text's)."""
    ticks = min(len(FENCE_CLOSE), len(text) - len(text.rstrip("`")))
    return len(text[:len(text) - ticks].rstrip(_WHITESPACE))
