"""Tools together with response_format, end to end through the openai SDK on both bundled
models (SmolLM2 135M Instruct, Hermes-style calls through its ChatML template; Gemma 3 270M,
a base model, our fenced Gemma calls). Under tool_choice "auto" a grammar makes every
answer either a valid call of an offered tool or content that is JSON valid against the
response format's schema; "none" leaves the format alone, "required" calls only. Hostile
schemas beside tools are 400s naming the response format, and the server keeps serving."""
from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from ..server_process import BASE_ENGINE, INSTRUCT_ENGINE, ServerProcess
from .constrained import TOOLS, assert_valid_calls, schema_format

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

ENGINES = [INSTRUCT_ENGINE, BASE_ENGINE]
ANSWER: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["city", "summary"],
    "properties": {"city": {"type": "string", "maxLength": 20},
                   "summary": {"type": "string", "maxLength": 40}}}
QUESTIONS = ["What is the weather in Paris?", "Describe Rome in a few words.",
             "What time is it in UTC?"]
SDK_TOOLS: Any = TOOLS
# json_object with llama-server's "schema" (a bounded one: a free object lets a small model
# write until max_tokens)
JSON_OBJECT: Any = {"type": "json_object", "schema": ANSWER}
ANSWER_FORMAT: Any = schema_format(ANSWER)
RESPONSES_TOOLS: Any = [{"type": "function", "name": tool["function"]["name"],
                         "parameters": tool["function"]["parameters"]} for tool in TOOLS]
TEXT_FORMAT: Any = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER}}


@pytest.fixture(scope="module")
def client(bundled_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=bundled_server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=600)


def assert_call_or_answer(message: dict[str, Any], finish: str | None,
                          schema: dict[str, Any] = ANSWER) -> str:
    """Either valid calls of the offered tools (finish_reason tool_calls) or content that is
    JSON valid against the response format's schema; returns which."""
    if message.get("tool_calls"):
        assert finish == "tool_calls", (finish, message)
        assert_valid_calls(message["tool_calls"])
        return "call"
    assert finish == "stop", (finish, message)
    jsonschema.validate(json.loads(message["content"]), schema)
    return "answer"


def streamed(client: openai.OpenAI, **body: Any) -> tuple[dict[str, Any], str | None]:
    """The streamed message reassembled (content, tool calls) and its finish reason."""
    content, finish = "", None
    calls: list[dict[str, Any]] = []
    for chunk in client.chat.completions.create(stream=True, **body):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for part in choice.delta.tool_calls or []:
                if part.index == len(calls):
                    assert part.id and part.function and part.function.name
                    calls.append({"id": part.id, "type": "function",
                                  "function": {"name": part.function.name, "arguments": ""}})
                more = part.function.arguments if part.function else None
                calls[part.index]["function"]["arguments"] += more or ""
    return {"content": content or None, "tool_calls": calls or None}, finish


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_auto_gives_a_valid_call_or_a_valid_answer(client: openai.OpenAI, engine: str, stream: bool) -> None:
    for number, question in enumerate(QUESTIONS):
        body: Any = {"model": engine, "messages": [{"role": "user", "content": question}],
                     "tools": SDK_TOOLS, "response_format": schema_format(ANSWER),
                     # parallel calls: at most 8 (a small model repeats its call until then)
                     "parallel_tool_calls": number == 1, "max_tokens": 400,
                     "temperature": 0.8 if number else 0, "seed": number}
        if stream:
            message, finish = streamed(client, **body)
        else:
            choice = client.chat.completions.create(**body).choices[0]
            message, finish = choice.message.model_dump(), choice.finish_reason
        assert_call_or_answer(message, finish)  # which one is the model's choice; both are valid


@pytest.mark.parametrize("engine", ENGINES)
def test_sampled_choices_are_each_a_call_or_an_answer(client: openai.OpenAI, engine: str) -> None:
    completion = client.chat.completions.create(
        model=engine, messages=[{"role": "user", "content": "Paris: weather or a summary?"}], tools=SDK_TOOLS,
        response_format=JSON_OBJECT, max_tokens=160, temperature=1.0, seed=7, n=4, parallel_tool_calls=False)
    for choice in completion.choices:
        assert_call_or_answer(choice.message.model_dump(), choice.finish_reason)


@pytest.mark.parametrize("engine", ENGINES)
def test_none_answers_in_the_format_and_required_calls(client: openai.OpenAI, engine: str) -> None:
    messages: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat.completions.create(
        model=engine, messages=messages, tools=SDK_TOOLS, tool_choice="none",
        response_format=ANSWER_FORMAT, max_tokens=120, temperature=0).choices[0]
    assert not answer.message.tool_calls and answer.finish_reason == "stop"
    jsonschema.validate(json.loads(answer.message.content or ""), ANSWER)
    called = client.chat.completions.create(
        model=engine, messages=messages, tools=SDK_TOOLS, tool_choice="required", parallel_tool_calls=False,
        response_format=ANSWER_FORMAT, max_tokens=120, temperature=0).choices[0]
    assert called.finish_reason == "tool_calls" and called.message.content is None
    assert_valid_calls([call.model_dump() for call in called.message.tool_calls or []])


def test_responses_tools_beside_a_text_format(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=INSTRUCT_ENGINE, input="What is the weather in Paris?", max_output_tokens=160, temperature=0,
        parallel_tool_calls=False, tools=RESPONSES_TOOLS, text=TEXT_FORMAT)
    assert response.status == "completed", response
    item = response.output[-1]
    if item.type == "function_call":
        assert_valid_calls([{"id": item.call_id, "type": "function",
                             "function": {"name": item.name, "arguments": item.arguments}}])
    else:
        jsonschema.validate(json.loads(response.output_text), ANSWER)


HUGE: dict[str, Any] = {"type": "object", "properties": {
    f"p{number}": {"type": "object", "properties": {"a": {"type": "string"}}} for number in range(6000)}}
CYCLIC: dict[str, Any] = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                          "$ref": "#/$defs/a"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("schema", "words"), [(HUGE, ("response_format", "limit")),
                                               (CYCLIC, ("response_format", "cycle"))],
                         ids=["huge", "ref-cycle"])
def test_hostile_schemas_beside_tools_are_400s(bundled_server: ServerProcess, engine: str,
                                                schema: dict[str, Any], words: tuple[str, ...]) -> None:
    body = {"model": engine, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "tools": TOOLS, "response_format": schema_format(schema)}
    response = httpx.post(f"{bundled_server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error", error
    assert all(word in f"{error['param']} {error['message']}" for word in words), error
    responses = httpx.post(f"{bundled_server.base_url}/v1/responses", timeout=120, json={
        "model": engine, "input": "hi", "max_output_tokens": 4,
        "tools": [{"type": "function", "name": "get_weather",
                   "parameters": TOOLS[0]["function"]["parameters"]}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}})
    assert responses.status_code == 400, responses.text
    assert responses.json()["error"]["param"] == "text.format", responses.text
    alive = httpx.post(f"{bundled_server.base_url}/v1/chat/completions", timeout=120, json={
        "model": engine, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert alive.status_code == 200, alive.text


def test_tools_beside_a_grammar_of_the_clients_own_are_refused_saying_why(
        bundled_server: ServerProcess) -> None:
    for extra in ({"grammar": 'root ::= "x"'}, {"json_schema": {"type": "object"}}):
        response = httpx.post(f"{bundled_server.base_url}/v1/chat/completions", timeout=120, json={
            "model": INSTRUCT_ENGINE, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
            **extra})
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert "no room for tool calls" in message and "response_format" in message, message
