"""llama-server's POST /tokenize and /detokenize, and OpenAI's model retrieve
(GET /v1/models/{id}, also /models/{id})."""
from __future__ import annotations

from quart import Blueprint, Response, current_app

from ..engine import AsyncEngine, EngineError, EngineNotFoundError, EngineState
from .errors import APIError, from_engine_error
from .http import json_response, parse_body
from .protocol_embeddings import DetokenizeRequest, TokenizeRequest
from .routes_openai import held_engine, model_object

blueprint = Blueprint("tokenize", __name__)


def default_model() -> str:
    """The engine a request without ``model`` uses: the first ready engine in load order,
    else the first listed one (an unloaded engine is reloaded). llama-server serves one
    model, so its clients never name one."""
    entries = current_app.config["REGISTRY"].list()
    if not entries:
        raise APIError(404, "no engine is loaded; load one with POST /engines", param="model",
                       code="model_not_found")
    ready = [entry for entry in entries if entry.state == EngineState.READY]
    return str((ready or entries)[0].engine_id)


def piece_json(piece: bytes) -> str | list[int]:
    """A piece as text, or as its byte values when it is not valid UTF-8 (part of a
    character), as llama-server writes it."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


async def token_pieces(engine: AsyncEngine, tokens: list[int]) -> list[bytes]:
    try:
        return await engine.token_pieces(tokens)
    except EngineError as error:  # a token id outside the vocabulary: 400
        raise from_engine_error(error) from None


@blueprint.post("/tokenize")
async def tokenize() -> Response:
    body = await parse_body(TokenizeRequest)
    async with held_engine(body.model or default_model()) as engine:
        tokens = await engine.tokenize(body.content, add_special=body.add_special,
                                       parse_special=body.parse_special)
        if not body.with_pieces:
            return json_response({"tokens": tokens})
        pieces = await token_pieces(engine, tokens)
    return json_response({"tokens": [{"id": token, "piece": piece_json(piece)}
                                     for token, piece in zip(tokens, pieces, strict=True)]})


@blueprint.post("/detokenize")
async def detokenize() -> Response:
    body = await parse_body(DetokenizeRequest)
    async with held_engine(body.model or default_model()) as engine:
        pieces = await token_pieces(engine, body.tokens)
    return json_response({"content": b"".join(pieces).decode("utf-8", "replace")})


@blueprint.get("/v1/models/<path:model_id>")
@blueprint.get("/models/<path:model_id>")
async def retrieve_model(model_id: str) -> Response:
    try:
        entry = current_app.config["REGISTRY"].get(model_id)
    except EngineNotFoundError:
        raise APIError(404, f"The model '{model_id}' does not exist", param="model",
                       code="model_not_found") from None
    return json_response(model_object(entry))
