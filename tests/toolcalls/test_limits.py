"""The bounds a schema or grammar must keep before llguidance compiles it, and the deep-stack
threads it compiles on (issue 27: a $ref chain or a rule chain thousands deep overflowed
the thread's stack and killed the server). Pure: no model."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from kolosal.toolcalls import grammar as tool_grammar
from kolosal.toolcalls import limits
from kolosal.toolcalls.families import ToolFamily


def ref_chain(depth: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(depth)}
    defs[f"d{depth}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def rule_chain(rules: int) -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(rules)) + f'r{rules} ::= "a"\n'


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def test_a_ref_chain_within_the_bounds_compiles_on_a_deep_stack() -> None:
    """5,000 links overflowed an 8 MiB stack; on a compile thread it is a grammar."""
    assert tool_grammar.json_schema_grammar(ref_chain(5_000))


def test_a_tool_whose_parameters_hold_a_deep_ref_chain_compiles() -> None:
    chain = ref_chain(5_000)
    parameters = {"type": "object", "$defs": chain["$defs"], "properties": {"x": {"$ref": chain["$ref"]}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    assert tool_grammar.tool_call_grammar(ToolFamily.HERMES, tools)


def test_a_rule_chain_within_the_bounds_compiles_on_a_deep_stack() -> None:
    assert tool_grammar.gbnf_grammar(rule_chain(1_900))


@pytest.mark.parametrize("schema, limit", [
    (ref_chain(10_000), "more than 10000 objects (limit 10000)"),
    (nested(100), "nested more than 128 levels deep"),
    ({"type": "string", "pattern": "a{1000000000}"}, "pattern: the repetition {1000000000} is over"),
    ({"type": "object", "patternProperties": {"^a{5,99999}$": {"type": "string"}}}, "{5,99999}"),
])
def test_schemas_over_a_bound_are_refused_naming_it(schema: dict[str, Any], limit: str) -> None:
    with pytest.raises(tool_grammar.GrammarError, match="invalid JSON schema: .*" + limit.replace("{", r"\{")
                       .replace("}", r"\}").replace("(", r"\(").replace(")", r"\)")):
        tool_grammar.json_schema_grammar(schema)


@pytest.mark.parametrize("gbnf, limit", [
    (rule_chain(5_000), "the grammar has 5002 rules (limit 2000)"),
    ('root ::= "a"{1000000000}', "grammar: the repetition {1000000000} is over the limit of 10000"),
    ('root ::= "a"{3,200000}', "{3,200000}"),
])
def test_grammars_over_a_bound_are_refused_naming_it(gbnf: str, limit: str) -> None:
    with pytest.raises(tool_grammar.GrammarError) as refused:
        tool_grammar.gbnf_grammar(gbnf)
    assert limit in str(refused.value)


@pytest.mark.parametrize("schema, cycle", [
    ({"$ref": "#"}, "# -> #"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
     "#/$defs/a -> #/$defs/b -> #/$defs/a"),
    ({"type": "object", "properties": {"x": {"$ref": "#/properties/y"}, "y": {"$ref": "#/properties/x"}}},
     "#/properties/"),
])
def test_ref_cycles_are_refused_naming_the_cycle(schema: dict[str, Any], cycle: str) -> None:
    with pytest.raises(tool_grammar.GrammarError, match="a \\$ref cycle admits no document: "):
        tool_grammar.json_schema_grammar(schema)
    with pytest.raises(limits.LimitError) as refused:
        limits.check_schema(schema)
    assert cycle in str(refused.value)


def test_recursive_schemas_that_nest_are_not_cycles() -> None:
    tree = {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}
    limits.check_schema(tree)
    assert tool_grammar.json_schema_grammar(tree)
    limits.check_schema(ref_chain(9_000))  # a long chain that ends: linear, no cycle


def test_braces_inside_string_literals_and_escaped_ones_are_text() -> None:
    limits.check_grammar('root ::= "{1000000000}" | \'{99999999}\' [a-z]{2,5}')
    limits.check_schema({"type": "string", "pattern": r"^\{1000000000\}$"})


def test_tool_parameters_are_bounded_too() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "b{20000}"}}}}}
    with pytest.raises(tool_grammar.GrammarError, match="tool 'f': invalid parameters schema: pattern"):
        tool_grammar.tool_call_grammar(ToolFamily.HERMES, [tool])


def test_compiles_run_on_deep_stack_threads_and_nested_calls_run_in_place() -> None:
    name = limits.deep_call(lambda: threading.current_thread().name)
    assert name.startswith("grammar-compile-")
    assert limits.deep_call(lambda: limits.deep_call(lambda: threading.current_thread().name)) \
        .startswith("grammar-compile-")
    with pytest.raises(ZeroDivisionError):  # errors reach the caller
        limits.deep_call(lambda: 1 // 0)
