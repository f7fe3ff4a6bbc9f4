"""Streaming parsing: any split of the text into deltas gives exactly the whole-text result,
content never shows part of a call marker, and content streams without waiting for the
end."""
from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolosal.toolcalls import (
    ContentDelta,
    OutputFormat,
    OutputParser,
    ParsedOutput,
    StreamEvent,
    ToolCallArguments,
    ToolCallStart,
    ToolCallStreamParser,
    ToolFamily,
    aggregate,
    parse_output,
    parse_tool_calls,
)
from kolosal.toolcalls.render import format_tool_calls

from ..lanes import examples
from .cases import CASES, TOOL_NAMES, Case
from .helpers import random_cuts


def stream(text: str, cuts: list[int], family: ToolFamily,
           tool_names: frozenset[str] | None = TOOL_NAMES) -> list[StreamEvent]:
    numbers = itertools.count()
    parser = ToolCallStreamParser(family, tool_names, lambda: f"call_{next(numbers)}")
    events: list[StreamEvent] = []
    bounds = [0, *sorted(cuts), len(text)]
    for start, end in itertools.pairwise(bounds):
        events += parser.feed(text[start:end])
    return events + parser.finish()


def whole(text: str, family: ToolFamily, tool_names: frozenset[str] | None = TOOL_NAMES) -> ParsedOutput:
    numbers = itertools.count()
    return parse_tool_calls(text, family, tool_names, lambda: f"call_{next(numbers)}")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_character_by_character_equals_whole(case: Case) -> None:
    events = stream(case.text, list(range(1, len(case.text))), case.family)
    assert aggregate(events) == whole(case.text, case.family)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_random_splits_equal_whole(case: Case) -> None:
    rng = random.Random(case.name)
    expected = whole(case.text, case.family)
    for _ in range(30):
        assert aggregate(stream(case.text, random_cuts(rng, len(case.text)), case.family)) == expected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_call_events_come_in_order(case: Case) -> None:
    events = stream(case.text, list(range(1, len(case.text))), case.family)
    calls = [e for e in events if isinstance(e, ToolCallStart | ToolCallArguments)]
    for index in range(len(case.calls)):
        start, arguments = calls[2 * index], calls[2 * index + 1]
        assert isinstance(start, ToolCallStart) and start.index == index
        assert start.name == case.calls[index][0]
        assert isinstance(arguments, ToolCallArguments) and arguments.index == index


@pytest.mark.parametrize("case", [c for c in CASES if c.calls], ids=lambda case: case.name)
def test_content_never_shows_part_of_a_call(case: Case) -> None:
    """At every point of a character-by-character stream, the content sent so far is a
    prefix of the final content: nothing of a call is sent and later taken back."""
    numbers = itertools.count()
    parser = ToolCallStreamParser(case.family, TOOL_NAMES, lambda: f"call_{next(numbers)}")
    sent = ""
    for char in case.text:
        sent += "".join(e.text for e in parser.feed(char) if isinstance(e, ContentDelta))
        assert case.content.startswith(sent)
    sent += "".join(e.text for e in parser.finish() if isinstance(e, ContentDelta))
    assert sent == case.content


def test_marker_is_held_until_decided() -> None:
    parser = ToolCallStreamParser(ToolFamily.HERMES, None, lambda: "call_0")
    assert parser.feed("Let me check. <tool") == [ContentDelta("Let me check.")]
    assert parser.feed("_call>\n{\"name\": \"get_time\", ") == []
    assert parser.feed('"arguments": {}}\n</tool_call>') == [
        ToolCallStart(0, "call_0", "get_time"), ToolCallArguments(0, "{}")]
    assert parser.finish() == []


def test_a_false_start_is_released_as_soon_as_it_fails() -> None:
    parser = ToolCallStreamParser(ToolFamily.HERMES)
    assert parser.feed("x <tool_") == [ContentDelta("x")]
    assert parser.feed("box> y") == [ContentDelta(" <tool_box> y")]


def test_content_streams_before_the_end() -> None:
    parser = ToolCallStreamParser(ToolFamily.JSON)
    assert parser.feed("The weather ") == [ContentDelta("The weather")]
    assert parser.feed("is fine.") == [ContentDelta(" is fine.")]
    assert parser.feed('{"ans') == []  # a JSON object may be a call until its first key is read
    assert parser.feed('wer": 1}') == [ContentDelta('{"answer": 1}')]


def test_whitespace_before_a_call_and_at_the_end_is_dropped() -> None:
    text = "Checking.\n\n" + format_tool_calls(ToolFamily.HERMES, [("get_time", "{}")]) + "\n\n"
    assert whole(text, ToolFamily.HERMES).content == "Checking."


