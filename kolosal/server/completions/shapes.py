"""Chat and text completion bodies and stream chunks: typed once (TypedDicts, plain dicts at
run time; /openapi.json's response schemas are generated from them) and built here.

Bodies and chunks of one response share an ``Envelope`` (id, created, model,
fingerprint); choices, deltas, logprobs and usage are built by the functions here, so a
field is added (or fixed) once for every endpoint and for streams and bodies alike.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

from typing_extensions import NotRequired

from ... import __version__
from ...engine import AsyncEngine, TokenLogprob, Usage
from ...toolcalls.types import ContentDelta, ReasoningDelta, StreamEvent, ToolCall, ToolCallStart

PieceOf = Callable[[int], bytes]
FinishReason = str | None   # "stop", "length", "tool_calls", "function_call"; None until the end


class CachedTokens(TypedDict):
    cached_tokens: int


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: CachedTokens


class TokenEntry(TypedDict):
    token: str
    logprob: float | None
    bytes: list[int]


class TokenWithTop(TokenEntry):
    top_logprobs: list[TokenEntry]


class ChatLogprobs(TypedDict):
    content: list[TokenWithTop]
    refusal: None


class CompletionLogprobs(TypedDict):
    """The legacy shape: parallel lists."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CalledFunction(TypedDict):
    name: str
    arguments: str


class ToolCallObject(TypedDict):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: NotRequired[list[ToolCallObject]]
    function_call: NotRequired[CalledFunction]  # legacy ``functions`` requests, instead of tool_calls
    reasoning_content: NotRequired[str]


class ChatChoice(TypedDict):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class DeltaFunction(TypedDict, total=False):
    name: str
    arguments: str


class DeltaToolCall(TypedDict):
    index: int
    id: NotRequired[str]
    type: NotRequired[Literal["function"]]
    function: DeltaFunction


class ChatDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    reasoning_content: str
    tool_calls: list[DeltaToolCall]
    function_call: DeltaFunction


class CompletionChoice(TypedDict):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None


class Completion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every body and chunk of one response shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str

    def base(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": self.system_fingerprint}

    @classmethod
    def new(cls, response_id: str, model: str, engine: AsyncEngine) -> Envelope:
        """A response starting now, on ``engine``: its fingerprint is our version and the
        model file's path."""
        digest = hashlib.sha256(f"{__version__}:{engine.config.model_path}".encode()).hexdigest()
        return cls(response_id, int(time.time()), model, "fp_" + digest[:10])


def usage_body(usage: Usage) -> CompletionUsage:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


# -- logprobs ---------------------------------------------------------------------------------
def _token_entry(token: int, logprob: float | None, piece_of: PieceOf) -> TokenEntry:
    piece = piece_of(token)
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def chat_logprobs(entries: Sequence[TokenLogprob], piece_of: PieceOf) -> ChatLogprobs:
    """``choices[].logprobs`` of a chat completion (or of one chunk)."""
    return {"content": [{**_token_entry(e.token, e.logprob, piece_of),
                         "top_logprobs": [_token_entry(t, lp, piece_of) for t, lp in e.top]}
                        for e in entries],
            "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob], piece_of: PieceOf,
                        text_offset: int = 0) -> CompletionLogprobs:
    """The legacy ``choices[].logprobs`` of a text completion: parallel lists, offsets into
    the choice's text starting at ``text_offset``."""
    tokens, offsets = [], []
    for entry in entries:
        text = piece_of(entry.token).decode("utf-8", "replace")
        tokens.append(text)
        offsets.append(text_offset)
        text_offset += len(text)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [None if e.logprob is None and not e.top else
                             {piece_of(t).decode("utf-8", "replace"): lp for t, lp in e.top}
                             for e in entries],
            "text_offset": offsets}


def merge_completion_logprobs(parts: Sequence[CompletionLogprobs]) -> CompletionLogprobs | None:
    if not parts:
        return None
    return {"tokens": [item for part in parts for item in part["tokens"]],
            "token_logprobs": [item for part in parts for item in part["token_logprobs"]],
            "top_logprobs": [item for part in parts for item in part["top_logprobs"]],
            "text_offset": [item for part in parts for item in part["text_offset"]]}


# -- chat ----------------------------------------------------------------------------------------
def chat_message(content: str, tool_calls: Sequence[ToolCall] = (),
                 reasoning: str | None = None, legacy: bool = False) -> AssistantMessage:
    """``legacy``: the request offered ``functions``: its one call is ``function_call``."""
    message: AssistantMessage = {"role": "assistant",
                                 "content": None if tool_calls and not content else content,
                                 "refusal": None}
    if tool_calls and legacy:
        message["function_call"] = {"name": tool_calls[0].name, "arguments": tool_calls[0].arguments}
    elif tool_calls:
        message["tool_calls"] = [cast(ToolCallObject, call.to_openai()) for call in tool_calls]
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def chat_choice(index: int, message: AssistantMessage, finish_reason: FinishReason,
                logprobs: ChatLogprobs | None) -> ChatChoice:
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}


def chat_completion(envelope: Envelope, choices: list[ChatChoice], usage: Usage) -> ChatCompletion:
    return {"id": envelope.id, "object": "chat.completion", "created": envelope.created,
            "model": envelope.model, "system_fingerprint": envelope.system_fingerprint,
            "choices": choices, "usage": usage_body(usage)}


def chat_delta(event: StreamEvent, legacy: bool = False) -> ChatDelta:
    """The ``delta`` of one parsed stream event (``legacy``: calls as ``function_call``)."""
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text}
    if legacy:
        return {"function_call": ({"name": event.name, "arguments": ""} if isinstance(event, ToolCallStart)
                                  else {"arguments": event.text})}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


def chat_chunk(envelope: Envelope, index: int, delta: ChatDelta, finish_reason: FinishReason = None,
               logprobs: ChatLogprobs | None = None) -> dict[str, Any]:
    """One chunk of a chat stream (chunks are plain dicts: /openapi.json describes a stream
    as text)."""
    return {**envelope.base("chat.completion.chunk"),
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                         "logprobs": logprobs}]}


# -- text completions ------------------------------------------------------------------------
def completion_choice(index: int, text: str, finish_reason: FinishReason,
                      logprobs: CompletionLogprobs | None) -> CompletionChoice:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}


def completion(envelope: Envelope, choices: list[CompletionChoice], usage: Usage) -> Completion:
    return {"id": envelope.id, "object": "text_completion", "created": envelope.created,
            "model": envelope.model, "system_fingerprint": envelope.system_fingerprint,
            "choices": choices, "usage": usage_body(usage)}


def completion_chunk(envelope: Envelope, choice: CompletionChoice) -> dict[str, Any]:
    return {**envelope.base("text_completion"), "choices": [choice]}


# -- both ----------------------------------------------------------------------------------------
def usage_chunk(envelope: Envelope, object_name: str, usage: Usage) -> dict[str, Any]:
    return {**envelope.base(object_name), "choices": [], "usage": usage_body(usage)}
