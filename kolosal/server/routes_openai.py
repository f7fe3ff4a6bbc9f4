"""POST /v1/chat/completions, POST /v1/completions, GET /v1/models (and the aliases
without /v1 that llama-server's clients use)."""
from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from quart import Blueprint, Response, current_app, g

from .. import __version__
from ..chat_template import ChatTemplate, ChatTemplateError
from ..engine import AsyncEngine, EngineEntry, EngineNotFoundError, SamplingParams
from ..engine.errors import InvalidGrammarError
from ..toolcalls.output import OutputFormat
from .constraints import OutputShape, grammar_param, request_grammar
from .errors import bad_request, from_engine_error, model_not_found
from .generation import MultiStream
from .http import json_response, parse_body
from .protocol import ChatCompletionRequest, CompletionRequest, NamedToolChoice, SamplingFields
from .shapes import Envelope
from .writers import ChatWriter, CompletionWriter, Writer, stream_response, whole_response

blueprint = Blueprint("openai", __name__)


def fingerprint(engine: AsyncEngine) -> str:
    digest = hashlib.sha256(f"{__version__}:{engine.config.model_path}".encode()).hexdigest()
    return "fp_" + digest[:10]


@contextlib.asynccontextmanager
async def held_engine(model: str) -> AsyncIterator[AsyncEngine]:
    """The request's engine, loaded (an idle-unloaded one is reloaded transparently) and
    held until the block ends: it cannot be unloaded while the request tokenizes and
    submits. Its streams hold it themselves after that."""
    async with contextlib.AsyncExitStack() as stack:
        try:  # only the lease's own failures map here, not the block's
            engine = await stack.enter_async_context(current_app.config["REGISTRY"].lease(model))
        except EngineNotFoundError:
            raise model_not_found(model) from None
        except Exception as error:
            raise from_engine_error(error) from None
        yield engine


def log_prompt(text: str) -> None:
    """Prompts reach the access log only when the operator asked (--log-prompts)."""
    if current_app.config["SETTINGS"].log_prompts:
        g.record.prompt = text if g.record.prompt is None else f"{g.record.prompt}\n{text}"


def new_envelope(prefix: str, body: SamplingFields, engine: AsyncEngine) -> Envelope:
    return Envelope(f"{prefix}-{secrets.token_urlsafe(18)}", int(time.time()), body.model,
                    fingerprint(engine))


async def start(engine: AsyncEngine, prompts: list[list[int]], body: SamplingFields,
                params: SamplingParams, request_id: str) -> MultiStream:
    """Submit every prompt (n choices each); refusals raise here, before any response."""
    try:
        for ids in prompts:
            engine.check_prompt(ids, params)
        streams = MultiStream(engine, prompts, params, request_id, body.timeout, body.n)
        await streams.start()
    except InvalidGrammarError as error:  # compiled against the vocabulary: name the field
        named = InvalidGrammarError(str(error), error.param or grammar_param(body))
        raise from_engine_error(named) from error
    except Exception as error:
        raise from_engine_error(error) from error
    g.record.token()  # every prompt has produced its first event
    return streams


async def respond(streams: MultiStream, writer: Writer, envelope: Envelope, body: SamplingFields) -> Response:
    if body.stream:
        return sse_response(stream_response(streams, writer, envelope, body.include_usage(), g.record))
    return json_response(await whole_response(streams, writer, g.record))


# -- chat -------------------------------------------------------------------------------------------
@blueprint.post("/v1/chat/completions")
@blueprint.post("/chat/completions")
async def chat_completions() -> Response:
    body = await parse_body(ChatCompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prompt_ids, params, output = await prepare_chat(engine, body)
        envelope = new_envelope("chatcmpl", body, engine)
        streams = await start(engine, [prompt_ids], body, params, envelope.id)
    writer = ChatWriter(envelope, streams.num_choices, output, engine.token_piece, body.stream,
                        body.logprobs)
    return await respond(streams, writer, envelope, body)


async def prepare_chat(engine: AsyncEngine, body: ChatCompletionRequest
                       ) -> tuple[list[int], SamplingParams, OutputFormat]:
    """Everything a chat generation needs before it is submitted: the rendered prompt's
    tokens, the sampling parameters (with the grammar of response_format or enforced tool
    calls) and what the output may hold (shared by /v1/chat/completions and /v1/responses)."""
    template = ChatTemplate.for_model(engine.info.chat_template, engine.info.architecture,
                                      engine.info.bos_token, engine.info.eos_token)
    prompt, prompt_ids, output = await tokenize_chat(engine, template, body)
    special = engine.special_tokens(output.markers)
    shape = OutputShape(template.tool_family, template.reasoning_mode(prompt), special)
    grammar = await request_grammar(body, shape)
    params = replace(body.sampling_params(body.resolved_max_tokens(engine.info.n_ctx),
                                          engine.info.n_vocab, grammar),
                     special_as_text=bool(special))
    return prompt_ids, params, output


async def tokenize_chat(engine: AsyncEngine, template: ChatTemplate,
                        body: ChatCompletionRequest) -> tuple[str, list[int], OutputFormat]:
    """The prompt, its tokens, and what the output may hold besides content (tool calls in
    the model family's format, a reasoning block)."""
    tools = [tool.model_dump() for tool in body.active_tools()]
    messages = [message.template_message() for message in body.messages]
    try:
        prompt = template.render(messages, tools=tools or None,
                                 parallel_tool_calls=body.parallel_tool_calls,
                                 extra=body.template_variables())
    except ChatTemplateError as error:
        raise bad_request(str(error), param="messages") from None
    log_prompt(prompt)
    choice = body.tool_choice
    output = template.output_format(prompt, tools, choice.model_dump() if isinstance(choice, NamedToolChoice)
                                    else choice or "auto", reasoning_inline=body.reasoning_format == "none")
    # Templates usually write the BOS text themselves: never add a second BOS.
    info = engine.info
    add_special = not (info.bos_token and prompt.startswith(info.bos_token))
    return prompt, await engine.tokenize(prompt, add_special=add_special, parse_special=True), output


# -- text completions -----------------------------------------------------------------------------
@blueprint.post("/v1/completions")
@blueprint.post("/completions")
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
        envelope = new_envelope("cmpl", body, engine)
        streams = await start(engine, prompts, body, params, envelope.id)
    writer = CompletionWriter(envelope, echoes, engine.token_piece, body.stream, body.logprobs is not None)
    return await respond(streams, writer, envelope, body)


def sse_response(body: AsyncIterator[bytes]) -> Response:
    response = Response(body, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    response.timeout = None  # a long generation is not a timeout
    return response


# -- models -----------------------------------------------------------------------------------------
@blueprint.get("/v1/models")
@blueprint.get("/models")
async def list_models() -> Response:
    engines = current_app.config["REGISTRY"].list()
    return json_response({"object": "list", "data": [model_object(engine) for engine in engines]})


def model_object(engine: EngineEntry) -> dict[str, Any]:
    """OpenAI's model object, plus what a client picking an engine needs: its kind
    ("generation" or "embedding"), context length and pooling, once it has loaded."""
    body: dict[str, Any] = {"id": engine.engine_id, "object": "model", "created": engine.created,
                            "owned_by": "kolosal"}
    if engine.info is not None:
        body.update(kind=engine.info.kind, context_length=engine.info.n_ctx, pooling=engine.info.pooling)
    return body
