"""OpenAI's legacy function calling (issue 27: refused with 400 although clients send it):
``functions`` / ``function_call`` read as tools, ``role: "function"`` results and an
assistant's ``function_call`` read as a tool call and its result, and the answer in the
legacy shape (``message.function_call``, ``finish_reason: "function_call"``,
``delta.function_call``). Pure tests on the request models and the writer, then the openai
SDK against SmolLM2 (the bundled instruct model)."""
from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from kolosal.engine import FinishEvent, FinishReason, TokenEvent, Usage
from kolosal.server.completions.parts import NamedToolChoice
from kolosal.server.completions.protocol import ChatCompletionRequest
from kolosal.server.completions.shapes import Envelope
from kolosal.server.completions.writers import ChatWriter
from kolosal.server.errors import APIError, from_validation_error
from kolosal.toolcalls import OutputFormat, ToolFamily
from kolosal.toolcalls.render import format_tool_calls

from ..server_process import INSTRUCT_ENGINE, ServerProcess

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: Any = {"name": "get_weather", "description": "Get the current weather in a city",
                "parameters": WEATHER_PARAMETERS}
TIME: Any = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": QUESTION, **fields})


def refusal(**fields: Any) -> APIError:
    with pytest.raises(ValidationError) as raised:
        request(**fields)
    return from_validation_error(raised.value)


# -- the request, read as tools ----------------------------------------------------------------------
def test_functions_are_the_tools_and_allow_one_call() -> None:
    body = request(functions=[WEATHER, TIME])
    assert [tool.model_dump() for tool in body.tools or []] == [
        {"type": "function", "function": {**WEATHER, "strict": None}},
        {"type": "function", "function": {**TIME, "description": None, "strict": None}}]
    assert body.legacy_functions and not body.parallel_tool_calls and body.tool_choice is None


@pytest.mark.parametrize(("function_call", "tool_choice"), [
    ("none", "none"), ("auto", "auto"),
    ({"name": "get_time"}, NamedToolChoice.model_validate({"type": "function",
                                                           "function": {"name": "get_time"}})),
])
def test_function_call_is_the_tool_choice(function_call: Any, tool_choice: Any) -> None:
    assert request(functions=[WEATHER, TIME], function_call=function_call).tool_choice == tool_choice


