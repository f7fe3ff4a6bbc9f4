"""llguidance grammars for constrained generation: enforced tool calls, response_format
and GBNF.

Every function returns an llguidance grammar string (what ``llguidance.LLMatcher(tokenizer,
grammar)`` takes), already validated, or raises ``GrammarError`` with a message fit for a
400. A JSON schema is compiled as ``schema_bounds.bounded_schema`` rewrites it (closed
objects, capped number digits) with ``schema_bounds.json_options`` (compact JSON in
``json.dumps``'s style; a schema's own ``x-guidance`` options override that, whitespace
runs bounded).

Tool calls are written as literal JSON around each function's ``%json`` arguments schema
(each schema stays the root of its own ``%json``, so its ``$ref``/``$defs`` resolve), so
the grammar accepts exactly what ``render.format_tool_calls`` writes.

``special_tokens`` maps marker text (``"<tool_call>"``, ``"[TOOL_CALLS]"``, ``"</think>"``
...) to its token id when the model's vocabulary has it as one special token: the grammar
then asks for that token (``<[id]>``) instead of spelling the marker out in text pieces,
which is what the model was trained to emit. The engine must render those tokens as text
for the parser to see them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import llguidance
from llguidance.gbnf_to_lark import any_to_lark

from .families import ToolFamily
from .fence import FENCE_CLOSE, FENCE_OPEN
from .limits import check_grammar, check_schema, deep_call
from .schema_bounds import BOUNDED_WHITESPACE, bounded_schema, json_options


def _compile_json(schema: Mapping[str, Any]) -> str:
    prepared = _with_options(schema)
    return deep_call(llguidance.LLMatcher.grammar_from_json_schema, prepared)


def _from_lark(lark: str) -> str:
    return deep_call(llguidance.LLMatcher.grammar_from_lark, lark)

ReasoningMode = Literal["none", "optional", "open"]
"""Reasoning before the constrained part: "none"; "optional" (the output may start with a
``<think>…</think>`` block); "open" (the prompt opened ``<think>``: the output must first
close it)."""


class GrammarError(ValueError):
    """The schema, grammar or tool list cannot be turned into a grammar; the message
    says why."""


class AnswerSchemaError(GrammarError):
    """``tool_call_grammar``'s ``answer_schema`` (a response_format beside tools) is the
    part that cannot be turned into a grammar."""


def validate(grammar: str, tokenizer: llguidance.LLTokenizer | None = None) -> str:
    """Return ``grammar`` if llguidance accepts it, else raise GrammarError."""
    is_error, messages = deep_call(llguidance.LLMatcher.validate_grammar_with_warnings, grammar, tokenizer)
    if is_error:
        raise GrammarError("; ".join(messages) or "invalid grammar")
    return grammar


def _with_options(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema as compiled (``schema_bounds.bounded_schema``) with all its JSON options."""
    own = schema.get("x-guidance")
    return {**bounded_schema(schema), "x-guidance": json_options(own if isinstance(own, Mapping) else None)}


def _json_rule(schema: Mapping[str, Any]) -> str:
    return "%json " + json.dumps(_with_options(schema), ensure_ascii=False)


def _lit(text: str, special_tokens: Mapping[str, int] | None) -> str:
    """A marker as a Lark item: its special token when it is one, otherwise the text."""
    if special_tokens and text in special_tokens:
        return f"<[{int(special_tokens[text])}]>"
    return json.dumps(text, ensure_ascii=False)


def _reasoning_rules(mode: ReasoningMode, special: Mapping[str, int] | None) -> tuple[str, list[str]]:
    """The start-rule prefix and the rules for a reasoning block before the body."""
    if mode == "none":
        return "", []
    if special and "</think>" in special:
        rules = [f"think_rest: /(.|\\n)*/ {_lit('</think>', special)} THINK_SPACE?"]
    else:
        rules = ["think_rest: think_text THINK_SPACE?", "think_text[lazy]: /(.|\\n)*<\\/think>/"]
    rules.append("THINK_SPACE: /[ \\t\\r\\n]+/")
    if mode == "open":
        return "think_rest ", rules
    if mode == "optional":
        return "think? ", rules + [f"think: {_lit('<think>', special)} think_rest"]
    raise GrammarError(f"unknown reasoning mode {mode!r}")


def _lark_grammar(body: str, rules: list[str], reasoning: ReasoningMode,
                  special_tokens: Mapping[str, int] | None,
                  tokenizer: llguidance.LLTokenizer | None) -> str:
    prefix, think_rules = _reasoning_rules(reasoning, special_tokens)
    lark = "\n".join([f"start: {prefix}{body}", *rules, *think_rules]) + "\n"
    return validate(_from_lark(lark), tokenizer)


