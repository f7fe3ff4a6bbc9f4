"""Chat completions and text completions (with the aliases without /v1 that
llama-server's clients use). Each route is declared once, in ``ROUTES`` below."""
from __future__ import annotations

import secrets

from quart import Response, g

from ..errors import GENERATION_STATUSES, bad_request
from ..http import parse_body
from ..leases import held_engine
from ..records import log_prompt
from ..routing import Route
from .chat_prompt import prepare_chat
from .constraints import request_grammar
from .generation import start
from .protocol import ChatCompletionRequest, CompletionRequest
from .shapes import ChatCompletion, Completion, Envelope
from .writers import ChatWriter, CompletionWriter, respond


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


async def chat_completions() -> Response:
    body = await parse_body(ChatCompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prompt_ids, params, output = await prepare_chat(engine, body)
        envelope = Envelope.new(new_id("chatcmpl"), body.model, engine)
        streams = await start(engine, [prompt_ids], body, params, envelope.id)
    writer = ChatWriter(envelope, streams.num_choices, output, engine.token_piece, body.stream,
                        body.logprobs)
    return await respond(streams, writer, envelope, body)


async def completions() -> Response:
    body = await parse_body(CompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prompts: list[list[int]] = []
        echoes: list[str] = []
        for prompt in body.prompts():
            if isinstance(prompt, str):
                if not prompt:
                    raise bad_request("prompt must not be empty", param="prompt")
                log_prompt(prompt)
                prompts.append(await engine.tokenize(prompt, add_special=True, parse_special=False))
                echoes.extend([prompt] * body.n if body.echo else [""] * body.n)
            else:
                if any(not 0 <= token < engine.info.n_vocab for token in prompt):
                    # checked before libllama sees them: an id out of its vocabulary aborts
                    # the process (std::out_of_range in token_to_piece)
                    raise bad_request(f"prompt token ids must be in [0, {engine.info.n_vocab})",
                                      param="prompt")
                prompts.append(prompt)
                text = b"".join(engine.token_piece(t) for t in prompt).decode("utf-8", "replace")
                echoes.extend([text if body.echo else ""] * body.n)
        params = body.sampling_params(min(body.max_tokens, engine.info.n_ctx), engine.info.n_vocab,
                                      await request_grammar(body))
        envelope = Envelope.new(new_id("cmpl"), body.model, engine)
        streams = await start(engine, prompts, body, params, envelope.id)
    writer = CompletionWriter(envelope, echoes, engine.token_piece, body.stream, body.logprobs is not None)
    return await respond(streams, writer, envelope, body)


ROUTES = (
    Route("post", ("/v1/chat/completions", "/chat/completions"), chat_completions,
          "Chat completion (stream or not)", ChatCompletionRequest, ChatCompletion,
          errors=GENERATION_STATUSES, stream=True),
    Route("post", ("/v1/completions", "/completions"), completions,
          "Text completion; prompt string, list or token ids", CompletionRequest, Completion,
          errors=GENERATION_STATUSES, stream=True),
)
