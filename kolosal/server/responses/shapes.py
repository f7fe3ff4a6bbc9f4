"""The Responses API's shapes (``POST /v1/responses``): the response object, its output
items (reasoning, message, function_call), usage, and the typed stream events, as the
openai SDK's ``openai.types.responses`` declares them. Bodies are typed once (TypedDicts,
plain dicts at run time; /openapi.json's schemas are generated from them); stream events
stay plain dicts. Both build from the same engine ``Usage`` as chat completions do."""
from __future__ import annotations

import secrets
from typing import Any, Literal, TypedDict

import orjson
from typing_extensions import NotRequired

from ...engine import Usage

ItemStatus = Literal["in_progress", "completed", "incomplete"]
Status = Literal["in_progress", "completed", "incomplete", "failed"]
ToolChoiceMode = Literal["none", "auto", "required"]


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputReasoningText(TypedDict):
    type: Literal["reasoning_text"]
    text: str


class OutputMessage(TypedDict):
    id: str
    type: Literal["message"]
    status: ItemStatus
    role: Literal["assistant"]
    content: list[OutputText]


class OutputReasoning(TypedDict):
    id: str
    type: Literal["reasoning"]
    status: ItemStatus
    summary: list[Any]
    content: list[OutputReasoningText]


class OutputFunctionCall(TypedDict):
    id: str
    type: Literal["function_call"]
    status: ItemStatus
    call_id: str
    name: str
    arguments: str


OutputItem = OutputMessage | OutputReasoning | OutputFunctionCall


class InputTokensDetails(TypedDict):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(TypedDict):
    code: str
    message: str


class IncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens"]


class ReasoningEcho(TypedDict):
    effort: None
    summary: None


class FormatEcho(TypedDict):
    type: Literal["text", "json_object", "json_schema"]
    name: NotRequired[str]
    schema: NotRequired[dict[str, Any] | None]
    strict: NotRequired[bool | None]
    description: NotRequired[str | None]


class TextEcho(TypedDict):
    format: FormatEcho
    verbosity: Literal["medium"]


class FunctionChoiceEcho(TypedDict):
    type: Literal["function"]
    name: str


class FunctionToolEcho(TypedDict):
    type: Literal["function"]
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class ResponseSettings(TypedDict):
    """The request's settings, as every response object repeats them."""

    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningEcho
    store: bool
    temperature: float
    text: TextEcho
    tool_choice: ToolChoiceMode | FunctionChoiceEcho
    tools: list[FunctionToolEcho]
    top_p: float
    truncation: Literal["disabled"]
    user: str | None
    background: Literal[False]
    service_tier: Literal["default"]
    top_logprobs: Literal[0]
    max_tool_calls: int | None


class ResponseObject(ResponseSettings):
    id: str
    object: Literal["response"]
    created_at: int
    status: Status
    completed_at: int | None
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    output: list[OutputItem]
    usage: ResponseUsage | None


class ResponseDeleted(TypedDict):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


def new_id(prefix: str) -> str:
    """``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``: OpenAI's prefixes, 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


# -- output items and their parts -------------------------------------------------------------------
def output_text(text: str) -> OutputText:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_text(text: str) -> OutputReasoningText:
    return {"type": "reasoning_text", "text": text}


def message_item(item_id: str, text: str | None, status: ItemStatus) -> OutputMessage:
    """An assistant message; ``text`` None while it has no content part yet."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [] if text is None else [output_text(text)]}


def reasoning_item(item_id: str, text: str | None, status: ItemStatus) -> OutputReasoning:
    """The model's reasoning (a ``<think>`` block) as ``content`` (no summary is written)."""
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": [] if text is None else [reasoning_text(text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: ItemStatus) -> OutputFunctionCall:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


# -- the response -----------------------------------------------------------------------------------
def usage_body(usage: Usage, reasoning_tokens: int = 0) -> ResponseUsage:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": usage.total_tokens}


def response_object(response_id: str, created_at: int, settings: ResponseSettings, status: Status,
                    output: list[OutputItem], usage: ResponseUsage | None = None,
                    completed_at: int | None = None,
                    error: ResponseError | None = None) -> ResponseObject:
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
