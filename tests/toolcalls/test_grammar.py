"""llguidance grammars, checked with a real LLMatcher on a byte-level tokenizer: enforced
tool calls accept exactly valid calls in each family's format (every string drawn at random
under the grammar's masks parses back to valid calls), response_format schemas, GBNF, and
clear errors for what cannot be compiled."""
from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from kolosal.toolcalls import (
    GrammarError,
    ToolFamily,
    format_tool_calls,
    gbnf_grammar,
    json_schema_grammar,
    parse_output,
    parse_tool_calls,
    response_format_grammar,
    tool_call_grammar,
)
from kolosal.toolcalls.output import OutputFormat

from ..lanes import examples
from .helpers import SPECIALS, TOKENIZER, accepts, sample

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20},
                   "unit": {"$ref": "#/$defs/Unit"},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city"],
    "additionalProperties": False,
    "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"]}},
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "description": 'Weather {"of": a city}\n',
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time",
                                      "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "get", "parameters": {
        "type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}},
        "required": ["n"]}}},
    {"type": "function", "function": {"name": "no_params"}},
]
SCHEMAS = {tool["function"]["name"]: tool["function"].get("parameters") or {} for tool in TOOLS}
NAMES = frozenset(SCHEMAS)
FAMILIES = list(ToolFamily)


def calls_text(family: ToolFamily, *calls: tuple[str, dict[str, Any]]) -> str:
    return format_tool_calls(family, [(name, json.dumps(args)) for name, args in calls])


@pytest.fixture(scope="module")
def grammars() -> dict[tuple[ToolFamily, bool], str]:
    return {(family, parallel): tool_call_grammar(family, TOOLS, parallel=parallel)
            for family in FAMILIES for parallel in (True, False)}


@pytest.mark.parametrize("family", FAMILIES)
def test_valid_calls_are_accepted(family: ToolFamily, grammars: dict[Any, str]) -> None:
    one = calls_text(family, ("get_weather", {"city": "Paris", "unit": "celsius", "days": 3}))
    several = calls_text(family, ("get_weather", {"city": "Oslo"}), ("get", {"n": 0.5}),
                         ("get_time", {}), ("no_params", {}))
    assert accepts(grammars[family, True], one)
    assert accepts(grammars[family, True], several)
    assert accepts(grammars[family, False], one)
    assert not accepts(grammars[family, False], several)  # parallel_tool_calls: false
    # A function without parameters takes none (OpenAI: "an empty parameter list").
    assert not accepts(grammars[family, True], calls_text(family, ("no_params", {"anything": [1]})))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bad", [
    ("get_weather", {"city": 3}),                        # wrong type
    ("get_weather", {"unit": "celsius"}),                # missing required
    ("get_weather", {"city": "Paris", "unit": "kelvin"}),  # not in the enum ($ref)
    ("get_weather", {"city": "Paris", "days": 9}),       # out of bounds
    ("get_weather", {"city": "Paris", "wind": True}),    # additionalProperties: false
    ("get", {"n": 0}),                                   # exclusiveMinimum
    ("launch", {}),                                      # not an offered tool
])
def test_invalid_calls_are_rejected(family: ToolFamily, bad: tuple[str, dict[str, Any]],
                                    grammars: dict[Any, str]) -> None:
    assert not accepts(grammars[family, True], calls_text(family, bad))


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_family_format_is_accepted(family: ToolFamily, grammars: dict[Any, str]) -> None:
    call: tuple[str, dict[str, Any]] = ("get_time", {})
    for other in FAMILIES:
        text = calls_text(other, call)
        assert accepts(grammars[family, True], text) == (text == calls_text(family, call))
    assert not accepts(grammars[family, True], "Sure! " + calls_text(family, call))
    assert not accepts(grammars[family, True], "")


