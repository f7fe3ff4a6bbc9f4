"""Split generated text into content and tool calls, one delta at a time.

Content streams as it arrives, except text that could still be the start of a call
marker (held until it is decided) and runs of trailing whitespace (dropped when a call
follows them or the output ends with calls; released when more content follows, so a
reply without calls comes out byte for byte). Each call is emitted once it is complete
and valid: its start (index, id, name), then its arguments. A call that turns out
malformed (bad JSON, unknown tool, cut off) was never announced, and its text is content.
Decisions never depend on how the text was split, so the events of any streaming equal
those of parsing the whole text at once (``parse_tool_calls``).

A call identical to one already emitted (same name, same arguments in any key order) ends
the output: it is dropped with everything after it (``repeated`` turns true). Small models
asked for calls write the same call again and again; a client would run it each time.
With ``max_calls``, the output also ends once that many calls are out (``ended``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Collection

from .families import ToolFamily, new_call_id
from .jsonscan import WHITESPACE
from .syntax import NEED_MORE, SYNTAXES, Accepted, Region
from .types import ContentDelta, ParsedOutput, StreamEvent, ToolCallArguments, ToolCallStart, aggregate

IdFactory = Callable[[], str]


class ToolCallStreamParser:
    """Feed text deltas of one generation; get content and tool-call events.

    ``tool_names``: only calls of these functions count (others stay content); None
    accepts any name. ``id_factory`` makes call ids (default: ``new_call_id(family)``).
    """

    def __init__(self, family: ToolFamily, tool_names: Collection[str] | None = None,
                 id_factory: IdFactory | None = None, max_calls: int | None = None) -> None:
        self._syntax = SYNTAXES[family]
        self._tool_names = frozenset(tool_names) if tool_names is not None else None
        self._new_id = id_factory or (lambda: new_call_id(family))
        self._buffer = ""              # text not yet decided
        self._region: Region | None = None  # the call being read, starting at _buffer[0]
        self._held_space = ""          # trailing whitespace of the content so far
        self._num_calls = 0
        self._seen: set[tuple[str, str]] = set()  # (name, canonical arguments) of each call
        self._max_calls = max_calls
        self._finished = False
        self.repeated = False          # a call repeated an earlier one: the output ended there
        self.ended = False             # ... or max_calls were out: nothing more is read

    @property
    def settled(self) -> bool:
        """Everything fed so far is decided (nothing held but trailing whitespace)."""
        return not self._buffer

    def feed(self, text: str) -> list[StreamEvent]:
        assert not self._finished, "feed() after finish()"
        if self.ended:
            return []
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[StreamEvent]:
        """End of generation: decide everything still held back."""
        if self._finished:
            return []
        events = self._drain(final=True)
        if self._held_space and not self._num_calls:
            events.append(ContentDelta(self._held_space))
        self._held_space = ""
        self._finished = True
        return events

    def _drain(self, final: bool) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while self._buffer:
            if self._region is None:
                start, opener = self._find_opener()
                if opener is None:
                    keep = 0 if final else self._partial_opener_length()
                    self._content(self._buffer[:len(self._buffer) - keep], events)
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                self._content(self._buffer[:start], events)
                self._buffer = self._buffer[start:]
                self._region = self._syntax.region(opener, self._tool_names)
                continue
            result = self._region.advance(self._buffer, final)
            if result is NEED_MORE:
                break
            self._region = None
            if isinstance(result, Accepted):
                self._held_space = ""  # whitespace before a call is not content
                self._calls(result, events)
                self._buffer = "" if self.ended else self._buffer[result.length:]
            else:  # not a call after all: its first character is content, rescan the rest
                self._content(self._buffer[0], events)
                self._buffer = self._buffer[1:]
        return events

    def _calls(self, accepted: Accepted, events: list[StreamEvent]) -> None:
        """Emit the region's calls, up to the first that repeats an earlier one or the
        most calls allowed."""
        for call in accepted.calls:
            key = (call.name, json.dumps(json.loads(call.arguments), sort_keys=True))
            if key in self._seen:
                self.repeated = self.ended = True
                return
            self._seen.add(key)
            events.append(ToolCallStart(self._num_calls, self._new_id(), call.name))
            events.append(ToolCallArguments(self._num_calls, call.arguments))
            self._num_calls += 1
            if self._num_calls == self._max_calls:
                self.ended = True
                return

    def _find_opener(self) -> tuple[int, str | None]:
        best, found = len(self._buffer), None
        for opener in self._syntax.openers:
            index = self._buffer.find(opener, 0, best + len(opener))
            if 0 <= index < best:
                best, found = index, opener
        return best, found

    def _partial_opener_length(self) -> int:
        """Length of the longest buffer suffix that is a proper prefix of an opener."""
        longest = 0
        for opener in self._syntax.openers:
            for size in range(min(len(opener) - 1, len(self._buffer)), longest, -1):
                if self._buffer.endswith(opener[:size]):
                    longest = size
                    break
        return longest

    def _content(self, text: str, events: list[StreamEvent]) -> None:
        if not text:
            return
        text = self._held_space + text
        body = text.rstrip(WHITESPACE)
        self._held_space = text[len(body):]
        if body and events and isinstance(events[-1], ContentDelta):
            events[-1] = ContentDelta(events[-1].text + body)  # one delta per feed
        elif body:
            events.append(ContentDelta(body))


def parse_tool_calls(text: str, family: ToolFamily, tool_names: Collection[str] | None = None,
                     id_factory: IdFactory | None = None) -> ParsedOutput:
    """Parse a whole generation: its content and its tool calls (see ToolCallStreamParser)."""
    parser = ToolCallStreamParser(family, tool_names, id_factory)
    return aggregate(parser.feed(text) + parser.finish())
