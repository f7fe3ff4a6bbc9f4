"""POST /v1/responses (OpenAI's Responses API), GET and DELETE /v1/responses/{id}, and the
aliases without /v1.

A response is a chat completion underneath: the request becomes a ChatCompletionRequest
(``protocol_responses``), is prepared and submitted exactly as /v1/chat/completions does,
and a ResponsesWriter turns the engine's events into Responses items and events. Stored
responses (``store``, on by default) keep their conversation for ``previous_response_id``.
"""
from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, g
from quart.typing import ResponseReturnValue

from .errors import APIError, from_validation_error
from .http import json_response, parse_body
from .protocol_response_items import INPUT_ITEMS, chat_messages
from .protocol_responses import ResponsesRequest
from .response_store import ResponseStore, StoredResponse
from .routes_openai import fingerprint, held_engine, prepare_chat, respond, start
from .shapes import Envelope
from .shapes_responses import new_id
from .writers_responses import ResponsesWriter

blueprint = Blueprint("responses", __name__)
STORE_KEY = "RESPONSE_STORE"
CHAT_PARAMS = {"messages": "input", "response_format": "text.format",
               "max_completion_tokens": "max_output_tokens"}  # chat field -> Responses field


@blueprint.record_once
def _create_store(state: Any) -> None:
    """One store per app (a test may pass its own before registering)."""
    state.app.config.setdefault(STORE_KEY, ResponseStore())


def response_store() -> ResponseStore:
    store: ResponseStore = current_app.config[STORE_KEY]
    return store


@blueprint.post("/v1/responses")
@blueprint.post("/responses")
async def create_response() -> Response:
    body = await parse_body(ResponsesRequest)
    g.record.model = body.model
    store = response_store()
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise APIError(400, f"Previous response with id '{body.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        history = previous.messages
    conversation = history + chat_messages(body.input)
    try:
        chat = body.chat_request(conversation)
    except ValidationError as error:
        raise from_validation_error(error) from None

    def complete(response: dict[str, Any]) -> None:
        if body.store:  # the conversation so far, for a later previous_response_id
            output = chat_messages(INPUT_ITEMS.validate_python(response["output"]))
            store.put(response["id"], StoredResponse(response, conversation + output))

    async with held_engine(body.model) as engine:
        try:
            prompt_ids, params, output = await prepare_chat(engine, chat)
            envelope = Envelope(new_id("resp"), int(time.time()), body.model, fingerprint(engine))
            streams = await start(engine, [prompt_ids], chat, params, envelope.id)
        except APIError as error:  # name the field as this request spelled it
            error.param = CHAT_PARAMS.get(error.param or "", error.param)
            raise
    writer = ResponsesWriter(envelope.id, envelope.created, body.echo(), output, body.stream, complete)
    return await respond(streams, writer, envelope, chat)


@blueprint.get("/v1/responses/<response_id>")
@blueprint.get("/responses/<response_id>")
async def get_response(response_id: str) -> ResponseReturnValue:
    stored = response_store().get(response_id)
    if stored is None:
        raise not_found(response_id)
    return json_response(stored.response)


@blueprint.delete("/v1/responses/<response_id>")
@blueprint.delete("/responses/<response_id>")
async def delete_response(response_id: str) -> ResponseReturnValue:
    if not response_store().delete(response_id):
        raise not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


def not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id",
                    code="response_not_found")
