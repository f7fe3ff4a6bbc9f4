"""POST /v1/chat/completions, POST /v1/completions, GET /v1/models."""
from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, current_app, g

from .. import __version__
from ..chat_template import ChatTemplate, ChatTemplateError
from ..engine import AsyncEngine, EngineNotFoundError, ErrorEvent, FinishEvent, TokenEvent, Usage
from .errors import bad_request, from_engine_error, model_not_found
from .generation import MultiStream, total_usage
from .http import json_response, parse_body
from .observe import RequestRecord
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from .sse import DONE, ContentChunkEncoder, event

blueprint = Blueprint("openai", __name__)


def usage_body(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


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


def context_size(engine: AsyncEngine) -> int:
    assert engine.info is not None  # held_engine() yields loaded engines only
    return engine.info.n_ctx


def log_prompt(text: str) -> None:
    """Prompts reach the access log only when the operator asked (--log-prompts)."""
    if current_app.config["SETTINGS"].log_prompts:
        g.record.prompt = text if g.record.prompt is None else f"{g.record.prompt}\n{text}"


async def tokenize_chat(engine: AsyncEngine, body: ChatCompletionRequest) -> list[int]:
    info = engine.info
    assert info is not None
    template = ChatTemplate.for_model(info.chat_template, info.architecture, info.bos_token,
                                      info.eos_token)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    try:
        prompt = template.render(messages)
    except ChatTemplateError as error:
        raise bad_request(str(error), param="messages") from None
    log_prompt(prompt)
    # Templates usually write the BOS text themselves: never add a second BOS.
    add_special = not (info.bos_token and prompt.startswith(info.bos_token))
    return await engine.tokenize(prompt, add_special=add_special, parse_special=True)


async def start(engine: AsyncEngine, prompts: list[list[int]], body: SamplingFields,
                max_tokens: int, prefix: str) -> tuple[MultiStream, str]:
    request_id = f"{prefix}-{secrets.token_urlsafe(18)}"
    try:
        params = body.sampling_params(max_tokens, engine.info.n_vocab if engine.info else 0)
        for ids in prompts:
            engine.check_prompt(ids, params)
        streams = MultiStream(engine, prompts, params, request_id, body.timeout)
        await streams.start()
    except Exception as error:
        raise from_engine_error(error) from error
    g.record.token()  # every prompt has produced its first event
    return streams, request_id


async def collect_choices(streams: MultiStream) -> list[Any]:
    """Run every prompt of a non-streaming request to its end; the first failed prompt fails
    the whole request (OpenAI returns no partial choices)."""
    try:
        choices = await streams.collect()
    finally:
        await streams.close()
    for choice in choices:
        if choice.error is not None:
            raise from_engine_error(choice.error.error)
    return choices


@blueprint.post("/v1/chat/completions")
async def chat_completions() -> Response:
    body = await parse_body(ChatCompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prompt_ids = await tokenize_chat(engine, body)
        streams, request_id = await start(engine, [prompt_ids], body,
                                          body.resolved_max_tokens(context_size(engine)), "chatcmpl")
    envelope = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.model, "system_fingerprint": fingerprint(engine)}
    if body.stream:
        return sse_response(stream_chat(streams, envelope, body.include_usage(), g.record))
    choices = await collect_choices(streams)
    finish = choices[0].finish
    assert finish is not None
    g.record.usage = finish.usage
    return json_response({
        **envelope, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": choices[0].text},
                     "finish_reason": finish.finish_reason.value, "logprobs": None}],
        "usage": usage_body(finish.usage)})


async def stream_chat(streams: MultiStream, envelope: dict[str, Any], include_usage: bool,
                      record: RequestRecord) -> AsyncIterator[bytes]:
    encoder = ContentChunkEncoder(envelope, chat=True)
    status = 499  # unless the stream runs to its end: the client went away
    try:
        yield event({**envelope, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None, "logprobs": None}]})
        async for _, item in streams.events():
            if isinstance(item, TokenEvent):
                yield encoder.encode(0, item.text)
            elif isinstance(item, FinishEvent):
                record.usage = item.usage
                if item.text:
                    yield encoder.encode(0, item.text)
                yield event({**envelope, "choices": [{"index": 0, "delta": {"content": ""},
                                                      "finish_reason": item.finish_reason.value,
                                                      "logprobs": None}]})
                if include_usage:
                    yield event({**envelope, "choices": [], "usage": usage_body(item.usage)})
            else:
                yield event(from_engine_error(item.error).body())
        yield DONE
        status = 200
    finally:
        await streams.close()
        record.finish(status)


@blueprint.post("/v1/completions")
async def completions() -> Response:
    body = await parse_body(CompletionRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        prompts: list[list[int]] = []
        for prompt in body.prompts():
            if isinstance(prompt, str):
                if not prompt:
                    raise bad_request("prompt must not be empty", param="prompt")
                log_prompt(prompt)
                prompts.append(await engine.tokenize(prompt, add_special=True, parse_special=False))
            else:
                prompts.append(prompt)
        streams, request_id = await start(engine, prompts, body,
                                          min(body.max_tokens, context_size(engine)), "cmpl")
    envelope = {"id": request_id, "object": "text_completion", "created": int(time.time()),
                "model": body.model, "system_fingerprint": fingerprint(engine)}
    if body.stream:
        return sse_response(stream_completion(streams, envelope, body.include_usage(), g.record))
    choices = await collect_choices(streams)
    finishes = [c.finish for c in choices if c.finish is not None]
    g.record.usage = total_usage(finishes)
    return json_response({
        **envelope,
        "choices": [{"index": c.index, "text": c.text, "logprobs": None,
                     "finish_reason": c.finish.finish_reason.value if c.finish else None}
                    for c in choices],
        "usage": usage_body(total_usage(finishes))})


async def stream_completion(streams: MultiStream, envelope: dict[str, Any], include_usage: bool,
                            record: RequestRecord) -> AsyncIterator[bytes]:
    encoder = ContentChunkEncoder(envelope, chat=False)
    finishes: list[FinishEvent] = []
    status = 499
    try:
        for index in range(streams.num_choices):
            yield encoder.encode(index, "")
        async for index, item in streams.events():
            if isinstance(item, TokenEvent):
                yield encoder.encode(index, item.text)
            elif isinstance(item, FinishEvent):
                finishes.append(item)
                yield event({**envelope, "choices": [{"index": index, "text": item.text,
                                                      "finish_reason": item.finish_reason.value,
                                                      "logprobs": None}]})
            elif isinstance(item, ErrorEvent):
                yield event(from_engine_error(item.error).body())
        if include_usage:
            yield event({**envelope, "choices": [], "usage": usage_body(total_usage(finishes))})
        yield DONE
        status = 200
    finally:
        await streams.close()
        record.usage = total_usage(finishes)
        record.finish(status)


def sse_response(body: AsyncIterator[bytes]) -> Response:
    response = Response(body, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    response.timeout = None  # a long generation is not a timeout
    return response


@blueprint.get("/v1/models")
async def list_models() -> Response:
    engines = current_app.config["REGISTRY"].list()
    return json_response({"object": "list", "data": [
        {"id": engine.engine_id, "object": "model", "created": engine.created, "owned_by": "kolosal"}
        for engine in engines]})
