"""Engine events -> a Responses API response (``ResponsesWriter``, a chat ``Writer``).

The generation is parsed as chat output is (reasoning block, content, tool calls in the
model family's format); each run of one kind becomes an output item — ``reasoning``,
``message`` or ``function_call`` — opened when its first text arrives and closed when
another kind starts or the generation ends. Streaming sends each step as OpenAI's typed
events (item added, content part added, deltas, text done, part done, item done); the
final response object is built from the same items, so streamed and whole responses agree.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from ...engine import FinishEvent, FinishReason, TokenEvent, Usage
from ...toolcalls.output import OutputFormat, OutputParser
from ...toolcalls.types import ContentDelta, ReasoningDelta, StreamEvent, ToolCallStart
from ..completions.writers import Chunk
from ..errors import APIError
from . import shapes
from .shapes import ItemStatus, OutputItem, OutputReasoningText, OutputText, ResponseError, ResponseSettings

ItemKind = Literal["reasoning", "message", "function_call"]
PREFIXES: dict[ItemKind, str] = {"reasoning": "rs", "message": "msg", "function_call": "fc"}


@dataclass(slots=True, eq=False)  # items are compared by identity
class _Item:
    kind: ItemKind
    id: str
    text: str = ""  # the reasoning, the message's text, or the call's arguments
    call_id: str = ""
    name: str = ""
    status: ItemStatus = "in_progress"

    def shape(self, opening: bool = False) -> OutputItem:
        """The item as output lists it (``opening``: as ``output_item.added`` shows it)."""
        text = None if opening else self.text
        if self.kind == "message":
            return shapes.message_item(self.id, text, self.status)
        if self.kind == "reasoning":
            return shapes.reasoning_item(self.id, text, self.status)
        return shapes.function_call_item(self.id, self.call_id, self.name, text or "", self.status)

    def part(self) -> OutputText | OutputReasoningText:
        return (shapes.output_text(self.text) if self.kind == "message"
                else shapes.reasoning_text(self.text))


class ResponsesWriter:
    object_name = "response"
    end = b""  # a Responses stream ends with its response.completed (or .incomplete) event

    def __init__(self, response_id: str, created_at: int, settings: ResponseSettings,
                 output: OutputFormat, streaming: bool,
                 on_complete: Callable[[dict[str, Any]], None]) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.settings = settings
        self.streaming = streaming
        self.on_complete = on_complete
        self.response: dict[str, Any] | None = None
        self._parser = None if output.is_plain else OutputParser(output)
        self._items: list[_Item] = []
        self._calls: list[_Item] = []  # by the parser's call index
        self._sequence = 0
        self._out: list[Chunk] = []
        self._reasoned_tokens = 0  # tokens released up to the last reasoning text

    # -- Writer -----------------------------------------------------------------------------------
    def opening(self) -> list[Chunk]:
        snapshot = self._response("in_progress")
        self._emit({"type": "response.created", "response": snapshot})
        self._emit({"type": "response.in_progress", "response": snapshot})
        return self._take()

    def on_token(self, index: int, item: TokenEvent) -> list[Chunk]:
        events: list[StreamEvent] = (self._parser.feed(item.text) if self._parser
                                     else [ContentDelta(item.text)])
        self._apply(events, item.num_tokens)
        return self._take()

    def on_finish(self, index: int, item: FinishEvent) -> list[Chunk]:
        if self._parser is None:
            events: list[StreamEvent] = [ContentDelta(item.text)]
        else:
            events = self._parser.feed(item.text) + self._parser.finish()
        self._apply(events, item.usage.completion_tokens)
        if not self._items:  # nothing was generated: still one (empty) message
            self._open("message")
        ended = self._parser is not None and self._parser.ended  # at a call: the answer is whole
        incomplete = item.finish_reason is FinishReason.LENGTH and not ended
        self._close("incomplete" if incomplete else "completed")
        status: shapes.Status = "incomplete" if incomplete else "completed"
        self.response = self._response(status, item.usage, completed_at=None if incomplete
                                       else int(time.time()))
        self.on_complete(self.response)
        self._emit({"type": f"response.{status}", "response": self.response})
        return self._take()

    def on_error(self, index: int, error: APIError) -> list[Chunk]:
        self._emit(shapes.error_event(error.message, error.code or error.type, error.param))
        failed = self._response("failed", error={
            "code": "server_error" if error.status >= 500 else "invalid_prompt",
            "message": error.message})
        self._emit({"type": "response.failed", "response": failed})
        return self._take()

    def body(self, usage: Usage) -> dict[str, Any]:
        assert self.response is not None, "body() comes after the finish"
        return self.response

    # -- items ------------------------------------------------------------------------------------
    def _apply(self, events: list[StreamEvent], num_tokens: int) -> None:
        for event in events:
            if isinstance(event, ToolCallStart):
                call = self._open("function_call", call_id=event.id, name=event.name)
                self._calls.append(call)
                continue
            if not event.text:
                continue
            if isinstance(event, ContentDelta):
                item = self._current("message")
                self._emit_if_streaming(shapes.text_delta, "output_text", item.id,
                                        len(self._items) - 1, event.text)
            elif isinstance(event, ReasoningDelta):
                item = self._current("reasoning")
                self._reasoned_tokens = num_tokens
                self._emit_if_streaming(shapes.text_delta, "reasoning_text", item.id,
                                        len(self._items) - 1, event.text)
            else:
                item = self._calls[event.index]
                self._emit_if_streaming(shapes.arguments_delta, item.id, self._items.index(item),
                                        event.text)
            item.text += event.text

    def _current(self, kind: ItemKind) -> _Item:
        last = self._items[-1] if self._items else None
        if last is not None and last.kind == kind and last.status == "in_progress":
            return last
        return self._open(kind)

    def _open(self, kind: ItemKind, call_id: str = "", name: str = "") -> _Item:
        self._close("completed")
        item = _Item(kind, shapes.new_id(PREFIXES[kind]), call_id=call_id, name=name)
        self._items.append(item)
        index = len(self._items) - 1
        self._emit_if_streaming(shapes.item_event, "added", index, item.shape(opening=True))
        if kind != "function_call":
            self._emit_if_streaming(shapes.part_event, "added", item.id, index, item.part())
        return item

    def _close(self, status: ItemStatus) -> None:
        item = self._items[-1] if self._items else None
        if item is None or item.status != "in_progress":
            return
        item.status = status
        index = len(self._items) - 1
        if item.kind == "function_call":
            self._emit_if_streaming(shapes.arguments_done, item.id, index, item.name, item.text)
        else:
            kind: Literal["output_text", "reasoning_text"] = (
                "output_text" if item.kind == "message" else "reasoning_text")
            self._emit_if_streaming(shapes.text_done, kind, item.id, index, item.text)
            self._emit_if_streaming(shapes.part_event, "done", item.id, index, item.part())
        self._emit_if_streaming(shapes.item_event, "done", index, item.shape())

    # -- the response and its events --------------------------------------------------------------
    def _response(self, status: shapes.Status, usage: Usage | None = None,
                  completed_at: int | None = None, error: ResponseError | None = None) -> dict[str, Any]:
        usage_body = None if usage is None else shapes.usage_body(usage, self._reasoning_tokens(usage))
        response = shapes.response_object(self.response_id, self.created_at, self.settings, status,
                                          [item.shape() for item in self._items], usage_body,
                                          completed_at, error)
        return cast(dict[str, Any], response)  # from here on a plain dict: events, store, body

    def _reasoning_tokens(self, usage: Usage) -> int:
        """Tokens up to the last reasoning text (all of them when the block never closed)."""
        if not any(item.kind == "reasoning" for item in self._items):
            return 0
        if self._items[-1].kind == "reasoning":
            return usage.completion_tokens
        return min(self._reasoned_tokens, usage.completion_tokens)

    def _emit_if_streaming(self, build: Callable[..., dict[str, Any]], *args: Any) -> None:
        if self.streaming:  # a whole response needs no events: do not build them
            self._emit(build(*args))

    def _emit(self, payload: dict[str, Any]) -> None:
        if not self.streaming:
            return
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        self._out.append(shapes.event_bytes(payload))

    def _take(self) -> list[Chunk]:
        out, self._out = self._out, []
        return out
