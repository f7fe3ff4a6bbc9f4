"""OpenAI's Responses API: create a response, get or delete a stored one. Each route is
declared once, in ``ROUTES`` below.

A response is a chat completion underneath: the validated request becomes a chat request
without validating again (``protocol``; its refusals name the Responses fields), is prepared
(``completions.prepare``) and submitted exactly as /v1/chat/completions does, and a
ResponsesWriter turns the engine's events into Responses items and events. Stored
responses (``store``, on by default) keep their conversation for ``previous_response_id``.
"""
from __future__ import annotations

from typing import Any

from quart import Response, current_app, g
from quart.typing import ResponseReturnValue

from ..completions.generation import start
from ..completions.prepare import prepare_chat
from ..completions.shapes import Envelope
from ..completions.writers import respond
from ..errors import GENERATION_STATUSES, PREVIOUS_RESPONSE_NOT_FOUND, RESPONSE_NOT_FOUND
from ..http import json_response, parse_body
from ..leases import held_engine
from ..routing import Route
from .items import INPUT_ITEMS, chat_messages
from .protocol import ResponsesRequest
from .shapes import ResponseDeleted, ResponseObject, new_id
from .store import ResponseStore, StoredResponse
from .writer import ResponsesWriter

STORE_KEY = "RESPONSE_STORE"


def response_store() -> ResponseStore:
    """The app's store, made on first use (a test may put its own in the config first)."""
    store: ResponseStore | None = current_app.config.get(STORE_KEY)
    if store is None:
        store = current_app.config[STORE_KEY] = ResponseStore()
    return store


async def create_response() -> Response:
    body = await parse_body(ResponsesRequest)
    g.record.model = body.model
    store = response_store()
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise PREVIOUS_RESPONSE_NOT_FOUND.error(body.previous_response_id)
        history = previous.messages
    conversation = history + chat_messages(body.input)
    chat = body.chat_request(conversation)  # refusals name this request's fields

    def complete(response: dict[str, Any]) -> None:
        if body.store:  # the conversation so far, for a later previous_response_id
            output = chat_messages(INPUT_ITEMS.validate_python(response["output"]))
            store.put(response["id"], StoredResponse(response, conversation + output))

    async with held_engine(body.model) as engine:
        prepared = await prepare_chat(engine, chat)
        envelope = Envelope.new(new_id("resp"), body.model, engine)
        streams = await start(engine, prepared.prompts, chat, prepared.params, envelope.id)
    writer = ResponsesWriter(envelope.id, envelope.created, body.echo(), prepared.output, body.stream,
                             complete)
    return await respond(streams, writer, envelope, chat)


async def get_response(response_id: str) -> ResponseReturnValue:
    stored = response_store().get(response_id)
    if stored is None:
        raise RESPONSE_NOT_FOUND.error(response_id)
    return json_response(stored.response)


async def delete_response(response_id: str) -> ResponseReturnValue:
    if not response_store().delete(response_id):
        raise RESPONSE_NOT_FOUND.error(response_id)
    deleted: ResponseDeleted = {"id": response_id, "object": "response", "deleted": True}
    return json_response(deleted)


ROUTES = (
    Route("post", ("/v1/responses", "/responses"), create_response,
          "OpenAI's Responses API (stream or not; previous_response_id, store)", ResponsesRequest,
          ResponseObject, errors=GENERATION_STATUSES, stream=True),
    Route("get", ("/v1/responses/{response_id}", "/responses/{response_id}"), get_response,
          "A stored response", response=ResponseObject, errors=(404,)),
    Route("delete", ("/v1/responses/{response_id}", "/responses/{response_id}"), delete_response,
          "Delete a stored response", response=ResponseDeleted, errors=(404,)),
)
