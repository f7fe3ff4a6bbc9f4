"""The Responses API without a model: the bounded, expiring store (fake clock), the request's
translation to a chat completion, and the writer's events and bodies checked against the
official openai SDK's own types and its stream accumulator (what ``client.responses.stream``
runs), including the reasoning and function-call items the default model never produces."""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from kolosal.engine import FinishEvent, FinishReason, TokenEvent, Usage
from kolosal.server.errors import APIError
from kolosal.server.responses.items import chat_messages
from kolosal.server.responses.protocol import ResponsesRequest
from kolosal.server.responses.store import ResponseStore, StoredResponse
from kolosal.server.responses.writer import ResponsesWriter
from kolosal.toolcalls.families import ToolFamily
from kolosal.toolcalls.output import OutputFormat

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
REQUEST = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
TOOLS_AND_THINKING = OutputFormat(ToolFamily.HERMES, frozenset({"get_weather"}), reasoning=True)
THOUGHT_THEN_CALL = ["<think>", "I should ", "look it up.", "</think>", "\n\nLet me check.",
                     "\n<tool_call>\n", '{"name": "get_weather", ', '"arguments": {"city": ',
                     '"Paris"}}', "\n</tool_call>"]


# -- the store ----------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(name: str) -> StoredResponse:
    return StoredResponse({"id": name}, [{"role": "user", "content": name}])


def test_store_evicts_the_oldest_beyond_its_bound() -> None:
    store = ResponseStore(max_entries=3, ttl_s=60, clock=FakeClock())
    for name in "abcd":
        store.put(name, stored(name))
    assert store.get("a") is None
    assert [store.get(n).response["id"] for n in "bcd"] == ["b", "c", "d"]  # type: ignore[union-attr]
    assert len(store) == 3


def test_store_entries_expire_after_their_lifetime() -> None:
    clock = FakeClock()
    store = ResponseStore(max_entries=10, ttl_s=60, clock=clock)
    store.put("a", stored("a"))
    clock.now += 30
    store.put("b", stored("b"))
    clock.now += 29.9
    assert store.get("a") is not None
    clock.now += 0.1  # a is 60 s old: gone; b is 30 s old
    assert store.get("a") is None and store.get("b") is not None
    clock.now += 30
    assert store.get("b") is None and len(store) == 0


def test_store_is_bounded_in_bytes_too() -> None:
    """Each entry echoes the request's tools: a few big requests must not grow the store
    past its byte bound, whatever the count bound allows."""
    big_tools = [{"type": "function", "function": {"name": f"f{i}", "description": "x" * 1000}}
                 for i in range(10)]  # ~10 KB per entry
    store = ResponseStore(max_entries=1000, ttl_s=60, clock=FakeClock(), max_bytes=50_000)
    for index in range(20):
        store.put(f"r{index}", StoredResponse({"id": f"r{index}", "tools": big_tools}, []))
        assert store.num_bytes <= 50_000
    assert 3 <= len(store) <= 5 and store.get("r19") is not None and store.get("r0") is None
    store.put("huge", StoredResponse({"id": "huge", "text": "y" * 60_000}, []))
    assert store.get("huge") is None and store.get("r19") is not None  # too big alone: not kept
    assert store.delete("r19") and store.num_bytes <= 40_000
    store.put("r18", StoredResponse({"id": "again"}, []))  # replacing counts the new size only
    assert store.get("r18").response == {"id": "again"}  # type: ignore[union-attr]


def test_store_delete() -> None:
    store = ResponseStore(clock=FakeClock())
    store.put("a", stored("a"))
    assert store.delete("a") and not store.delete("a") and store.get("a") is None
    with pytest.raises(ValueError):
        ResponseStore(max_entries=0)


# -- the request as a chat completion ----------------------------------------------------------------
def test_items_become_chat_messages() -> None:
    body = ResponsesRequest.model_validate({"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "."}]},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"role": "developer", "content": [{"type": "input_text", "text": "Answer now."}]}],
        "max_output_tokens": 7, "text": {"format": {"type": "json_schema", "name": "w", "schema": {
            "type": "object"}, "strict": True}}, "top_k": 5, "seed": 3})
    messages = chat_messages(body.input)
    assert messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "developer", "content": "Answer now."}]
    chat = body.chat_request(messages)
    assert chat.messages[0].role == "system" and chat.messages[0].content == "Be brief."
    assert len(chat.messages) == 5
    assert chat.max_completion_tokens == 7 and chat.top_k == 5 and chat.seed == 3
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.name == "w"


def test_function_tools_and_choice() -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "x", "tool_choice": {
        "type": "function", "name": "f"}, "parallel_tool_calls": False, "tools": [
        {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"},
         "strict": True}]})
    chat = body.chat_request(chat_messages(body.input))
    assert chat.tools is not None and chat.tools[0].function.name == "f"
    assert chat.tools[0].function.parameters == {"type": "object"}
    assert chat.tool_choice is not None and not isinstance(chat.tool_choice, str)
    assert chat.tool_choice.function.name == "f" and chat.parallel_tool_calls is False
    assert body.echo()["tool_choice"] == {"type": "function", "name": "f"}


@pytest.mark.parametrize(("text_format", "response_format"), [
    ({"type": "text"}, None), ({"type": "json_object"}, {"type": "json_object", "json_schema": None}),
    ({"type": "json_schema", "name": "n", "schema": {"type": "object"}, "description": "d"},
     {"type": "json_schema", "json_schema": {"name": "n", "description": "d", "schema": {"type": "object"},
                                             "strict": None}})])