def json_schema_grammar(schema: Mapping[str, Any] | None = None, *,
                        reasoning: ReasoningMode = "none",
                        special_tokens: Mapping[str, int] | None = None,
                        tokenizer: llguidance.LLTokenizer | None = None,
                        fenced: bool = False) -> str:
    """Output that is one JSON value valid against ``schema`` (None: any JSON object).
    ``fenced``: whitespace around it, and a Markdown fence (```` ```json ... ``` ````) if
    the model writes one, as llama-server allows (see ``fence``)."""
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, Mapping):
        raise GrammarError("the JSON schema must be an object")
    grammar, problem = _schema_grammar(schema)
    if problem:
        raise GrammarError(f"invalid JSON schema: {problem}")
    if reasoning == "none" and not fenced:  # compiled and validated once; again only against a vocabulary
        return grammar if tokenizer is None else validate(grammar, tokenizer)
    rules = [f"answer: {_json_rule(schema)}"]
    if fenced:
        body = (f"FENCE_SPACE? ({json.dumps(FENCE_OPEN)} FENCE_SPACE? answer FENCE_SPACE? "
                f"{json.dumps(FENCE_CLOSE)} | answer FENCE_SPACE?)")
        rules.append(f"FENCE_SPACE: /{BOUNDED_WHITESPACE}/")
    return _lark_grammar(body if fenced else "answer", rules, reasoning, special_tokens, tokenizer)


def _schema_grammar(schema: Mapping[str, Any]) -> tuple[str, str]:
    """(the schema's grammar, "") when it compiles and validates, else ("", the bound it
    is over (``limits``) or llguidance's complaint about it)."""
    try:
        check_schema(schema)
        grammar = _compile_json(schema)
    except (ValueError, TypeError) as error:
        return "", str(error)
    is_error, messages = deep_call(llguidance.LLMatcher.validate_grammar_with_warnings, grammar)
    return ("", "; ".join(messages) or "invalid schema") if is_error else (grammar, "")


