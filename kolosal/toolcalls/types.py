"""Values the tool-call and reasoning parsers produce: parsed calls, whole results and
stream events. All plain frozen dataclasses, so the HTTP layer can map them to OpenAI's
shapes without knowing how they were parsed."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model made; ``arguments`` is a JSON object as a string."""
    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        """``message.tool_calls[i]`` of a chat completion."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """A whole generation split into its parts.

    ``content`` is the text for ``message.content`` (may be empty: map "" to ``null`` when
    there are tool calls, as OpenAI does); ``reasoning_content`` is None unless reasoning
    splitting was on and the model reasoned.
    """
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning_content: str | None = None


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """More of ``delta.content``."""
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """More of ``delta.reasoning_content``."""
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A new call: ``delta.tool_calls[{index, id, type: "function", function: {name,
    arguments: ""}}]``. Always comes before that call's arguments."""
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    """More of call ``index``'s arguments: ``delta.tool_calls[{index, function:
    {arguments: text}}]``."""
    index: int
    text: str


StreamEvent = ContentDelta | ReasoningDelta | ToolCallStart | ToolCallArguments


def aggregate(events: Iterable[StreamEvent]) -> ParsedOutput:
    """Fold stream events into the result a non-streamed parse gives for the same text."""
    content: list[str] = []
    reasoning: list[str] = []
    reasoned = False
    calls: list[list[str]] = []  # [id, name, arguments] per index
    for event in events:
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
            reasoned = True
        elif isinstance(event, ToolCallStart):
            assert event.index == len(calls), "tool call indexes must be dense and ordered"
            calls.append([event.id, event.name, ""])
        else:
            calls[event.index][2] += event.text
    return ParsedOutput("".join(content), [ToolCall(*call) for call in calls],
                        "".join(reasoning) if reasoned else None)
