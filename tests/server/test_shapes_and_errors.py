"""Pure units of the HTTP layer: SSE encoding, response shapes, the error table, request
validation. No model, no server."""
from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from kolosal.engine import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineOverloadedError,
    EngineStoppedError,
    InferenceError,
    InsufficientMemoryError,
    InvalidGrammarError,
    InvalidRequestError,
    TokenLogprob,
    Usage,
)
from kolosal.server.completions import shapes
from kolosal.server.completions.protocol import ChatCompletionRequest, CompletionRequest
from kolosal.server.errors import from_engine_error
from kolosal.server.sse import ContentChunkEncoder, event
from kolosal.toolcalls.types import ToolCall, ToolCallArguments, ToolCallStart

ENVELOPE = shapes.Envelope("chatcmpl-1", 1700000000, "m", "fp_1")
PIECES = {1: b"Hel", 2: b"lo", 3: b"\xe2\x82", 4: b" world"}


def piece_of(token: int) -> bytes:
    return PIECES[token]


@pytest.mark.parametrize("chat", [True, False])
def test_the_fast_content_chunk_is_the_generic_chunk(chat: bool) -> None:
    base = ENVELOPE.base("chat.completion.chunk" if chat else "text_completion")
    encoder = ContentChunkEncoder(base, chat=chat)
    for index, text in ((0, "hi"), (3, 'quote " and \n newline'), (1, "")):
        choice = (shapes.chat_chunk(ENVELOPE, index, {"content": text})["choices"][0] if chat else
                  shapes.completion_choice(index, text, None, None))
        assert orjson.loads(encoder.encode(index, text)[6:]) == {**base, "choices": [choice]}
        assert encoder.encode(index, text) == event({**base, "choices": [choice]})


def test_chat_logprobs_shape() -> None:
    entries = [TokenLogprob(1, -0.5, ((1, -0.5), (2, -1.5))), TokenLogprob(3, -2.0)]
    body = shapes.chat_logprobs(entries, piece_of)
    assert body["refusal"] is None
    first, second = body["content"]
    assert first == {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108], "top_logprobs": [
        {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
        {"token": "lo", "logprob": -1.5, "bytes": [108, 111]}]}
    assert second["bytes"] == [0xE2, 0x82] and second["top_logprobs"] == []


def test_completion_logprobs_offsets_continue_across_parts() -> None:
    first = shapes.completion_logprobs([TokenLogprob(1, None), TokenLogprob(2, -1.0, ((2, -1.0),))],
                                       piece_of)
    second = shapes.completion_logprobs([TokenLogprob(4, -0.25)], piece_of, text_offset=5)
    merged = shapes.merge_completion_logprobs([first, second])
    assert merged == {"tokens": ["Hel", "lo", " world"], "token_logprobs": [None, -1.0, -0.25],
                      "top_logprobs": [None, {"lo": -1.0}, {}], "text_offset": [0, 3, 5]}
    assert shapes.merge_completion_logprobs([]) is None


def test_chat_message_with_tool_calls_has_null_content() -> None:
    call = ToolCall("call_1", "f", '{"a": 1}')
    message = shapes.chat_message("", [call])
    assert message["content"] is None
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert "reasoning_content" not in message
    assert shapes.chat_message("text", [], "thought")["reasoning_content"] == "thought"


