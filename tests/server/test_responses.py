"""POST /v1/responses through a real server and the official openai SDK, unmodified:
``responses.create`` (whole and streamed), ``responses.stream``, ``responses.parse``,
``retrieve`` / ``delete``, ``previous_response_id`` and ``store``, structured output, a
required function tool and its round trip, and the 400s."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import orjson
import pytest
from openai.types.responses import FunctionToolParam, Response, ResponseInputParam
from pydantic import BaseModel, Field

from ..server_process import ENGINE, ServerProcess, logged_prompt, start_server, stop_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

PARAMETERS: dict[str, Any] = {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"], "additionalProperties": False}
WEATHER_TOOL: FunctionToolParam = {
    "type": "function", "name": "get_weather", "description": "The current weather in a city",
    "parameters": PARAMETERS, "strict": True}
MESSAGE_EVENTS = ["response.output_item.added", "response.content_part.added",
                  "response.output_text.delta", "response.output_text.done",
                  "response.content_part.done", "response.output_item.done"]


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def collapse(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def test_create(client: openai.OpenAI, server: ServerProcess) -> None:
    response = client.responses.create(model=ENGINE, input="Write a haiku about the sea.",
                                       instructions="You are a poet.", max_output_tokens=12,
                                       temperature=0, metadata={"run": "1"})
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == ENGINE and response.metadata == {"run": "1"}
    assert response.instructions == "You are a poet." and response.max_output_tokens == 12
    assert response.status in ("completed", "incomplete")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert response.output_text  # the SDK's own join of the output_text parts
    usage = response.usage
    assert usage is not None and 0 < usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    raw = httpx.post(f"{server.base_url}/v1/responses", timeout=300, json={
        "model": ENGINE, "input": "Hello", "max_output_tokens": 4}).json()
    Response.model_validate(raw)  # every field the SDK declares has its declared type
    assert "output_text" not in raw  # an SDK property, computed client-side


def test_stream_event_order(client: openai.OpenAI) -> None:
    prompt: ResponseInputParam = [{"role": "user", "content": "Count from one to ten."}]
    events: list[Any] = list(client.responses.create(model=ENGINE, input=prompt, max_output_tokens=16,
                                                     temperature=0, stream=True))
    types = [event.type for event in events]
    final = events[-1].response
    assert collapse(types) == ["response.created", "response.in_progress", *MESSAGE_EVENTS,
                               f"response.{final.status}"]
    assert types.count("response.output_text.delta") >= 2  # it did stream
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text and final.id == events[0].response.id
    assert final.status in ("completed", "incomplete") and final.usage.output_tokens <= 16
    done = [e for e in events if e.type == "response.output_item.done"][0].item
    assert done.model_dump() == final.output[0].model_dump()  # the item as the response holds it
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()  # stored as sent


def test_raw_stream_has_event_lines_and_no_done(server: ServerProcess) -> None:
    raw = httpx.post(f"{server.base_url}/responses", timeout=300, json={
        "model": ENGINE, "input": "Hi", "max_output_tokens": 3, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    blocks = raw.text.strip().split("\n\n")
    for block in blocks:
        head, data = block.split("\n")
        assert head == "event: " + orjson.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in raw.text


def test_stream_helper_and_parse_with_a_schema(client: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    parsed = client.responses.parse(model=ENGINE, input="Describe a person as JSON.",
                                    text_format=Person, max_output_tokens=80, temperature=0)
    assert parsed.status == "completed"
    jsonschema.validate(json.loads(parsed.output_text), schema)
    assert isinstance(parsed.output_parsed, Person)
    assert parsed.text is not None and parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"
    with client.responses.stream(model=ENGINE, input="Describe a person as JSON.", text_format=Person,
                                 max_output_tokens=80, temperature=0) as stream:
        types = [str(event.type) for event in stream]
        final = stream.get_final_response()
    assert collapse(types)[-len(MESSAGE_EVENTS) - 1:] == [*MESSAGE_EVENTS, "response.completed"]
    assert isinstance(final.output_parsed, Person)
    jsonschema.validate(json.loads(final.output_text), schema)


def test_required_function_tool(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=ENGINE, input="What is the weather in Paris?", tools=[WEATHER_TOOL],
        tool_choice="required", parallel_tool_calls=False, max_output_tokens=60, temperature=0)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id is not None and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), PARAMETERS)
    assert response.tools[0].type == "function" and response.tool_choice == "required"
    with client.responses.stream(model=ENGINE, input="What is the weather in Paris?",
                                 tools=[WEATHER_TOOL], tool_choice="required",
                                 parallel_tool_calls=False, max_output_tokens=60, temperature=0) as stream:
        types = collapse([str(event.type) for event in stream])
        final = stream.get_final_response()
    assert types[2:] == ["response.output_item.added", "response.function_call_arguments.delta",
                         "response.function_call_arguments.done", "response.output_item.done",
                         "response.completed"]
    streamed_call = final.output[0]
    assert streamed_call.type == "function_call"
    jsonschema.validate(json.loads(streamed_call.arguments), PARAMETERS)
    assert streamed_call.parsed_arguments == json.loads(streamed_call.arguments)  # strict: SDK-parsed


# -- conversations: the prompts compared as the server logged them ----------------------------------
@pytest.fixture(scope="module")
def logged(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that logs each rendered prompt (JSON lines), so that two requests' prompts can
    be compared exactly. (Comparing greedy outputs would not do: a prompt split differently
    by the prefix cache can flip a near tie; see README, Known limits.)"""
    running = start_server(model_path, tmp_path_factory.mktemp("responses") / "server.log",
                           "--log-prompts", "--log-format", "json", "--parallel", "4")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def logged_client(logged: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=logged.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def leads(prompt: str, text: str, before: str) -> bool:
    """``text`` occurs in ``prompt`` before ``before`` does."""
    return -1 < prompt.find(text) < prompt.index(before)


def test_previous_response_id_continues_the_conversation(logged_client: openai.OpenAI,
                                                         logged: ServerProcess) -> None:
    def create(request_id: str, **fields: Any) -> Response:
        return logged_client.responses.create(model=ENGINE, max_output_tokens=6, temperature=0,
                                              extra_headers={"X-Request-Id": request_id}, **fields)

    first = create("turn-1", input="My name is Ada.", instructions="Be brief.")
    second = create("turn-2", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.instructions is None
    # the same conversation sent whole: the earlier output is in it, the instructions are not
    whole: list[Any] = [{"role": "user", "content": "My name is Ada."},
                        *[item.model_dump() for item in first.output],
                        {"role": "user", "content": "What is my name?"}]
    create("turn-2-whole", input=whole)
    prompt = logged_prompt(logged, "turn-2")
    assert prompt == logged_prompt(logged, "turn-2-whole")
    assert "Be brief." in logged_prompt(logged, "turn-1")
    assert not leads(prompt, "Be brief.", "My name is Ada.")  # (the model may echo it later)
    assert first.output_text.strip() in prompt
    assert prompt.index("My name is Ada.") < prompt.index("What is my name?")
    third = create("turn-3", input="Spell it.", previous_response_id=second.id, instructions="Be kind.")
    assert third.usage is not None and second.usage is not None
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    later = logged_prompt(logged, "turn-3")  # this request's instructions lead the whole chain
    assert leads(later, "Be kind.", "My name is Ada.") and not leads(later, "Be brief.", "My name is Ada.")
    assert later.index("What is my name?") < later.index("Spell it.")
    assert second.output_text.strip() in later


def test_function_result_by_previous_response_id_or_in_the_input(logged_client: openai.OpenAI,
                                                                 logged: ServerProcess) -> None:
    question = "What is the weather in Paris?"
    response = logged_client.responses.create(
        model=ENGINE, input=question, tools=[WEATHER_TOOL], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=60, temperature=0)
    [call] = response.output
    assert call.type == "function_call"
    result: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}
    chained = logged_client.responses.create(
        model=ENGINE, previous_response_id=response.id, input=[result], tools=[WEATHER_TOOL],
        max_output_tokens=4, store=False, extra_headers={"X-Request-Id": "tool-chained"})
    logged_client.responses.create(
        model=ENGINE, input=[{"role": "user", "content": question},
                             call.model_dump(exclude_none=True), result],  # type: ignore[list-item]
        tools=[WEATHER_TOOL], max_output_tokens=4, store=False,
        extra_headers={"X-Request-Id": "tool-whole"})
    prompt = logged_prompt(logged, "tool-chained")
    assert prompt == logged_prompt(logged, "tool-whole")
    assert call.arguments.replace(" ", "") in prompt.replace(" ", "") and "Sunny, 24 C" in prompt
    assert chained.status in ("completed", "incomplete")
    with pytest.raises(openai.NotFoundError):  # store: false
        logged_client.responses.retrieve(chained.id)


def test_store_retrieve_delete(client: openai.OpenAI) -> None:
    kept = client.responses.create(model=ENGINE, input="Hello", max_output_tokens=4)
    fetched = client.responses.retrieve(kept.id)
    assert fetched.model_dump() == kept.model_dump()
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(kept.id)
    unstored = client.responses.create(model=ENGINE, input="Hello", max_output_tokens=4, store=False)
    assert unstored.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=ENGINE, input="Hi", previous_response_id=unstored.id)
    assert raised.value.param == "previous_response_id"
    assert raised.value.code == "previous_response_not_found"


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input.0.message.content.0"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
     "text.format"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"input": "word " * 5000}, "input"),
])
def test_bad_requests(client: openai.OpenAI, fields: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": ENGINE, "input": "Hi", **fields}
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(**body)
    assert raised.value.param == param


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="missing", input="Hi")
