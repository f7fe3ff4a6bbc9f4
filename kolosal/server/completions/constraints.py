"""Which grammar, if any, constrains a request's output: one policy for every endpoint.

- ``response_format`` json_object / json_schema (``toolcalls.grammar.response_format_schema``),
  llama-server's ``json_schema`` (a bare schema) or ``grammar`` (GBNF): the output is that;
- tools with ``tool_choice`` "required" or a named function: the output is calls only (at
  most ``MAX_ENFORCED_CALLS``, exactly one without ``parallel_tool_calls``), whatever
  response_format says;
- tools with ``tool_choice`` "auto" beside a response_format: the output is a call of the
  offered tools or the answer in that format (``tool_call_grammar(..., answer_schema=...)``);
- tools with "auto" alone: no grammar, the model answers or calls freely;
- ``tool_choice`` "none": the tools are off, so response_format's grammar alone.

A chat answer that is JSON alone (``json_answer``) may sit in a Markdown fence with
whitespace around it, as llama-server's grammar allows (``toolcalls.fence``); the writer
gives the client the JSON alone. Text completions get the JSON as it is.

Tools beside ``grammar`` / ``json_schema`` are refused in the protocol. The grammar is
llguidance's, checked here (a bad one is a 400 naming its field before anything is queued);
its compilation against the model's vocabulary happens in the engine.

``request_grammar`` builds it on a worker thread: a large schema takes a while to compile,
and the event loop must keep answering probes meanwhile (the compiles themselves run on
deep-stack threads, within the bounds of ``toolcalls.limits``)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ...toolcalls import grammar as tool_grammar
from ...toolcalls.families import ToolFamily
from ..errors import bad_request
from .parts import NamedToolChoice
from .protocol import ChatCompletionRequest, SamplingFields

# A base model offered parallel calls may keep calling until max_tokens: bound the list.
MAX_ENFORCED_CALLS = 8


@dataclass(frozen=True, slots=True)
class OutputShape:
    """What an enforced grammar must leave room for: the model family's tool-call format,
    a reasoning block before the answer, markers that are single special tokens, a fence
    around a JSON answer."""

    family: ToolFamily
    reasoning: tool_grammar.ReasoningMode = "none"
    special_tokens: dict[str, int] | None = None
    fenced: bool = False  # a JSON answer that may sit in a fence (``json_answer``)

    def options(self) -> dict[str, Any]:
        return {"reasoning": self.reasoning, "special_tokens": self.special_tokens or None}


async def request_grammar(body: SamplingFields, shape: OutputShape | None = None) -> str | None:
    """The grammar of the request's output (see the module's policy); None when the output
    is free. ``shape`` is a chat request's (None: a text completion, no tools)."""
    chat = body if isinstance(body, ChatCompletionRequest) and shape is not None else None
    tools = [tool.model_dump() for tool in chat.active_tools()] if chat is not None else []
    enforced_calls = chat is not None and bool(tools) and chat.tool_choice not in (None, "auto")
    if body.structured_format() is None and body.json_schema is None and body.grammar is None \
            and not enforced_calls:
        return None  # nothing to build: no thread hop
    return await asyncio.to_thread(build_grammar, body, tools, shape)


def json_answer(body: ChatCompletionRequest) -> bool:
    """Is the chat answer constrained to be one JSON value (a response_format or a bare
    ``json_schema``, no tools in play)? Then its grammar allows a fence around it
    (``OutputShape.fenced``), and the writer strips it (``OutputFormat.fenced``): one
    decision, made in ``prepare_chat``."""
    return not body.active_tools() and (body.structured_format() is not None or body.json_schema is not None)


def build_grammar(body: SamplingFields, tools: list[dict[str, Any]], shape: OutputShape | None) -> str | None:
    """The grammar, built and checked now; GrammarError becomes a 400 naming the field at
    fault (the response format's as the request spells it, ``tools``, ``json_schema``,
    ``grammar``)."""
    options = {**shape.options(), "fenced": shape.fenced} if shape is not None else {}
    field = body.grammar_field()
    try:
        fmt = body.structured_format()
        response_format = fmt.model_dump(by_alias=True) if fmt is not None else None
        if tools and shape is not None and isinstance(body, ChatCompletionRequest):
            answer = tool_grammar.response_format_schema(response_format)
            field = "tools"
            return tool_calls_grammar(body, tools, shape, answer)
        if response_format is not None:
            return tool_grammar.response_format_grammar(response_format, **options)
        if body.json_schema is not None:
            return tool_grammar.json_schema_grammar(body.json_schema, **options)
        if body.grammar is not None:
            return tool_grammar.gbnf_grammar(body.grammar)
    except tool_grammar.AnswerSchemaError as error:
        raise bad_request(str(error), param=body.FORMAT_FIELD) from None
    except tool_grammar.GrammarError as error:
        raise bad_request(str(error), param=field) from None
    return None


def tool_calls_grammar(body: ChatCompletionRequest, tools: list[dict[str, Any]], shape: OutputShape,
                       answer: Any) -> str | None:
    """Calls only when tool_choice is "required" or names a function; a call or the
    ``answer`` (the response format's schema) under "auto"; None when the model may answer
    freely."""
    choice = body.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    enforced = choice == "required" or named is not None
    if not enforced and answer is None:
        return None
    return tool_grammar.tool_call_grammar(
        shape.family, tools, function_name=named, max_calls=MAX_ENFORCED_CALLS,
        parallel=body.parallel_tool_calls and named is None,
        answer_schema=None if enforced else answer, **shape.options())
