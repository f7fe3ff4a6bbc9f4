"""One parser for a chat generation: reasoning block first, then content and tool calls
(or a JSON answer, its fence dropped).

``OutputFormat`` says what to look for (built once per request, e.g. with
``ChatTemplate.output_format``); ``OutputParser`` turns text deltas into stream events and
``parse_output`` a whole text into a ``ParsedOutput``. The two agree exactly: the
non-streamed result is the fold of the streamed events.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from .families import ToolFamily, markers
from .fence import FenceStripper
from .reasoning import ReasoningSplitter
from .stream import IdFactory, ToolCallStreamParser
from .types import ContentDelta, ParsedOutput, ReasoningDelta, StreamEvent, aggregate


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What a generation may contain besides plain content.

    ``tool_family``: parse tool calls written in this format (None: no tool parsing,
    e.g. no tools offered or ``tool_choice: "none"``). ``tool_names``: the offered
    functions; a call of anything else stays content (None: any name). ``reasoning``:
    split a leading ``<think>`` block into reasoning (False keeps it inline in content).
    ``starts_in_reasoning``: the prompt already opened that block. ``calls_only``: a
    grammar makes the output tool calls (``tool_choice`` "required" or a named function),
    so any text that is not a complete call — a call cut off by ``max_tokens``, the
    separator before it — is dropped, never content: OpenAI never returns half a call.
    Free ("auto") output keeps such text as content, since it may be prose.
    ``max_calls``: the output ends after that many calls (1 for ``parallel_tool_calls``
    false); None: any number. A call identical to an earlier one always ends it.
    ``fenced``: the content is a JSON answer that may sit in a Markdown fence (``fence``):
    the fence and the whitespace around it are dropped.
    """
    tool_family: ToolFamily | None = None
    tool_names: frozenset[str] | None = None
    reasoning: bool = False
    starts_in_reasoning: bool = False
    calls_only: bool = False
    max_calls: int | None = None
    fenced: bool = False

    @property
    def is_plain(self) -> bool:
        """Nothing to parse: the text is the content, as is."""
        return self.tool_family is None and not self.reasoning and not self.fenced

    @property
    def markers(self) -> tuple[str, ...]:
        """Marker texts this parser looks for: when one is a single special token of the
        model, the engine must render that token as text (and grammars should use it)."""
        return markers(self.tool_family, self.reasoning)


def offered_tool_names(tools: Sequence[Mapping[str, Any]] | None,
                       tool_choice: Any = "auto") -> frozenset[str] | None:
    """Names a call may use: every offered function, or only the one ``tool_choice``
    names. None when calls are off (no tools, or ``tool_choice`` "none")."""
    if not tools or tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping):
        return frozenset([str(tool_choice["function"]["name"])])
    return frozenset(str(tool["function"]["name"]) for tool in tools)


class OutputParser:
    """Feed text deltas of one generation; get ContentDelta / ReasoningDelta /
    ToolCallStart / ToolCallArguments events (see ``types``)."""

    def __init__(self, fmt: OutputFormat, id_factory: IdFactory | None = None) -> None:
        self._splitter = (ReasoningSplitter(fmt.starts_in_reasoning) if fmt.reasoning else None)
        self._tools = (ToolCallStreamParser(fmt.tool_family, fmt.tool_names, id_factory, fmt.max_calls)
                       if fmt.tool_family is not None else None)
        self._calls_only = fmt.calls_only and self._tools is not None
        self._fence = FenceStripper() if fmt.fenced else None

    @property
    def repeated(self) -> bool:
        """A call repeated an earlier one: the output ended there (``ToolCallStreamParser``)."""
        return self._tools is not None and self._tools.repeated

    @property
    def ended(self) -> bool:
        """The output ended at a call: a repeat, or the last one allowed."""
        return self._tools is not None and self._tools.ended

    @property
    def settled(self) -> bool:
        """Every call the text fed so far holds is decided (none half read)."""
        return self._tools is None or self._tools.settled

    def feed(self, text: str) -> list[StreamEvent]:
        if self._splitter is None:
            return self._content(text, final=False)
        reasoning, content = self._splitter.feed(text)
        return self._events(reasoning, content, final=False)

    def finish(self) -> list[StreamEvent]:
        if self._splitter is None:
            return self._content("", final=True)
        reasoning, content = self._splitter.finish()
        return self._events(reasoning, content, final=True)

    def _events(self, reasoning: str, content: str, final: bool) -> list[StreamEvent]:
        events: list[StreamEvent] = [ReasoningDelta(reasoning)] if reasoning else []
        return events + self._content(content, final)

    def _content(self, text: str, final: bool) -> list[StreamEvent]:
        if self._fence is not None:
            text = self._fence.feed(text) + (self._fence.finish() if final else "")
        if self._tools is None:
            return [ContentDelta(text)] if text else []
        events = self._tools.feed(text) if text else []
        events = events + self._tools.finish() if final else events
        if self._calls_only:  # only an unfinished call's text can be content here
            return [event for event in events if not isinstance(event, ContentDelta)]
        return events


class RepeatWatch:
    """Ends a generation where its parser ends it, in the engine, as the text comes
    (``kolosal.engine.OutputWatch``): at a repeated call, which the writer's parser drops,
    billing the tokens up to the last point where the text was settled (before the repeat
    began); or after the last call ``max_calls`` allows, billing them all. One per choice:
    ``repeat_watch(fmt)`` makes them."""

    def __init__(self, fmt: OutputFormat) -> None:
        self._parser = OutputParser(fmt, id_factory=str)  # ids unused here
        self._num_settled = 0

    def feed(self, text: str, num_tokens: int) -> int | None:
        """None: go on; else the tokens to bill: the request ends here."""
        self._parser.feed(text)
        if self._parser.ended:
            return self._num_settled if self._parser.repeated else num_tokens
        if self._parser.settled:
            self._num_settled = num_tokens
        return None


def repeat_watch(fmt: OutputFormat) -> Callable[[], RepeatWatch] | None:
    """A factory of watches for the engine (one per choice); None when no calls are parsed."""
    return None if fmt.tool_family is None else partial(RepeatWatch, fmt)


def parse_output(text: str, fmt: OutputFormat, id_factory: IdFactory | None = None) -> ParsedOutput:
    """Parse a whole generation (the non-streamed response)."""
    parser = OutputParser(fmt, id_factory)
    return aggregate(parser.feed(text) + parser.finish())
