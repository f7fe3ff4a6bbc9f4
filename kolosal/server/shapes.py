"""Every OpenAI response and stream-chunk shape, built in one place.

Chat completions, text completions and their chunks share an ``Envelope`` (id, created,
model, fingerprint); choices, deltas, logprobs and usage are built by the functions here,
so a field is added (or fixed) once for every endpoint and for streams and bodies alike.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import TokenLogprob, Usage
from ..toolcalls.types import ContentDelta, ReasoningDelta, StreamEvent, ToolCall, ToolCallStart

PieceOf = Callable[[int], bytes]


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


def usage_body(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


# -- logprobs ---------------------------------------------------------------------------------
def _token_entry(token: int, logprob: float | None, piece_of: PieceOf) -> dict[str, Any]:
    piece = piece_of(token)
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def chat_logprobs(entries: Sequence[TokenLogprob], piece_of: PieceOf) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one chunk)."""
    return {"content": [{**_token_entry(e.token, e.logprob, piece_of),
                         "top_logprobs": [_token_entry(t, lp, piece_of) for t, lp in e.top]}
                        for e in entries],
            "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob], piece_of: PieceOf,
                        text_offset: int = 0) -> dict[str, Any]:
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


def merge_completion_logprobs(parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    return {key: [item for part in parts for item in part[key]]
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


# -- chat ----------------------------------------------------------------------------------------
def chat_message(content: str, tool_calls: Sequence[ToolCall] = (),
                 reasoning: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if tool_calls and not content else content,
                               "refusal": None}
    if tool_calls:
        message["tool_calls"] = [call.to_openai() for call in tool_calls]
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


def chat_choice(index: int, message: dict[str, Any], finish_reason: str | None,
                logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}


def chat_completion(envelope: Envelope, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    return {**envelope.base("chat.completion"), "choices": choices, "usage": usage_body(usage)}


def chat_delta(event: StreamEvent) -> dict[str, Any]:
    """The ``delta`` of one parsed stream event."""
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


def chat_chunk(envelope: Envelope, index: int, delta: dict[str, Any], finish_reason: str | None = None,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**envelope.base("chat.completion.chunk"),
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                         "logprobs": logprobs}]}


# -- text completions ------------------------------------------------------------------------
def completion_choice(index: int, text: str, finish_reason: str | None,
                      logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}


def completion(envelope: Envelope, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    return {**envelope.base("text_completion"), "choices": choices, "usage": usage_body(usage)}


def completion_chunk(envelope: Envelope, choice: dict[str, Any]) -> dict[str, Any]:
    return {**envelope.base("text_completion"), "choices": [choice]}


# -- both ----------------------------------------------------------------------------------------
def usage_chunk(envelope: Envelope, object_name: str, usage: Usage) -> dict[str, Any]:
    return {**envelope.base(object_name), "choices": [], "usage": usage_body(usage)}
