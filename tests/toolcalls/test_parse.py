"""Whole-text parsing of each family's real output: content, calls (name + arguments as a
JSON-object string) and OpenAI-shaped ids; malformed calls stay content."""
from __future__ import annotations

import itertools
import json
import re

import pytest

from kolosal.toolcalls import ParsedOutput, ToolCall, ToolFamily, parse_tool_calls
from kolosal.toolcalls.render import format_tool_calls

from .cases import CASES, TOOL_NAMES, Case


def parse(case: Case) -> ParsedOutput:
    numbers = itertools.count()
    return parse_tool_calls(case.text, case.family, TOOL_NAMES, lambda: f"call_{next(numbers)}")

@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_real_outputs_parse_to_their_content_and_calls(case: Case) -> None:
    result = parse(case)
    assert result.content == case.content
    assert [(call.name, json.loads(call.arguments)) for call in result.tool_calls] == case.calls
    assert [call.id for call in result.tool_calls] == [f"call_{i}" for i in range(len(case.calls))]
    assert result.reasoning_content is None

@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_arguments_are_json_object_strings(case: Case) -> None:
    for call in parse(case).tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
        assert call.arguments == json.dumps(json.loads(call.arguments), ensure_ascii=False)

@pytest.mark.parametrize("family", list(ToolFamily))
def test_text_without_calls_is_content_byte_for_byte(family: ToolFamily) -> None:
    text = "\n  Hello {world} [x] <b>bold</b> ``` `{` \"quoted\" \t\n\n"
    assert parse_tool_calls(text, family) == ParsedOutput(text)

@pytest.mark.parametrize("family", list(ToolFamily))
def test_what_we_render_parses_back(family: ToolFamily) -> None:
    calls = [("get_weather", '{"city": "Zürich", "days": [1, 2]}'), ("get_time", "{}")]
    written = "Let me check both.\n" + format_tool_calls(family, calls)
    result = parse_tool_calls(written, family, TOOL_NAMES)
    assert result.content == "Let me check both."
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Zürich", "days": [1, 2]}), ("get_time", {})]

def test_without_tool_names_any_name_is_a_call() -> None:
    text = '<tool_call>\n{"name": "anything", "arguments": {"a": 1}}\n</tool_call>'
    assert [c.name for c in parse_tool_calls(text, ToolFamily.HERMES).tool_calls] == ["anything"]
    assert parse_tool_calls(text, ToolFamily.HERMES, {"other"}).tool_calls == []

def test_default_ids_look_like_openai_and_mistral_ones() -> None:
    text = format_tool_calls(ToolFamily.HERMES, [("a", "{}"), ("b", "{}")])
    ids = [call.id for call in parse_tool_calls(text, ToolFamily.HERMES).tool_calls]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids) and ids[0] != ids[1]
    text = format_tool_calls(ToolFamily.MISTRAL, [("a", "{}")])
    (call,) = parse_tool_calls(text, ToolFamily.MISTRAL).tool_calls
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call.id)

def test_openai_shape() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    assert call.to_openai() == {"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}

def test_a_call_without_arguments_gets_an_empty_object() -> None:
    text = '<tool_call>\n{"name": "get_time"}\n</tool_call>'
    (call,) = parse_tool_calls(text, ToolFamily.HERMES).tool_calls
    assert call.arguments == "{}"

def test_arguments_that_are_not_an_object_are_content() -> None:
    text = '<tool_call>\n{"name": "get_time", "arguments": [1, 2]}\n</tool_call>'
    assert parse_tool_calls(text, ToolFamily.HERMES) == ParsedOutput(text)

def test_llama_object_of_another_type_is_content() -> None:
    text = '{"type": "object", "name": "get_time", "parameters": {}}'
    assert parse_tool_calls(text, ToolFamily.LLAMA3) == ParsedOutput(text)

def test_mistral_name_must_be_an_offered_tool() -> None:
    text = '[TOOL_CALLS]rm_rf[ARGS]{"path": "/"}'
    assert parse_tool_calls(text, ToolFamily.MISTRAL_ARGS, {"search"}) == ParsedOutput(text)


def test_arguments_stay_encodable() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": {"s": "\\ud800 é"}}\n</tool_call>'
    (call,) = parse_tool_calls(text, ToolFamily.HERMES).tool_calls
    call.arguments.encode("utf-8")
    assert json.loads(call.arguments) == {"s": "\ud800 é"}
