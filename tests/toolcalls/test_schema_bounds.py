"""Number digits and whitespace runs bounded as llama.cpp's schema converter bounds them,
checked with a real LLMatcher on a byte-level tokenizer (no model): a compiled schema
refuses an integer part over 16 digits and a fraction over 10 (17+ included), accepts the
numbers people write, and the schema's own constraints (minimum/maximum, exclusive bounds,
multipleOf, const/enum, not) still hold."""
from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from kolosal.toolcalls import ToolFamily, json_schema_grammar, tool_call_grammar
from kolosal.toolcalls.schema_bounds import bounded_schema

from ..lanes import examples
from .helpers import accepts, sample

NORMAL_NUMBERS = ["0", "7", "-12", "84", "3.5", "-0.25", "84.0", "3.1415926535", "1234567890123456",
                  "-9999999999999998", "0.0000000001", "1999.99"]
LONG_INTEGER_PARTS = ["1" * 17, "12345678901234567", "-" + "9" * 17, "10000000000000000", "1" * 40]
LONG_FRACTIONS = ["84." + "0" * 11, "84." + "0" * 17, "0." + "1" * 17, "3.14159265358979323", "1." + "0" * 40]


@pytest.mark.parametrize("kind", ["number", "integer"])
def test_long_integer_parts_are_refused(kind: str) -> None:
    grammar = json_schema_grammar({"type": kind})
    for text in LONG_INTEGER_PARTS:
        assert not accepts(grammar, text), text
    for text in NORMAL_NUMBERS:
        assert accepts(grammar, text) == (kind == "number" or "." not in text), text


def test_long_fractions_and_exponents_are_refused() -> None:
    grammar = json_schema_grammar({"type": "number"})
    for text in [*LONG_FRACTIONS, "1e5", "1.5E-3", "1e999999"]:
        assert not accepts(grammar, text), text


def test_numbers_everywhere_in_a_pydantic_schema_are_capped() -> None:
    class Line(BaseModel):
        price: float
        quantity: int

    class Invoice(BaseModel):
        lines: list[Line]
        discount: float | None
        total: float = Field(ge=0)

    grammar = json_schema_grammar(Invoice.model_json_schema())
    document = '{"lines": [{"price": %s, "quantity": %s}], "discount": %s, "total": %s}'
    assert accepts(grammar, document % ("2.5", "3", "null", "7.5"))
    assert accepts(grammar, document % ("2.5", "3", "0.1", "7.5"))
    for values in [("1" * 17, "3", "null", "7.5"), ("2.5", "1" * 17, "null", "7.5"),
                   ("2." + "5" * 17, "3", "null", "7.5"), ("2.5", "3", "0." + "1" * 17, "7.5"),
                   ("2.5", "3", "null", "7." + "0" * 17)]:
        assert not accepts(grammar, document % values), values


def test_tool_call_arguments_are_capped() -> None:
    tool = {"type": "function", "function": {"name": "pay", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}}}
    grammar = tool_call_grammar(ToolFamily.HERMES, [tool], parallel=False)
    call = '<tool_call>\n{"name": "pay", "arguments": {"amount": %s}}\n</tool_call>'
    assert accepts(grammar, call % "12.5")
    assert not accepts(grammar, call % ("12." + "5" * 17))


