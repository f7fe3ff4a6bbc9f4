"""The Responses API's shapes (``POST /v1/responses``): the response object, its output
items (reasoning, message, function_call), usage, and the typed stream events, as the
openai SDK's ``openai.types.responses`` declares them. Chat and text completion shapes are
in ``shapes``; both build from the same engine ``Usage``."""
from __future__ import annotations

import secrets
from typing import Any, Literal

import orjson

from ..engine import Usage

ItemStatus = Literal["in_progress", "completed", "incomplete"]
Status = Literal["in_progress", "completed", "incomplete", "failed"]


def new_id(prefix: str) -> str:
    """``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``: OpenAI's prefixes, 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


# -- output items and their parts -------------------------------------------------------------------
def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def message_item(item_id: str, text: str | None, status: ItemStatus) -> dict[str, Any]:
    """An assistant message; ``text`` None while it has no content part yet."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [output_text(text)]}


def reasoning_item(item_id: str, text: str | None, status: ItemStatus) -> dict[str, Any]:
    """The model's reasoning (a ``<think>`` block) as ``content`` (no summary is written)."""
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": [] if text is None else [reasoning_text(text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: ItemStatus) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


# -- the response -----------------------------------------------------------------------------------
def usage_body(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": usage.total_tokens}


def response_object(response_id: str, created_at: int, settings: dict[str, Any], status: Status,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    completed_at: int | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` are the request's echoed fields (``ResponsesRequest.echo``)."""
    return {"id": response_id, "object": "response", "created_at": created_at, "status": status,
            "completed_at": completed_at, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            **settings, "output": output, "usage": usage}


# -- stream events ----------------------------------------------------------------------------------
def event_bytes(payload: dict[str, Any]) -> bytes:
    """One server-sent event with an ``event:`` line naming its type, as OpenAI sends them."""
    kind: str = payload["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def item_event(kind: Literal["added", "done"], output_index: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": f"response.output_item.{kind}", "output_index": output_index, "item": item}


def part_event(kind: Literal["added", "done"], item_id: str, output_index: int,
               part: dict[str, Any]) -> dict[str, Any]:
    return {"type": f"response.content_part.{kind}", "item_id": item_id, "output_index": output_index,
            "content_index": 0, "part": part}


def text_delta(kind: Literal["output_text", "reasoning_text"], item_id: str, output_index: int,
               delta: str) -> dict[str, Any]:
    event = {"type": f"response.{kind}.delta", "item_id": item_id, "output_index": output_index,
             "content_index": 0, "delta": delta}
    if kind == "output_text":
        event["logprobs"] = []
    return event


def text_done(kind: Literal["output_text", "reasoning_text"], item_id: str, output_index: int,
              text: str) -> dict[str, Any]:
    event = {"type": f"response.{kind}.done", "item_id": item_id, "output_index": output_index,
             "content_index": 0, "text": text}
    if kind == "output_text":
        event["logprobs"] = []
    return event


def arguments_delta(item_id: str, output_index: int, delta: str) -> dict[str, Any]:
    return {"type": "response.function_call_arguments.delta", "item_id": item_id,
            "output_index": output_index, "delta": delta}


def arguments_done(item_id: str, output_index: int, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "response.function_call_arguments.done", "item_id": item_id,
            "output_index": output_index, "name": name, "arguments": arguments}


def error_event(message: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "param": param}