def test_tool_call_deltas() -> None:
    assert shapes.chat_delta(ToolCallStart(0, "call_1", "f")) == {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    assert shapes.chat_delta(ToolCallArguments(0, '{"a"')) == {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"a"'}}]}


def test_usage_shapes() -> None:
    usage = Usage(10, 5, cached_tokens=4)
    assert shapes.usage_body(usage) == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                                        "prompt_tokens_details": {"cached_tokens": 4}}
    chunk = shapes.usage_chunk(ENVELOPE, "chat.completion.chunk", usage)
    assert chunk["choices"] == [] and chunk["object"] == "chat.completion.chunk"


@pytest.mark.parametrize(("error", "status", "code", "retry"), [
    (InvalidRequestError("bad", param="n"), 400, "invalid_request", False),
    (InvalidGrammarError("bad grammar"), 400, "invalid_grammar", False),
    (ContextLengthExceededError("long"), 400, "context_length_exceeded", False),
    (EngineOverloadedError("full"), 503, "engine_overloaded", True),
    (EngineStoppedError("stopped"), 503, "engine_stopped", True),
    (InsufficientMemoryError("later"), 503, "insufficient_memory", True),
    (DeadlineExceededError("late"), 504, "deadline_exceeded", False),
    (InferenceError("boom"), 500, "inference_error", False),
])
def test_the_error_table(error: Exception, status: int, code: str, retry: bool) -> None:
    api_error = from_engine_error(error)
    assert (api_error.status, api_error.code) == (status, code)
    assert ("Retry-After" in api_error.headers) == retry
    assert api_error.body()["error"]["message"] == str(error)


def test_errors_outside_the_table() -> None:
    assert from_engine_error(InsufficientMemoryError("never fits", fits_alone=False)).status == 400
    assert from_engine_error(InvalidRequestError("x", param="n")).param == "n"
    unknown = from_engine_error(ValueError("a bug"))  # not an engine error: never a 400
    assert unknown.status == 500 and "a bug" not in unknown.message


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 **fields})


def test_null_means_the_default() -> None:
    body = chat(temperature=None, top_p=None, max_tokens=None, stop=None, tools=None, n=None, seed=None)
    assert body.temperature == 1.0 and body.top_p == 1.0 and body.n == 1


def test_no_op_fields_are_accepted() -> None:
    body = chat(response_format={"type": "text"}, tools=[], tool_choice="none", store=False,
                metadata={"k": "v"}, parallel_tool_calls=False, user="u", service_tier="auto")
    assert body.structured_format() is None and body.active_tools() == []


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""},
    {"tools": [{"type": "function", "function": {"name": "f"}}], "json_schema": {"type": "object"}},
    {"tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "g"}},
     "tools": [{"type": "function", "function": {"name": "f"}}]},
    {"top_logprobs": 3},
    {"response_format": {"type": "json_schema"}},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"temperature": "0.5"},
])
def test_conflicting_or_unsupported_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        chat(**fields)


def test_completion_echo_rules() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_tokens": 0, "echo": True,
                                             "logprobs": 1})
    assert body.wants_prompt_logprobs() and body.logprobs_count() == 1
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_tokens": 0})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 6})


def test_fields_other_clients_send_are_read_as_ours() -> None:
    """Issue 27: vLLM's repetition_penalty, llama-server's n_predict and timings_per_token,
    chat_template_kwargs and reasoning_effort (to the template, as vLLM passes them), and
    tool_choice "auto" without tools were 400s."""
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    chat = ChatCompletionRequest.model_validate({**base, "repetition_penalty": 1.2, "n_predict": 7,
                                                 "timings_per_token": True, "tool_choice": "auto",
                                                 "chat_template_kwargs": {"enable_thinking": False},
                                                 "reasoning_effort": "low"})
    assert chat.repeat_penalty == 1.2 and chat.max_tokens == 7 and chat.active_tools() == []
    assert chat.template_variables() == {"enable_thinking": False, "reasoning_effort": "low"}
    until_the_end = CompletionRequest.model_validate({"model": "m", "prompt": "x", "n_predict": -1})
    assert until_the_end.max_tokens is None  # llama-server's -1: our default (16, or --max-tokens-default)
    assert until_the_end.resolved_max_tokens(4096) == 16
    assert until_the_end.resolved_max_tokens(4096, 0) == 4096
    with pytest.raises(ValidationError, match="repetition_penalty and repeat_penalty disagree"):
        ChatCompletionRequest.model_validate({**base, "repetition_penalty": 1.2, "repeat_penalty": 1.1})
    with pytest.raises(ValidationError, match="needs tools"):
        ChatCompletionRequest.model_validate({**base, "tool_choice": "required"})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({**base, "reasoning_effort": "extreme"})