@pytest.mark.parametrize("family", FAMILIES)
def test_max_calls(family: ToolFamily) -> None:
    grammar = tool_call_grammar(family, TOOLS, max_calls=2)
    assert accepts(grammar, calls_text(family, ("get_time", {}), ("get", {"n": 1})))
    assert not accepts(grammar, calls_text(family, ("get_time", {}), ("get", {"n": 1}), ("get_time", {})))
    with pytest.raises(GrammarError, match="max_calls"):
        tool_call_grammar(family, TOOLS, max_calls=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_named_function_is_the_only_choice(family: ToolFamily) -> None:
    grammar = tool_call_grammar(family, TOOLS, function_name="get_time")
    assert accepts(grammar, calls_text(family, ("get_time", {})))
    assert not accepts(grammar, calls_text(family, ("get_weather", {"city": "Paris"})))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampled_string_parses_to_valid_calls(family: ToolFamily, grammars: dict[Any, str]) -> None:
    rng = random.Random(family.value)
    done = 0
    for parallel in (True, False):
        for _ in range(examples(25)):
            text = sample(grammars[family, parallel], rng)
            if text is None:
                continue
            done += 1
            result = parse_tool_calls(text, family, NAMES)
            assert result.content == "", text
            assert result.tool_calls and (parallel or len(result.tool_calls) == 1), text
            for call in result.tool_calls:
                jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    assert done >= 0.8 * 2 * examples(25)


@pytest.mark.parametrize("family", [ToolFamily.HERMES, ToolFamily.MISTRAL, ToolFamily.MISTRAL_ARGS])
def test_markers_can_be_special_tokens(family: ToolFamily) -> None:
    grammar = tool_call_grammar(family, TOOLS, special_tokens=SPECIALS)
    text = calls_text(family, ("get_time", {}), ("get", {"n": 2}))
    assert accepts(grammar, text, SPECIALS)
    assert not accepts(grammar, text)  # the marker spelled out in bytes is not the token
    rng = random.Random(7)
    for _ in range(examples(10)):
        sampled = sample(grammar, rng)
        if sampled is not None:
            assert parse_tool_calls(sampled, family, NAMES).content == ""


@pytest.mark.parametrize("special", [None, SPECIALS])
def test_reasoning_before_enforced_calls(special: dict[str, int] | None) -> None:
    call = calls_text(ToolFamily.HERMES, ("get_time", {}))
    optional = tool_call_grammar(ToolFamily.HERMES, TOOLS, reasoning="optional", special_tokens=special)
    assert accepts(optional, call, special)
    assert accepts(optional, "<think>\nThe user wants the time.\n</think>\n\n" + call, special)
    assert not accepts(optional, "<think>unclosed " + call, special)
    opened = tool_call_grammar(ToolFamily.HERMES, TOOLS, reasoning="open", special_tokens=special)
    assert accepts(opened, "Time, then.\n</think>\n\n" + call, special)
    assert not accepts(opened, call, special)
    rng = random.Random(3)
    fmt = OutputFormat(ToolFamily.HERMES, NAMES, reasoning=True)
    for _ in range(examples(10)):
        text = sample(optional, rng)
        if text is not None:
            result = parse_output(text, fmt)
            assert result.content == "" and result.tool_calls, text


def test_tool_errors_name_the_problem() -> None:
    bad = {"type": "function", "function": {"name": "broken", "parameters": {
        "type": "object", "properties": {"x": {"type": "strnig"}}}}}
    with pytest.raises(GrammarError, match="tool 'broken': invalid parameters schema: .*strnig"):
        tool_call_grammar(ToolFamily.HERMES, [bad])
    with pytest.raises(GrammarError, match="'nope', which is not in tools"):
        tool_call_grammar(ToolFamily.HERMES, TOOLS, function_name="nope")
    with pytest.raises(GrammarError, match="no tools"):
        tool_call_grammar(ToolFamily.HERMES, [])


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "role": {"enum": ["admin", "user"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
    },
    "required": ["name", "role", "age"],
    "additionalProperties": False,
    "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}},
}


def test_json_schema_response_format() -> None:
    grammar = response_format_grammar({"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON, "strict": True}})
    assert grammar is not None
    assert accepts(grammar, json.dumps({"name": "Ann", "role": "admin", "age": 30,
                                        "tags": ["a"], "address": {"city": "Oslo"}}))
    assert accepts(grammar, json.dumps({"name": "Bo", "role": "user", "age": 0, "address": None}))
    assert not accepts(grammar, json.dumps({"name": "Ann", "role": "boss", "age": 30}))
    assert not accepts(grammar, json.dumps({"name": "Ann", "role": "user", "age": 151}))
    assert not accepts(grammar, json.dumps({"name": "Ann", "role": "user"}))
    assert not accepts(grammar, '{"name":"Ann","role":"user","age":3}')  # compact style only
    rng = random.Random(11)
    sampled = [text for text in (sample(grammar, rng) for _ in range(examples(30))) if text is not None]
    assert len(sampled) >= 2 * examples(30) // 3
    for text in sampled:
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_text() -> None:
    assert response_format_grammar({"type": "text"}) is None
    assert response_format_grammar(None) is None
    grammar = response_format_grammar({"type": "json_object"})
    assert grammar is not None
    assert accepts(grammar, '{"a": [1, 2.5, {"b": null}], "c": "d"}')
    assert not accepts(grammar, "[1, 2]") and not accepts(grammar, "Sure: {}")
    with_schema = response_format_grammar({"type": "json_object", "schema": PERSON})  # llama-server
    assert with_schema is not None and not accepts(with_schema, '{"a": 1}')
    assert accepts(with_schema, json.dumps({"name": "Ann", "role": "admin", "age": 30}))


def test_reasoning_before_json() -> None:
    grammar = json_schema_grammar(PERSON, reasoning="optional")
    person = json.dumps({"name": "Ann", "role": "admin", "age": 30})
    assert accepts(grammar, person)
    assert accepts(grammar, "<think>Fill it in.</think>\n" + person)
    assert not accepts(grammar, "<think>Fill it in.</think>\n{}")


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "Invalid type: strnig"),
    ({"type": "string", "pattern": "(?=x)"}, "look-around"),
    ({"$ref": "#/$defs/Missing"}, "Missing"),
    ({"type": "integer", "minimum": 5, "maximum": 2}, "Unsatisfiable"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "string", "format": "no-such-format"}, "no-such-format"),
])
def test_invalid_or_unsupported_schemas_say_why(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(GrammarError, match="invalid JSON schema") as error:
        json_schema_grammar(schema)
    assert message in str(error.value)


def test_malformed_response_formats() -> None:
    with pytest.raises(GrammarError, match="unsupported response_format type 'xml'"):
        response_format_grammar({"type": "xml"})
    with pytest.raises(GrammarError, match="json_schema must be an object"):
        response_format_grammar({"type": "json_schema"})
    with pytest.raises(GrammarError, match="schema must be an object"):
        response_format_grammar({"type": "json_schema", "json_schema": {"schema": [1]}})


def test_gbnf() -> None:
    grammar = gbnf_grammar('root ::= answer " because " reason\nanswer ::= "yes" | "no"\n'
                           'reason ::= [a-z ]+')
    assert accepts(grammar, "yes because it is")
    assert not accepts(grammar, "maybe because")
    assert accepts(gbnf_grammar('start: "a"+'), "aaa")  # Lark passes through
    with pytest.raises(GrammarError, match="invalid grammar: .*undefined_rule"):
        gbnf_grammar("root ::= undefined_rule")
    with pytest.raises(GrammarError, match="invalid grammar"):
        gbnf_grammar('root ::= "unterminated')


def test_grammars_validate_against_a_tokenizer() -> None:
    assert tool_call_grammar(ToolFamily.HERMES, TOOLS, special_tokens=SPECIALS, tokenizer=TOKENIZER)
    with pytest.raises(GrammarError):
        tool_call_grammar(ToolFamily.HERMES, TOOLS, special_tokens={"<tool_call>": 99999},
                          tokenizer=TOKENIZER)


def test_objects_without_a_word_on_extra_keys_admit_none() -> None:
    """As llama.cpp's grammars: a schema must say ``additionalProperties`` to allow other
    keys; otherwise a small model can invent keys until max_tokens."""
    tag = {"type": "object", "properties": {"t": {"type": "integer"}}}
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "tags": {"type": "array", "items": tag}}}
    grammar = json_schema_grammar(person)
    assert accepts(grammar, '{"name": "Ada", "tags": [{"t": 1}]}')
    assert not accepts(grammar, '{"name": "Ada", "age": 3}')
    assert not accepts(grammar, '{"tags": [{"t": 1, "u": 2}]}')
    assert accepts(json_schema_grammar({**person, "additionalProperties": True}), '{"name": "Ada", "age": 3}')
    call = tool_call_grammar(ToolFamily.HERMES, [{"type": "function", "function": {
        "name": "f", "parameters": person}}], reasoning="none")
    assert accepts(call, format_tool_calls(ToolFamily.HERMES, [("f", '{"name": "Ada"}')]))
    assert not accepts(call, format_tool_calls(ToolFamily.HERMES, [("f", '{"name": "Ada", "x": 1}')]))