# Building blocks for random documents: bits of content that look like markers, and
# well-formed calls.
_CONTENT_BITS = ["Hello", " ", "\n", "{", "}", "[", "]", '"', "<", ">", "`", "```", "tool", "_call",
                 "<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", '{"name": ', '"get_time"', "[ARGS]",
                 "```tool_call\n", ";", "é", ":"]
_CALLS = [("get_time", "{}"), ("search", '{"query": "a \\"b\\" {c}"}'), ("get_weather", '{"city": "Paris"}')]


@st.composite
def documents(draw: st.DrawFn) -> tuple[ToolFamily, str, list[int]]:
    family = draw(st.sampled_from(list(ToolFamily)))
    pieces = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            pieces.append("".join(draw(st.lists(st.sampled_from(_CONTENT_BITS), max_size=5))))
        else:
            calls = draw(st.lists(st.sampled_from(_CALLS), min_size=1, max_size=3))
            pieces.append(format_tool_calls(family, calls))
    text = "".join(pieces)
    cuts = draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=20)) if len(text) > 1 else []
    return family, text, sorted(set(cuts))


@settings(max_examples=examples(250), deadline=None)
@given(documents())
def test_any_document_any_split_streams_like_the_whole(document: tuple[ToolFamily, str, list[int]]) -> None:
    family, text, cuts = document
    for names in (TOOL_NAMES, None):
        assert aggregate(stream(text, cuts, family, names)) == whole(text, family, names)


@settings(max_examples=examples(200), deadline=None)
@given(st.sampled_from(list(ToolFamily)), st.lists(st.sampled_from(_CALLS), min_size=1, max_size=4),
       st.sampled_from(["", "Sure.", "Let me call two tools:\n"]))
def test_calls_after_plain_content_are_all_found(family: ToolFamily, calls: list[tuple[str, str]],
                                                 prefix: str) -> None:
    if family is ToolFamily.MISTRAL_ARGS or family is ToolFamily.MISTRAL:
        text = prefix + format_tool_calls(family, calls)
    else:
        text = prefix + ("\n" if prefix else "") + format_tool_calls(family, calls)
    result = whole(text, family)
    assert result.content == prefix.rstrip()
    # a call that repeats an earlier one ends the output (test_repeats.py)
    kept = calls[:next((i for i, call in enumerate(calls) if call in calls[:i]), len(calls))]
    assert [(c.name, c.arguments) for c in result.tool_calls] == kept


def test_output_parser_combines_reasoning_and_calls() -> None:
    text = ("<think>\nThe user wants the time.\n</think>\n\n"
            + format_tool_calls(ToolFamily.HERMES, [("get_time", "{}")]))
    fmt = OutputFormat(tool_family=ToolFamily.HERMES, tool_names=TOOL_NAMES, reasoning=True)
    expected = parse_output(text, fmt, lambda: "call_x")
    assert expected.reasoning_content == "The user wants the time."
    assert expected.content == "" and [c.name for c in expected.tool_calls] == ["get_time"]
    parser = OutputParser(fmt, lambda: "call_x")
    events = [e for char in text for e in parser.feed(char)] + parser.finish()
    assert aggregate(events) == expected


def test_a_call_inside_reasoning_is_reasoning() -> None:
    call = format_tool_calls(ToolFamily.HERMES, [("get_time", "{}")])
    text = f"<think>Maybe {call}?</think>No call needed."
    fmt = OutputFormat(tool_family=ToolFamily.HERMES, reasoning=True)
    assert parse_output(text, fmt) == ParsedOutput("No call needed.", [], f"Maybe {call}?")


def test_plain_format_passes_text_through() -> None:
    fmt = OutputFormat()
    assert fmt.is_plain
    text = "<think>x</think> <tool_call>{}"
    assert parse_output(text, fmt) == ParsedOutput(text)


@settings(max_examples=examples(150), deadline=None)
@given(documents(), st.sampled_from(["", "<think>", "  <think>\n", "<thi"]),
       st.lists(st.sampled_from(["plan", " ", "\n", "</think>", "</thi", "<think>", "{"]), max_size=6),
       st.booleans())
def test_reasoning_then_calls_stream_like_the_whole(document: tuple[ToolFamily, str, list[int]],
                                                    opening: str, thoughts: list[str],
                                                    starts_open: bool) -> None:
    family, body, cuts = document
    text = opening + "".join(thoughts) + body
    fmt = OutputFormat(family, TOOL_NAMES, reasoning=True, starts_in_reasoning=starts_open)
    expected = parse_output(text, fmt, lambda: "call_x")
    parser = OutputParser(fmt, lambda: "call_x")
    events: list[StreamEvent] = []
    for start, end in itertools.pairwise([0, *[c for c in cuts if c < len(text)], len(text)]):
        events += parser.feed(text[start:end])
    assert aggregate(events + parser.finish()) == expected