# The schema's own constraints: (schema, accepted, refused).
CONSTRAINTS: list[tuple[dict[str, Any], list[str], list[str]]] = [
    ({"type": "number", "minimum": 0, "maximum": 5}, ["0", "5", "4.25"], ["-1", "5.5", "6"]),
    ({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}, ["1", "9"], ["0", "10", "-3"]),
    ({"type": "number", "minimum": 1e20}, [], ["1", "1" * 16, "1" * 21]),  # above the cap: nothing fits
    ({"type": "number", "maximum": 1e20}, ["-3.5", "1" * 16], ["1" * 17]),  # looser: the cap holds
    ({"type": "number", "minimum": -1e20, "exclusiveMinimum": -1e30}, ["-" + "9" * 15], ["-" + "9" * 17]),
    ({"type": "number", "maximum": 3, "exclusiveMaximum": True}, ["2.5"], ["3", "4"]),  # draft 4
    ({"type": "number", "multipleOf": 0.25}, ["1.25", "-1.25", "3"], ["1.3", "1." + "0" * 17, "1" * 17]),
    ({"type": "integer", "minimum": 10, "multipleOf": 5}, ["10", "15"], ["5", "17", "1" * 16 + "5"]),
    ({"type": "number", "const": 2.5}, ["2.5"], ["1", "2.50"]),
    ({"type": "integer", "enum": [1, 3]}, ["1", "3"], ["2"]),
    ({"type": ["number", "null"]}, ["null", "2.5"], ["1" * 17, '"x"']),
    ({"type": ["integer", "string"], "maxLength": 3}, ['"abc"', "12"], ['"abcd"', "1" * 17]),
    ({"type": "array", "items": {"type": "integer", "maximum": 3}, "maxItems": 2},
     ["[1, 3]"], ["[4]", "[1, 2, 3]"]),
    ({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, ["true", "12"], ["1" * 17]),
    ({"$defs": {"n": {"type": "number", "minimum": 2}}, "$ref": "#/$defs/n"}, ["2", "3.5"], ["1", "1" * 17]),
]


@pytest.mark.parametrize(("schema", "accepted", "refused"), CONSTRAINTS)
def test_schema_constraints_still_hold(schema: dict[str, Any], accepted: list[str],
                                       refused: list[str]) -> None:
    if not accepted:  # unsatisfiable once capped: llguidance says so (a 400), or nothing is accepted
        try:
            grammar = json_schema_grammar(schema)
        except ValueError:
            return
    else:
        grammar = json_schema_grammar(schema)
    for text in accepted:
        assert accepts(grammar, text), text
    for text in refused:
        assert not accepts(grammar, text), text


def test_sampled_numbers_are_valid_and_short() -> None:
    schema = {"type": "object", "required": ["a", "b", "c"], "properties": {
        "a": {"type": "number"}, "b": {"type": "integer", "minimum": -5},
        "c": {"type": "number", "maximum": 1}}}
    grammar = json_schema_grammar(schema)
    rng = random.Random(5)
    for text in (sample(grammar, rng) for _ in range(examples(20))):
        assert text is not None
        value = json.loads(text)
        jsonschema.validate(value, schema)
        for number in (text.split(": ")[1:]):
            digits = number.split(",")[0].rstrip("}").lstrip("-").split(".")
            assert len(digits[0]) <= 16 and (len(digits) == 1 or len(digits[1]) <= 10), text


def test_values_and_what_not_excludes_are_not_capped() -> None:
    """A value is exact already; a cap inside ``not`` would widen the schema."""
    untouched = [{"not": {"type": "number"}}, {"type": "number", "const": 1e20},
                 {"type": "integer", "enum": [1, 10**20]}]
    schema = {"type": "object", "properties": {str(n): part for n, part in enumerate(untouched)}}
    assert list(bounded_schema(schema)["properties"].values()) == untouched


def test_the_callers_schema_is_not_changed() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "number"}}}
    copy = json.loads(json.dumps(schema))
    json_schema_grammar(schema)
    assert schema == copy


def test_whitespace_runs_are_bounded() -> None:
    """Compact JSON by default; a schema that turns ``whitespace_flexible`` on gets
    llama.cpp's ``space`` rule for each run (one space, or 1-2 newlines and <= 20 spaces or
    tabs), not an unbounded one; its own pattern is taken as written."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array"}},
              "required": ["a", "b"]}
    default = json_schema_grammar(schema)
    assert accepts(default, '{"a": 1, "b": [true, 2]}')
    assert not accepts(default, '{"a":1,"b":[]}')
    assert not accepts(default, '{\n  "a": 1, "b": []}')
    flexible = json_schema_grammar({**schema, "x-guidance": {"whitespace_flexible": True,
                                                             "item_separator": ",", "key_separator": ":"}})
    for text in ['{"a":1,"b":[]}', '{"a": 1, "b": [true, 2]}', '{\n  "a": 1,\n  "b": [\n    2\n  ]\n}',
                 '{\n\n\t\t"a": 1, "b": []}', '{"a": 1, "b": [ ]}']:
        assert accepts(flexible, text), text
    for text in ['{"a":  1, "b": []}', '{\n\n\n"a": 1, "b": []}', '{\n' + " " * 21 + '"a": 1, "b": []}',
                 '{"a": 1,\r\n"b": []}', ' {"a": 1, "b": []}', '{"a": 1, "b": []}\n']:
        assert not accepts(flexible, text), text
    own_options = {"whitespace_pattern": "[ ]{0,3}", "item_separator": ",", "key_separator": ":"}
    own = json_schema_grammar({**schema, "x-guidance": own_options})
    assert accepts(own, '{"a":   1, "b": []}')
    assert not accepts(own, '{\n"a": 1, "b": []}')
