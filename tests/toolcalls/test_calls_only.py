"""Enforced tool calls (``tool_choice`` "required" or a named function) cut off by
``max_tokens``: the complete calls are kept and the unfinished one is dropped, never sent
as content, whole or streamed; free ("auto") output keeps that text as content."""
from __future__ import annotations

import itertools
import random

import pytest

from kolosal.chat_template import ChatTemplate
from kolosal.toolcalls import ContentDelta, OutputFormat, OutputParser, StreamEvent, ToolFamily, parse_output
from kolosal.toolcalls.render import format_tool_calls

from .helpers import random_cuts

NAMES = frozenset({"get_weather"})
CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}),
         ("get_weather", {"city": "Rome", "unit": "celsius"})]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def cut_after_first_call(family: ToolFamily) -> tuple[str, str]:
    """Two calls written by the family, cut in the middle of the second one's arguments:
    (the whole text, the text of the first call alone)."""
    one = format_tool_calls(family, CALLS[:1])
    two = format_tool_calls(family, CALLS)
    assert two.startswith(one[:-2]) and "Rome" in two
    return two[:two.index("Rome") + 2], one


def ids() -> itertools.count[int]:
    return itertools.count()


def streamed(text: str, fmt: OutputFormat, cuts: list[int]) -> list[StreamEvent]:
    numbers = ids()
    parser = OutputParser(fmt, lambda: f"call_{next(numbers)}")
    events: list[StreamEvent] = []
    for start, end in itertools.pairwise([0, *sorted(cuts), len(text)]):
        events += parser.feed(text[start:end])
    return events + parser.finish()


@pytest.mark.parametrize("family", list(ToolFamily), ids=lambda family: family.value)
def test_an_enforced_call_cut_off_is_dropped(family: ToolFamily) -> None:
    text, _ = cut_after_first_call(family)
    numbers = ids()
    parsed = parse_output(text, OutputFormat(family, NAMES, calls_only=True),
                          lambda: f"call_{next(numbers)}")
    if family is ToolFamily.MISTRAL:  # one JSON list holds every call: none is complete
        assert parsed.tool_calls == []
    else:
        assert [(call.name, call.arguments) for call in parsed.tool_calls] == [
            ("get_weather", '{"city": "Paris", "unit": "celsius"}')]
    assert parsed.content == ""


@pytest.mark.parametrize("family", list(ToolFamily), ids=lambda family: family.value)
def test_free_output_keeps_the_cut_off_text_as_content(family: ToolFamily) -> None:
    text, _ = cut_after_first_call(family)
    parsed = parse_output(text, OutputFormat(family, NAMES))
    assert parsed.content and text.endswith(parsed.content)
    assert parsed.content.endswith('"Ro')


@pytest.mark.parametrize("family", list(ToolFamily), ids=lambda family: family.value)
def test_streamed_enforced_output_never_sends_content(family: ToolFamily) -> None:
    text, _ = cut_after_first_call(family)
    fmt = OutputFormat(family, NAMES, calls_only=True)
    whole = streamed(text, fmt, [])
    rng = random.Random(family.value)
    for _ in range(50):
        events = streamed(text, fmt, random_cuts(rng, len(text)))
        assert not any(isinstance(event, ContentDelta) for event in events)
        assert events == whole
    assert streamed(text, fmt, list(range(1, len(text)))) == whole


def test_a_complete_enforced_output_is_unchanged() -> None:
    text = format_tool_calls(ToolFamily.GEMMA, CALLS)
    enforced = parse_output(text, OutputFormat(ToolFamily.GEMMA, NAMES, calls_only=True))
    free = parse_output(text, OutputFormat(ToolFamily.GEMMA, NAMES))
    assert enforced.content == free.content == ""
    assert [c.arguments for c in enforced.tool_calls] == [c.arguments for c in free.tool_calls]


def test_reasoning_is_kept_when_calls_are_enforced() -> None:
    fmt = OutputFormat(ToolFamily.HERMES, NAMES, reasoning=True, calls_only=True)
    text = "<think>Paris, then Rome.</think>\n" + cut_after_first_call(ToolFamily.HERMES)[0]
    parsed = parse_output(text, fmt)
    assert parsed.reasoning_content == "Paris, then Rome."
    assert parsed.content == "" and len(parsed.tool_calls) == 1


@pytest.mark.parametrize(("choice", "calls_only"), [
    ("required", True), ({"type": "function", "function": {"name": "get_weather"}}, True),
    ("auto", False), ("none", False)])
def test_chat_template_marks_enforced_choices(choice: object, calls_only: bool) -> None:
    template = ChatTemplate.for_model(None, "gemma3", "<bos>", "<eos>")
    prompt = template.render([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS)
    assert template.output_format(prompt, TOOLS, choice).calls_only is calls_only
    assert template.output_format(prompt, None, "required").calls_only is False  # no tools
