"""Which grammar, if any, constrains a request's output: from ``response_format``,
llama-server's ``json_schema`` / ``grammar`` fields, or enforced tool calls. The grammar is
llguidance's; its compilation against the model's vocabulary happens in the engine.

``request_grammar`` builds it on a worker thread: a large schema takes a while to compile,
and the event loop must keep answering probes meanwhile (the compiles themselves run on
deep-stack threads, within the bounds of ``toolcalls.limits``)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ...toolcalls import grammar as tool_grammar
from ...toolcalls.families import ToolFamily
from ..errors import APIError, bad_request
from .protocol import ChatCompletionRequest, NamedToolChoice, SamplingFields

# A base model offered parallel calls may keep calling until max_tokens: bound the list.
MAX_ENFORCED_CALLS = 8


@dataclass(frozen=True, slots=True)
class OutputShape:
    """What an enforced grammar must leave room for: the model family's tool-call format,
    a reasoning block before the answer, markers that are single special tokens."""

    family: ToolFamily
    reasoning: tool_grammar.ReasoningMode = "none"
    special_tokens: dict[str, int] | None = None

    def options(self) -> dict[str, Any]:
        return {"reasoning": self.reasoning, "special_tokens": self.special_tokens or None}


async def request_grammar(body: SamplingFields, output: OutputShape | None = None) -> str | None:
    """The grammar of response_format / json_schema / grammar, else (a chat request) of the
    enforced tool calls; None when the output is free. A bad one is a 400 now."""
    chat = body if isinstance(body, ChatCompletionRequest) and output is not None else None
    enforced_calls = chat is not None and chat.tool_choice not in (None, "auto") and bool(chat.active_tools())
    if body.structured_format() is None and body.json_schema is None and body.grammar is None \
            and not enforced_calls:
        return None  # nothing to build: no thread hop

    def build() -> str | None:
        grammar = output_grammar(body, output)
        if grammar is None and chat is not None and output is not None:
            grammar = tool_call_grammar(chat, output)
        return grammar
    return await asyncio.to_thread(build)


def output_grammar(body: SamplingFields, output: OutputShape | None = None) -> str | None:
    """The grammar of response_format / json_schema / grammar (one at most), checked now so
    that a bad schema is a 400 before anything is queued."""
    options = output.options() if output is not None else {}
    try:
        fmt = body.structured_format()
        if fmt is not None:
            if fmt.type == "json_object":
                return tool_grammar.json_schema_grammar(fmt.schema_ or {"type": "object"}, **options)
            assert fmt.json_schema is not None
            return tool_grammar.json_schema_grammar(fmt.json_schema.schema_, **options)
        if body.json_schema is not None:
            return tool_grammar.json_schema_grammar(body.json_schema, **options)
        if body.grammar is not None:
            return tool_grammar.gbnf_grammar(body.grammar)
    except tool_grammar.GrammarError as error:
        raise bad_request(str(error), param=grammar_param(body)) from None
    return None


def grammar_param(body: SamplingFields) -> str:
    """The request field its grammar came from."""
    if isinstance(body, ChatCompletionRequest) and body.structured_format() is None \
            and body.json_schema is None and body.grammar is None:
        return "tools"
    if body.structured_format() is not None:
        return "response_format"
    return "json_schema" if body.json_schema is not None else "grammar"


def tool_call_grammar(body: ChatCompletionRequest, output: OutputShape) -> str | None:
    """When tool_choice is "required" or names a function, a grammar whose every output is a
    valid call (or calls) of the offered tools; None when the model may answer freely."""
    choice = body.tool_choice
    tools = [tool.model_dump() for tool in body.active_tools()]
    if not tools or choice in (None, "auto"):
        return None
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    try:
        return tool_grammar.tool_call_grammar(
            output.family, tools, function_name=named, max_calls=MAX_ENFORCED_CALLS,
            parallel=body.parallel_tool_calls and named is None, **output.options())
    except tool_grammar.GrammarError as error:
        raise APIError(400, str(error), param="tools") from None
