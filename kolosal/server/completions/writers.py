"""Engine events -> OpenAI responses: one loop for streams, one for whole bodies, each
parameterised by a writer that knows its endpoint's shapes (chat or text completions).

A writer keeps each choice's state (text, parsed tool calls and reasoning, logprobs) and,
when streaming, turns every event into the chunks to send; the body at the end is built
from the same state, so a streamed response and a whole one always agree.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from quart import Response, g

from ...engine import ErrorEvent, FinishEvent, TokenEvent, TokenLogprob, Usage
from ...toolcalls.output import OutputFormat, OutputParser
from ...toolcalls.types import ContentDelta, StreamEvent, ToolCallStart, aggregate
from ..errors import APIError, from_engine_error
from ..http import json_response, sse_response
from ..observe import RequestRecord
from ..sse import DONE, ContentChunkEncoder, event
from . import shapes
from .generation import MultiStream, total_usage
from .protocol import SamplingFields
from .shapes import ChatLogprobs, CompletionLogprobs, Envelope, FinishReason, PieceOf

Chunk = dict[str, Any] | bytes


class Writer(Protocol):
    object_name: str  # of the stream's chunks
    end: bytes  # what closes a stream that ran to its end (``data: [DONE]``, or nothing)

    def opening(self) -> list[Chunk]: ...

    def on_token(self, index: int, item: TokenEvent) -> list[Chunk]: ...

    def on_finish(self, index: int, item: FinishEvent) -> list[Chunk]: ...

    def on_error(self, index: int, error: APIError) -> list[Chunk]: ...

    def body(self, usage: Usage) -> Mapping[str, Any]: ...


async def respond(streams: MultiStream, writer: Writer, envelope: Envelope, body: SamplingFields) -> Response:
    """An SSE stream when the request asked for one, else the whole body as JSON."""
    if body.stream:
        return sse_response(stream_response(streams, writer, envelope, body.include_usage(), g.record))
    return json_response(await whole_response(streams, writer, g.record))


async def stream_response(streams: MultiStream, writer: Writer, envelope: Envelope,
                          include_usage: bool, record: RequestRecord) -> AsyncIterator[bytes]:
    """SSE bytes for the whole response; errors after the start become an error event."""
    finishes: list[FinishEvent] = []
    status = 499  # unless the stream runs to its end: the client went away
    try:
        for chunk in writer.opening():
            yield _encode(chunk)
        async for index, item in streams.events():
            if isinstance(item, TokenEvent):
                chunks = writer.on_token(index, item)
            elif isinstance(item, FinishEvent):
                finishes.append(item)
                chunks = writer.on_finish(index, item)
            else:
                chunks = writer.on_error(index, from_engine_error(item.error))
            for chunk in chunks:
                yield _encode(chunk)
        if include_usage:
            yield event(shapes.usage_chunk(envelope, writer.object_name,
                                           total_usage(finishes, streams.n)))
        if writer.end:
            yield writer.end
        status = 200
    finally:
        await streams.close()
        record.usage = total_usage(finishes, streams.n)
        record.finish(status)


async def whole_response(streams: MultiStream, writer: Writer, record: RequestRecord) -> Mapping[str, Any]:
    """Run every choice to its end; the first failed choice fails the whole request
    (OpenAI returns no partial choices)."""
    finishes: list[FinishEvent] = []
    try:
        async for index, item in streams.events():
            if isinstance(item, TokenEvent):
                writer.on_token(index, item)
            elif isinstance(item, FinishEvent):
                finishes.append(item)
                writer.on_finish(index, item)
            elif isinstance(item, ErrorEvent):
                raise from_engine_error(item.error)
    finally:
        await streams.close()
    usage = total_usage(finishes, streams.n)
    record.usage = usage
    return writer.body(usage)


def _encode(chunk: Chunk) -> bytes:
    return chunk if isinstance(chunk, bytes) else event(chunk)


class _ChunkStream:
    """Chat and text completions end with ``data: [DONE]``; a failure after the start is an
    ``{"error": {...}}`` chunk."""

    end = DONE

    def on_error(self, index: int, error: APIError) -> list[Chunk]:
        return [event(error.body())]


# -- chat -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _ChatChoice:
    parser: OutputParser | None
    events: list[StreamEvent] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)  # text still held back
    finish_reason: FinishReason = None


class ChatWriter(_ChunkStream):
    object_name = "chat.completion.chunk"

    def __init__(self, envelope: Envelope, num_choices: int, output: OutputFormat,
                 piece_of: PieceOf, streaming: bool, logprobs: bool, legacy: bool = False) -> None:
        self.envelope = envelope
        self.legacy = legacy  # the request offered ``functions``: calls in the legacy shape
        self.piece_of = piece_of
        self.streaming = streaming
        self.logprobs = logprobs
        self.choices = [_ChatChoice(None if output.is_plain else OutputParser(output))
                        for _ in range(num_choices)]
        self._encoder = ContentChunkEncoder(envelope.base(self.object_name), chat=True)

    def opening(self) -> list[Chunk]:
        return [shapes.chat_chunk(self.envelope, index, {"role": "assistant", "content": ""})
                for index in range(len(self.choices))]

    def on_token(self, index: int, item: TokenEvent) -> list[Chunk]:
        choice = self.choices[index]
        if choice.parser is None and not item.logprobs:  # the hot path: plain text
            choice.events.append(ContentDelta(item.text))
            return [self._encoder.encode(index, item.text)] if self.streaming else []
        events: list[StreamEvent] = (choice.parser.feed(item.text) if choice.parser
                                     else [ContentDelta(item.text)])
        return self._record(index, choice, events, item.logprobs)

    def on_finish(self, index: int, item: FinishEvent) -> list[Chunk]:
        choice = self.choices[index]
        if choice.parser is None:
            events: list[StreamEvent] = [ContentDelta(item.text)] if item.text else []
        else:
            events = choice.parser.feed(item.text) + choice.parser.finish()
        chunks = self._record(index, choice, events, item.logprobs)
        called = any(isinstance(e, ToolCallStart) for e in choice.events)
        reason = item.finish_reason.value
        ended = choice.parser is not None and choice.parser.ended  # at a call (repeat or last)
        if called and (reason == "stop" or ended):
            reason = "function_call" if self.legacy else "tool_calls"
        choice.finish_reason = reason
        if not self.streaming:
            return []
        leftover = self._logprobs_body(choice.unsent_logprobs)
        choice.unsent_logprobs = []
        return [*chunks, shapes.chat_chunk(self.envelope, index, {}, choice.finish_reason, leftover)]

    def _record(self, index: int, choice: _ChatChoice, events: list[StreamEvent],
                logprobs: tuple[TokenLogprob, ...]) -> list[Chunk]:
        choice.events.extend(events)
        choice.logprobs.extend(logprobs)
        if not self.streaming:
            return []
        choice.unsent_logprobs.extend(logprobs)
        chunks: list[Chunk] = []
        for parsed in events:
            delta = shapes.chat_delta(parsed, self.legacy)
            chunks.append(shapes.chat_chunk(self.envelope, index, delta, None,
                                            self._logprobs_body(choice.unsent_logprobs)))
            choice.unsent_logprobs = []
        return chunks

    def _logprobs_body(self, entries: list[TokenLogprob]) -> ChatLogprobs | None:
        if not self.logprobs:
            return None
        return shapes.chat_logprobs(entries, self.piece_of)

    def body(self, usage: Usage) -> shapes.ChatCompletion:
        choices = []
        for index, choice in enumerate(self.choices):
            parsed = aggregate(choice.events)
            message = shapes.chat_message(parsed.content, parsed.tool_calls, parsed.reasoning_content,
                                          self.legacy)
            choices.append(shapes.chat_choice(index, message, choice.finish_reason,
                                              self._logprobs_body(choice.logprobs)))
        return shapes.chat_completion(self.envelope, choices, usage)


# -- text completions ------------------------------------------------------------------------------
@dataclass(slots=True)
class _TextChoice:
    echo: str
    parts: list[str] = field(default_factory=list)
    logprobs: list[CompletionLogprobs] = field(default_factory=list)
    offset: int = 0  # characters of this choice's text so far (for text_offset)
    finish_reason: FinishReason = None


class CompletionWriter(_ChunkStream):
    object_name = "text_completion"

    def __init__(self, envelope: Envelope, echoes: list[str], piece_of: PieceOf, streaming: bool,
                 logprobs: bool) -> None:
        self.envelope = envelope
        self.piece_of = piece_of
        self.streaming = streaming
        self.logprobs = logprobs
        self.choices = [_TextChoice(echo, offset=len(echo)) for echo in echoes]
        self._encoder = ContentChunkEncoder(envelope.base(self.object_name), chat=False)

    def opening(self) -> list[Chunk]:
        return [self._encoder.encode(index, choice.echo) for index, choice in enumerate(self.choices)]

    def on_token(self, index: int, item: TokenEvent) -> list[Chunk]:
        choice = self.choices[index]
        choice.parts.append(item.text)
        logprobs = self._logprobs(choice, item.logprobs)
        choice.offset += len(item.text)
        if not self.streaming:
            return []
        if logprobs is None:
            return [self._encoder.encode(index, item.text)]
        return [shapes.completion_chunk(self.envelope, shapes.completion_choice(
            index, item.text, None, logprobs))]

    def on_finish(self, index: int, item: FinishEvent) -> list[Chunk]:
        choice = self.choices[index]
        if item.prompt_logprobs and self.logprobs:  # echo: the prompt's tokens come first
            choice.logprobs.insert(0, shapes.completion_logprobs(item.prompt_logprobs, self.piece_of))
        choice.parts.append(item.text)
        logprobs = self._logprobs(choice, item.logprobs)
        choice.offset += len(item.text)
        choice.finish_reason = item.finish_reason.value
        if not self.streaming:
            return []
        if item.prompt_logprobs and logprobs is not None:
            logprobs = shapes.merge_completion_logprobs([choice.logprobs[0], logprobs])
        return [shapes.completion_chunk(self.envelope, shapes.completion_choice(
            index, item.text, choice.finish_reason, logprobs))]

    def _logprobs(self, choice: _TextChoice, entries: tuple[TokenLogprob, ...]) -> CompletionLogprobs | None:
        if not self.logprobs:
            return None
        part = shapes.completion_logprobs(entries, self.piece_of, choice.offset)
        choice.logprobs.append(part)
        return part

    def body(self, usage: Usage) -> shapes.Completion:
        choices = [shapes.completion_choice(
            index, choice.echo + "".join(choice.parts), choice.finish_reason,
            shapes.merge_completion_logprobs(choice.logprobs) if self.logprobs else None)
            for index, choice in enumerate(self.choices)]
        return shapes.completion(self.envelope, choices, usage)