def response_format_schema(response_format: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The JSON schema an OpenAI ``response_format`` asks for: None for ``text`` (no
    constraint), any JSON object for ``json_object`` (or its ``schema``, as llama-server
    allows), the schema for ``json_schema``."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")  # llama-server's extension
        if schema is not None and not isinstance(schema, Mapping):
            raise GrammarError("response_format.schema must be an object")
        return schema if schema is not None else {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise GrammarError("response_format.json_schema must be an object")
        schema = spec.get("schema", {})
        if not isinstance(schema, Mapping):
            raise GrammarError("response_format.json_schema.schema must be an object")
        return schema
    raise GrammarError(f"unsupported response_format type {kind!r}")


def response_format_grammar(response_format: Mapping[str, Any] | None, **options: Any) -> str | None:
    """The grammar for an OpenAI ``response_format`` (``response_format_schema``): None for
    ``text``. ``options`` are those of ``json_schema_grammar`` (reasoning, special_tokens,
    tokenizer, fenced)."""
    schema = response_format_schema(response_format)
    return None if schema is None else json_schema_grammar(schema, **options)


def gbnf_grammar(gbnf: str, tokenizer: llguidance.LLTokenizer | None = None) -> str:
    """A llama.cpp GBNF grammar (root rule ``root``), or a Lark one, as a grammar."""
    try:
        check_grammar(gbnf)
        lark = any_to_lark(gbnf)
    except Exception as error:  # a LimitError, or the converter's bare Exceptions
        raise GrammarError(f"invalid grammar: {error}") from None
    try:
        return validate(_from_lark(lark), tokenizer)
    except GrammarError as error:
        raise GrammarError(f"invalid grammar: {error}") from None


def _parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A function's parameters schema, always describing an object."""
    schema = tool["function"].get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(schema, Mapping):
        raise GrammarError(f"tool {tool['function'].get('name')!r}: parameters must be an object")
    return dict(schema) if "type" in schema else {"type": "object", **schema}


def tool_call_grammar(family: ToolFamily, tools: Sequence[Mapping[str, Any]], *,
                      function_name: str | None = None, parallel: bool = True,
                      max_calls: int | None = None, reasoning: ReasoningMode = "none",
                      special_tokens: Mapping[str, int] | None = None,
                      tokenizer: llguidance.LLTokenizer | None = None,
                      answer_schema: Mapping[str, Any] | None = None) -> str:
    """Output that is one call (or with ``parallel``, one or more calls, at most
    ``max_calls`` if given) of ``tools`` in ``family``'s format, arguments valid against
    each function's parameters schema; with ``answer_schema``, or else one JSON value
    valid against it (tools offered beside a ``response_format``: the model calls a tool
    or answers in the format; where calls are bare JSON, one call).

    For ``tool_choice: "required"`` pass all tools; for a named function pass its name
    as ``function_name``. Raises GrammarError naming the tool whose schema is unusable.
    """
    if max_calls is not None and max_calls < 1:
        raise GrammarError("max_calls must be at least 1")
    limit = 1 if not parallel else max_calls
    if function_name is not None:
        tools = [tool for tool in tools if tool["function"].get("name") == function_name]
        if not tools:
            raise GrammarError(f"tool_choice names function {function_name!r}, which is not in tools")
    if not tools:
        raise GrammarError("tool calls are required but no tools were given")
    rules: list[str] = []
    alternatives = []
    for number, tool in enumerate(tools):
        name = str(tool["function"].get("name", ""))
        schema = _parameters(tool)
        _, problem = _schema_grammar(schema)
        if problem:
            raise GrammarError(f"tool {name!r}: invalid parameters schema: {problem}")
        rules.append(f"args_{number}: {_json_rule(schema)}")
        rules.append(f"call_{number}: {_call_head(family, name, special_tokens)} args_{number}"
                     f"{_call_tail(family)}")
        alternatives.append(f"call_{number}")
    rules.append("call: " + " | ".join(alternatives))
    body = _calls_body(family, special_tokens, limit)
    if answer_schema is not None:
        _, problem = _schema_grammar(answer_schema)
        if problem:
            raise AnswerSchemaError(f"invalid JSON schema: {problem}")
        if family in BARE_JSON_FAMILIES:
            either = _call_or_answer(family, tools, answer_schema)
            return _lark_grammar("answer", [f"answer: {_json_rule(either)}"], reasoning, special_tokens,
                                 tokenizer)
        rules.append(f"answer: {_json_rule(answer_schema)}")
        body = f"({body}) | answer"
    return _lark_grammar(body, rules, reasoning, special_tokens, tokenizer)


# Families whose call is a bare JSON object, like an answer: the grammar's lexer cannot
# choose between a call's literal head and an answer's JSON, so one schema says both.
BARE_JSON_FAMILIES = (ToolFamily.JSON, ToolFamily.LLAMA3)


def _call_or_answer(family: ToolFamily, tools: Sequence[Mapping[str, Any]],
                    answer: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON schema for one call of any tool (``{"name": ..., "arguments": ...}``) or
    the answer. Each alternative keeps its own ``$defs``: it moves under the root's
    ``$defs`` and its local ``$ref``s are rewritten to its new place."""
    key = "parameters" if family is ToolFamily.LLAMA3 else "arguments"
    alternatives: dict[str, Any] = {}
    for number, tool in enumerate(tools):
        base = f"#/$defs/call_{number}"
        alternatives[f"call_{number}"] = {
            "type": "object", "required": ["name", key], "additionalProperties": False,
            "properties": {"name": {"const": str(tool["function"].get("name", ""))},
                           key: _rebased(_parameters(tool), f"{base}/properties/{key}")}}
    alternatives["answer"] = _rebased(answer, "#/$defs/answer")
    return {"anyOf": [{"$ref": f"#/$defs/{name}"} for name in alternatives], "$defs": alternatives}


_DATA_KEYWORDS = ("const", "enum", "default", "examples")  # values, not schemas


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with every local ``$ref`` (``#...``) moved under ``base``."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    moved: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            moved[key] = base + value[1:]
        elif key in _DATA_KEYWORDS:
            moved[key] = value
        else:
            moved[key] = _rebased(value, base)
    return moved


def _call_head(family: ToolFamily, name: str, special: Mapping[str, int] | None) -> str:
    """What precedes a function's arguments: ``{"name": "f", "arguments": `` or
    ``f[ARGS]``."""
    if family is ToolFamily.MISTRAL_ARGS:
        return f"{json.dumps(name)} {_lit('[ARGS]', special)}"
    key = "parameters" if family is ToolFamily.LLAMA3 else "arguments"
    return json.dumps(json.dumps({"name": name})[:-1] + f', "{key}": ')


def _call_tail(family: ToolFamily) -> str:
    return "" if family is ToolFamily.MISTRAL_ARGS else ' "}"'


def _calls_body(family: ToolFamily, special: Mapping[str, int] | None, limit: int | None) -> str:
    """Between one and ``limit`` (None: any number of) calls, with the family's markers and
    separators (the same text ``render.format_tool_calls`` writes)."""
    def several(block: str, separator: str) -> str:
        if limit == 1:
            return block
        more = "*" if limit is None else f"{{0,{limit - 1}}}"
        if not separator:
            return f"({block}) ({block}){more}"
        return f"{block} ({json.dumps(separator)} {block}){more}"

    if family is ToolFamily.HERMES:
        return several(f'{_lit("<tool_call>", special)} "\\n" call "\\n" '
                       f'{_lit("</tool_call>", special)}', "\n")
    if family is ToolFamily.GEMMA:
        return several('"```tool_call\\n" call "\\n```"', "\n")
    if family is ToolFamily.MISTRAL:  # one list holds every call
        return f'{_lit("[TOOL_CALLS]", special)} "[" {several("call", ", ")} "]"'
    if family is ToolFamily.MISTRAL_ARGS:
        return several(f'{_lit("[TOOL_CALLS]", special)} call', "")
    return several("call", "\n")
