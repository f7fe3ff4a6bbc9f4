"""Chat completions and text completions (with the aliases without /v1 that
llama-server's clients use). Each route is declared once, in ``ROUTES`` below."""
from __future__ import annotations

import secrets
from collections.abc import Callable

from quart import Response, g

from ..errors import GENERATION_STATUSES
from ..http import parse_body
from ..leases import held_engine
from ..routing import Route
from .generation import start
from .prepare import prepare_chat, prepare_completion
from .protocol import ChatCompletionRequest, CompletionRequest
from .shapes import ChatCompletion, Completion, Envelope
from .writers import ChatWriter, CompletionWriter, respond


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


async def chat_completions() -> Response:
    body = await parse_body(ChatCompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prepared = await prepare_chat(engine, body)
        envelope = Envelope.new(new_id("chatcmpl"), body.model, engine)
        streams = await start(engine, prepared.prompts, body, prepared.params, envelope.id)
    writer = ChatWriter(envelope, streams.num_choices, prepared.output, engine.token_piece, body.stream,
                        body.logprobs, body.legacy_functions)
    return await respond(streams, writer, envelope, body)


async def completions() -> Response:
    body = await parse_body(CompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prepared = await prepare_completion(engine, body)
        envelope = Envelope.new(new_id("cmpl"), body.model, engine)
        streams = await start(engine, prepared.prompts, body, prepared.params, envelope.id)
        # after start: the engine has checked every token id (token_piece aborts on a bad one)
        echoes = [text for prompt in body.prompts()
                  for text in [echo_text(engine.token_piece, prompt) if body.echo else ""] * body.n]
    writer = CompletionWriter(envelope, echoes, engine.token_piece, body.stream, body.logprobs is not None)
    return await respond(streams, writer, envelope, body)


def echo_text(token_piece: Callable[[int], bytes], prompt: str | list[int | str]) -> str:
    """The prompt as ``echo`` repeats it: its text, or its pieces (token ids' and texts)."""
    if isinstance(prompt, str):
        return prompt
    return b"".join(piece.encode() if isinstance(piece, str) else token_piece(piece)
                    for piece in prompt).decode("utf-8", "replace")


ROUTES = (
    Route("post", ("/v1/chat/completions", "/chat/completions"), chat_completions,
          "Chat completion (stream or not)", ChatCompletionRequest, ChatCompletion,
          errors=GENERATION_STATUSES, stream=True),
    Route("post", ("/v1/completions", "/completions"), completions,
          "Text completion; prompt string, list or token ids", CompletionRequest, Completion,
          errors=GENERATION_STATUSES, stream=True),
)
