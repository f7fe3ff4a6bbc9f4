"""The request-preparation step without a model: the per-engine view is computed once per
engine object, a chat request comes out as prompt tokens, complete SamplingParams and an
OutputFormat (tools beside a response_format: one grammar, a call or the answer), and
refusals name the field as each request kind spells it."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from quart import Quart

from kolosal.engine import ContextLengthExceededError, InvalidGrammarError
from kolosal.engine.sampling_defaults import NO_DEFAULTS, SamplingDefaults
from kolosal.server.completions.constraints import MAX_ENFORCED_CALLS
from kolosal.server.completions.prepare import engine_view, prepare_chat
from kolosal.server.completions.protocol import ChatCompletionRequest, CompletionRequest
from kolosal.server.errors import APIError
from kolosal.server.responses.items import chat_messages
from kolosal.server.responses.protocol import ResponsesRequest
from kolosal.toolcalls.families import ToolFamily

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ANSWER = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}


class FakeEngine:
    """What preparation asks of an engine: its facts, a vocabulary lookup, a tokenizer."""

    def __init__(self, sampling_defaults: SamplingDefaults = NO_DEFAULTS) -> None:
        self.info = SimpleNamespace(chat_template=None, architecture="qwen2", bos_token="", eos_token="",
                                    n_ctx=4096, n_vocab=1000)
        self.sampling_defaults = sampling_defaults
        self.lookups: list[tuple[str, ...]] = []

    def special_tokens(self, texts: Iterable[str]) -> dict[str, int]:
        asked = tuple(texts)
        self.lookups.append(asked)
        return {text: 900 + number for number, text in enumerate(asked) if "tool_call" in text}

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """One token per character; BOS (999) first with ``add_special``."""
        return [999] * add_special + [ord(char) % 999 for char in text]


@pytest.fixture
async def app_context() -> AsyncIterator[None]:
    async with settings_context():
        yield


@contextlib.asynccontextmanager
async def settings_context(max_tokens_default: int | None = None) -> AsyncIterator[None]:
    """An app context with the server settings preparation reads."""
    app = Quart(__name__)
    app.config["SETTINGS"] = SimpleNamespace(log_prompts=False, max_tokens_default=max_tokens_default)
    async with app.app_context():
        yield


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}], **fields})


def test_the_engine_view_is_computed_once_per_engine() -> None:
    first, second = FakeEngine(), FakeEngine()
    view = engine_view(first)  # type: ignore[arg-type]
    assert engine_view(first) is view and len(first.lookups) == 1  # type: ignore[arg-type]
    assert view.family is ToolFamily.HERMES and view.template.builtin
    assert view.special_tokens == {"<tool_call>": 900, "</tool_call>": 901}
    assert engine_view(second) is not view  # type: ignore[arg-type]


async def test_tools_beside_a_response_format_give_one_grammar(app_context: None) -> None:
    prepared = await prepare_chat(FakeEngine(), chat(tools=[TOOL], response_format=FORMAT))  # type: ignore[arg-type]
    assert len(prepared.prompts) == 1 and prepared.prompts[0]
    params = prepared.params
    assert params.grammar is not None and "<[900]>" in params.grammar and "summary" in params.grammar
    assert params.special_as_text  # the call markers are special tokens: rendered as text
    assert prepared.output.tool_family is ToolFamily.HERMES and not prepared.output.calls_only


async def test_tool_choice_none_and_required_beside_a_response_format(app_context: None) -> None:
    engine: Any = FakeEngine()
    answer = await prepare_chat(engine, chat(tools=[TOOL], tool_choice="none", response_format=FORMAT))
    assert answer.output.tool_family is None and not answer.params.special_as_text
    assert answer.params.grammar is not None and "<[900]>" not in answer.params.grammar
    calls = await prepare_chat(engine, chat(tools=[TOOL], tool_choice="required", response_format=FORMAT))
    assert calls.output.calls_only and calls.params.grammar is not None
    assert "summary" not in calls.params.grammar and f"{{0,{MAX_ENFORCED_CALLS - 1}}}" in calls.params.grammar


async def test_calls_are_watched_and_parallel_false_allows_one(app_context: None) -> None:
    """Every request that parses calls gets the engine's watch (a repeated call ends it);
    ``parallel_tool_calls: false`` (and legacy ``functions``) end the output at one call."""
    engine: Any = FakeEngine()
    free = await prepare_chat(engine, chat(tools=[TOOL]))
    assert free.params.watch is not None and free.output.max_calls is None
    for body in (chat(tools=[TOOL], parallel_tool_calls=False), chat(functions=[TOOL["function"]])):
        one = await prepare_chat(engine, body)
        assert one.params.watch is not None and one.output.max_calls == 1
    plain = await prepare_chat(engine, chat())
    assert plain.params.watch is None and plain.output.is_plain


async def test_a_bad_answer_schema_beside_tools_names_the_format_field(app_context: None) -> None:
    engine: Any = FakeEngine()
    cyclic = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}
    with pytest.raises(APIError) as raised:
        await prepare_chat(engine, chat(tools=[TOOL], response_format=cyclic))
    assert raised.value.param == "response_format" and "cycle" in raised.value.message
    body = ResponsesRequest.model_validate({
        "model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "#"}}}})
    with pytest.raises(APIError) as raised:
        await prepare_chat(engine, body.chat_request(chat_messages(body.input)))
    assert raised.value.param == "text.format"


def test_engine_refusals_name_each_request_kinds_field() -> None:
    responses = ResponsesRequest.model_validate({"model": "m", "input": "hi", "text": {"format": {
        "type": "json_object"}}})
    cases = [(chat(response_format=FORMAT), "messages", "response_format"),
             (CompletionRequest.model_validate({"model": "m", "prompt": "x", "grammar": 'root ::= "a"'}),
              "prompt", "grammar"),
             (responses.chat_request(chat_messages(responses.input)), "input", "text.format")]
    for body, prompt_field, grammar_field in cases:
        assert body.field_at_fault(ContextLengthExceededError("long")) == prompt_field
        assert body.field_at_fault(InvalidGrammarError("bad")) == grammar_field
        assert body.field_at_fault(ValueError("other")) is None