@pytest.mark.parametrize("family", FAMILIES)
def test_tools_beside_a_response_format_allow_a_call_or_an_answer(family: ToolFamily) -> None:
    grammar = tool_call_grammar(family, TOOLS, answer_schema=PERSON)
    assert accepts(grammar, calls_text(family, ("get_weather", {"city": "Oslo"})))
    assert accepts(grammar, json.dumps({"name": "Ann", "role": "admin", "age": 30}))
    assert not accepts(grammar, json.dumps({"name": "Ann", "role": "boss", "age": 30}))
    assert not accepts(grammar, "Hello there")
    rng = random.Random(5)
    for text in (sample(grammar, rng) for _ in range(examples(20))):
        if text is None:
            continue
        if not parse_tool_calls(text, family, NAMES).tool_calls:  # no call: a valid answer
            jsonschema.validate(json.loads(text), PERSON)


def test_a_bad_answer_schema_beside_tools_is_named() -> None:
    with pytest.raises(GrammarError, match="invalid JSON schema"):
        tool_call_grammar(ToolFamily.HERMES, TOOLS, answer_schema={"type": "nonsense"})


def test_a_fenced_json_answer() -> None:
    """``fenced``: llama-server's response-format grammar: whitespace around the JSON, or a
    ```json fence with whitespace inside it; nothing else before or after."""
    grammar = json_schema_grammar(PERSON, fenced=True)
    person = json.dumps({"name": "Ann", "role": "admin", "age": 30})
    for text in (person, f"\n{person}\n", f"```json\n{person}\n```", f"\n```json{person}```",
                 f"```json\n\n  {person}\n\n```"):
        assert accepts(grammar, text), text
    for text in (f"```json\n{person}", f"```\n{person}\n```", f"```json\n{person}\n```\n",
                 f"Sure: {person}", f"{person}\n```", f"```json\n{person}\n```{person}",
                 "```json\n{}\n```", " " * 30 + person):
        assert not accepts(grammar, text), text
    assert not accepts(json_schema_grammar(PERSON), f"```json\n{person}\n```")  # not fenced: JSON only
    reasoning = json_schema_grammar(PERSON, fenced=True, reasoning="optional")
    assert accepts(reasoning, f"<think>Fill it in.</think>\n```json\n{person}\n```")