def test_function_messages_are_a_tool_call_and_its_result() -> None:
    body = request(functions=[WEATHER], messages=[
        *QUESTION, {"role": "assistant", "content": None, "function_call": CALL},
        {"role": "function", "name": "get_weather", "content": "Sunny, 24 C"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        {"role": "function", "name": "get_weather", "content": "Rainy"}])
    messages = [message.template_message() for message in body.messages]
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_fn1", "type": "function", "function": CALL}]}
    assert messages[2] == {"role": "tool", "content": "Sunny, 24 C", "name": "get_weather",
                           "tool_call_id": "call_fn1"}
    assert messages[4]["tool_call_id"] == messages[3]["tool_calls"][0]["id"] == "call_fn3"


def test_tools_requests_keep_their_shape() -> None:
    body = request(tools=[{"type": "function", "function": WEATHER}])
    assert not body.legacy_functions and body.parallel_tool_calls


# -- hostile requests: a clear 400 naming the field ------------------------------------------------
@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"functions": [WEATHER], "tools": [{"type": "function", "function": TIME}]}, "functions",
     "functions and tools cannot be combined"),
    ({"functions": [WEATHER], "function_call": "auto", "tool_choice": "auto"}, "function_call",
     "function_call and tool_choice cannot be combined"),
    ({"functions": [WEATHER], "function_call": {"name": "get_time"}}, "function_call",
     "'get_time', which is not in functions"),
    ({"function_call": {"name": "get_time"}}, "function_call", "needs functions"),
    ({"functions": [WEATHER, TIME, WEATHER]}, "functions", "names 'get_weather' twice"),
    ({"tools": [{"type": "function", "function": TIME}] * 2}, "tools", "names 'get_time' twice"),
    ({"functions": [{"name": "f" * 65}]}, "functions.0.name", "at most 64 characters"),
    ({"functions": [{"name": "f" * 1_000_000}]}, "functions.0.name", "at most 64 characters"),
    ({"functions": [{"name": "get weather!"}]}, "functions.0.name", "pattern"),
    ({"functions": [{"name": ""}]}, "functions.0.name", "at least 1 character"),
    ({"functions": "get_weather"}, "functions", "valid list"),
    ({"functions": [{"name": 5}]}, "functions.0.name", "valid string"),
    ({"functions": [{"description": "no name"}]}, "functions.0.name", "Field required"),
    ({"functions": [{"name": "f", "parameters": "{}"}]}, "functions.0.parameters", "valid dictionary"),
    ({"functions": [WEATHER], "function_call": "always"}, "function_call", "'none' or 'auto'"),
    ({"functions": [WEATHER], "function_call": 5}, "function_call", None),
    ({"functions": [WEATHER], "function_call": {"name": 5}}, "function_call.name", "valid string"),
    ({"functions": [WEATHER], "function_call": {}}, "function_call.name", "Field required"),
    ({"messages": [{"role": "function", "content": "Sunny"}]}, "messages.0", "needs the name"),
    ({"messages": [{"role": "user", "content": "x", "function_call": CALL}]}, "messages.0",
     "only an assistant message"),
    ({"messages": [{"role": "assistant", "function_call": CALL, "tool_calls": [
        {"id": "c", "type": "function", "function": CALL}]}]}, "messages.0", "not both"),
    ({"messages": [{"role": "assistant", "function_call": {"name": "f"}}]},
     "messages.0.function_call.arguments", "Field required"),
    ({"messages": [{"role": "assistant", "function_call": "get_weather()"}]},
     "messages.0.function_call", None),
    ({"functions": [WEATHER], "grammar": "root ::= \"x\""}, None, "tools cannot be combined with grammar"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_hostile_legacy_fields_are_refused(fields: dict[str, Any], param: str | None,
                                           words: str | None) -> None:
    error = refusal(**fields)
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.param == param, error.message
    if words is not None:
        assert words in error.message
    assert len(error.message) < 1_000  # a huge name is not echoed back whole


# -- the answer, in the legacy shape ----------------------------------------------------------------
def legacy_writer(streaming: bool) -> ChatWriter:
    output = OutputFormat(ToolFamily.HERMES, frozenset({"get_weather"}), max_calls=1)
    return ChatWriter(Envelope("chatcmpl-x", 0, "m", "fp"), 1, output, lambda token: b"", streaming,
                      logprobs=False, legacy=True)


def run(writer: ChatWriter) -> list[Any]:
    text = format_tool_calls(ToolFamily.HERMES, [(CALL["name"], CALL["arguments"])])
    chunks: list[Any] = writer.opening()
    for index in range(0, len(text), 7):
        chunks += writer.on_token(0, TokenEvent(text[index:index + 7], index // 7 + 1))
    chunks += writer.on_finish(0, FinishEvent("", FinishReason.STOP, Usage(10, 20)))
    return chunks


def test_the_answer_is_a_function_call() -> None:
    writer = legacy_writer(streaming=False)
    run(writer)
    answer = ChatCompletion.model_validate(writer.body(Usage(10, 20)))  # the SDK's own model
    choice = answer.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.content is None
    assert choice.message.function_call is not None and choice.message.tool_calls is None
    assert choice.message.function_call.model_dump() == CALL


def test_the_streamed_answer_is_function_call_deltas() -> None:
    chunks = [ChatCompletionChunk.model_validate(chunk) for chunk in run(legacy_writer(streaming=True))]
    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert all(delta.tool_calls is None for delta in deltas)
    calls = [delta.function_call for delta in deltas if delta.function_call is not None]
    assert calls[0].name == "get_weather" and all(call.name is None for call in calls[1:])
    assert "".join(call.arguments or "" for call in calls) == CALL["arguments"]
    assert chunks[-1].choices[0].finish_reason == "function_call"


# -- the openai SDK against SmolLM2 ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(bundled_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=bundled_server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=600)


@pytest.mark.model
def test_the_sdk_calls_a_function(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=INSTRUCT_ENGINE, messages=QUESTION, functions=[WEATHER, TIME],
        function_call={"name": "get_weather"}, temperature=0, max_tokens=200)
    choice = answer.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call is not None and choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris"}
    streamed = client.chat.completions.create(
        model=INSTRUCT_ENGINE, messages=QUESTION, functions=[WEATHER, TIME],
        function_call={"name": "get_weather"}, temperature=0, max_tokens=200, stream=True)
    name, arguments, finish = "", "", None
    for chunk in streamed:
        delta = chunk.choices[0].delta
        assert delta.tool_calls is None
        name += (delta.function_call.name or "") if delta.function_call else ""
        arguments += (delta.function_call.arguments or "") if delta.function_call else ""
        finish = chunk.choices[0].finish_reason or finish
    expected = ("get_weather", choice.message.function_call.arguments, "function_call")
    assert (name, arguments, finish) == expected


@pytest.mark.model
def test_the_sdk_sends_a_function_result_back(client: openai.OpenAI) -> None:
    messages: Any = [*QUESTION, {"role": "assistant", "content": None, "function_call": CALL},
                     {"role": "function", "name": "get_weather", "content": "Sunny, 24 C"}]
    answer = client.chat.completions.create(model=INSTRUCT_ENGINE, messages=messages, functions=[WEATHER],
                                            function_call="none", temperature=0, max_tokens=16)
    choice = answer.choices[0]
    assert choice.message.content and choice.message.function_call is None
    assert choice.finish_reason in ("stop", "length")


@pytest.mark.model
def test_the_sdk_gets_a_400_for_functions_beside_tools(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=INSTRUCT_ENGINE, messages=QUESTION, functions=[WEATHER],
                                       tools=[{"type": "function", "function": TIME}])
    assert "functions and tools cannot be combined" in str(raised.value)