def test_text_format_is_the_chat_response_format(text_format: dict[str, Any],
                                                 response_format: dict[str, Any] | None) -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "x", "text": {"format": text_format}})
    chat = body.chat_request(chat_messages(body.input))
    given = chat.response_format
    assert (given.model_dump(by_alias=True, exclude={"schema_"}) if given else None) == response_format
    assert body.echo()["text"]["format"]["type"] == text_format["type"]


@pytest.mark.parametrize("fields", [
    {"input": []}, {"input": [{"type": "item_reference", "id": "msg_1"}]},
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
    {"tools": [{"type": "web_search"}]}, {"tool_choice": "required"},
    {"include": ["reasoning.encrypted_content"]}, {"reasoning": {"effort": "high"}},
    {"text": {"format": {"type": "json_schema", "name": "x"}}}, {"response_format": {"type": "text"}},
    {"n": 2}, {"truncation": "auto"}, {"background": True}, {"unknown": 1}])
def test_refused_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})


# -- the writer ----------------------------------------------------------------------------------------
def run(fmt: OutputFormat, pieces: list[str], streaming: bool = True,
        reason: FinishReason = FinishReason.STOP) -> tuple[ResponsesWriter, list[dict[str, Any]]]:
    completed: list[dict[str, Any]] = []
    writer = ResponsesWriter("resp_1", 1, REQUEST.echo(), fmt, streaming, completed.append)
    chunks = writer.opening()
    for number, piece in enumerate(pieces[:-1], start=1):
        chunks += writer.on_token(0, TokenEvent(piece, number))
    chunks += writer.on_finish(0, FinishEvent(pieces[-1], reason, Usage(5, len(pieces))))
    assert completed == [writer.body(Usage(5, len(pieces)))]
    return writer, [decode(chunk) for chunk in chunks]


def decode(chunk: bytes | dict[str, Any]) -> dict[str, Any]:
    assert isinstance(chunk, bytes)
    head, data = chunk.decode().removesuffix("\n\n").split("\n")
    event: dict[str, Any] = orjson.loads(data.removeprefix("data: "))
    assert head == f"event: {event['type']}"  # the event line names the data's type
    return event


def replay(events: list[dict[str, Any]]) -> list[Any]:
    """The events through the SDK: each validated as its type, then accumulated as
    ``client.responses.stream`` does (which raises on any inconsistency)."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    return [out for event in events for out in state.handle_event(EVENTS.validate_python(event))]


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The body less what is random or a clock reading."""
    return {**body, "completed_at": None, "output": [
        {k: v for k, v in item.items() if k not in ("id", "call_id")} for item in body["output"]]}


def collapse(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def test_reasoning_message_and_call_items_in_order() -> None:
    writer, events = run(TOOLS_AND_THINKING, THOUGHT_THEN_CALL)
    assert collapse([e["type"] for e in events]) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    body = writer.body(Usage(5, len(THOUGHT_THEN_CALL)))
    Response.model_validate(body)
    reasoning, message, call = body["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "I should look it up."}]
    assert message["content"][0]["text"] == "Let me check."
    assert (call["name"], orjson.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    assert call["call_id"].startswith("call_") and call["id"].startswith("fc_")
    assert [item["status"] for item in body["output"]] == ["completed"] * 3
    assert 0 < body["usage"]["output_tokens_details"]["reasoning_tokens"] < len(THOUGHT_THEN_CALL)
    sdk_events = replay(events)
    snapshots = {e.item_id: e.snapshot for e in sdk_events if hasattr(e, "snapshot")}
    assert snapshots == {message["id"]: "Let me check.", call["id"]: call["arguments"]}
    assert sdk_events[-1].response.output[2].arguments == call["arguments"]


def test_whole_and_streamed_bodies_agree() -> None:
    streamed, _ = run(TOOLS_AND_THINKING, THOUGHT_THEN_CALL)
    whole, events = run(TOOLS_AND_THINKING, THOUGHT_THEN_CALL, streaming=False)
    assert events == []  # nothing is built for a whole response
    usage = Usage(5, len(THOUGHT_THEN_CALL))
    assert without_ids(whole.body(usage)) == without_ids(streamed.body(usage))


def test_cut_off_text_is_incomplete() -> None:
    writer, events = run(OutputFormat(), ["Once", " upon", " a"], reason=FinishReason.LENGTH)
    assert events[-1]["type"] == "response.incomplete"
    body = writer.body(Usage(5, 3))
    Response.model_validate(body)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["completed_at"] is None
    assert body["output"][0]["content"][0]["text"] == "Once upon a"
    replay(events)


def test_empty_output_is_one_empty_message() -> None:
    writer, events = run(OutputFormat(), [""])
    assert [e["type"] for e in events[2:]] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert writer.body(Usage(5, 0))["output"][0]["content"][0]["text"] == ""
    replay(events)


def test_failure_after_the_start() -> None:
    writer = ResponsesWriter("resp_1", 1, REQUEST.echo(), OutputFormat(), True, lambda _: None)
    chunks = writer.opening() + writer.on_token(0, TokenEvent("Hi", 1))
    chunks += writer.on_error(0, APIError(504, "deadline exceeded", type="server_error",
                                          code="deadline_exceeded"))
    events = [decode(chunk) for chunk in chunks]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "deadline_exceeded"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    Response.model_validate(failed)
    replay(events)
