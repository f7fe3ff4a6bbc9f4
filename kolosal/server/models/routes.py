"""OpenAI's model list and model retrieve, and llama-server's tokenize and detokenize.
Each route is declared once, in ``ROUTES`` below."""
from __future__ import annotations

from quart import Response, current_app

from ...engine import AsyncEngine, EngineError, EngineNotFoundError
from ..caller import may_use
from ..errors import MODEL_NOT_FOUND, from_engine_error
from ..http import json_response, parse_body
from ..leases import default_model, held_engine
from ..routing import Route
from .protocol import DetokenizeRequest, TokenizeRequest
from .shapes import Model, ModelList, Text, TokenPiece, Tokens, model_object, piece_json


async def list_models() -> Response:
    engines = [entry for entry in current_app.config["REGISTRY"].list() if may_use(entry.engine_id)]
    models: ModelList = {"object": "list", "data": [model_object(engine) for engine in engines]}
    return json_response(models)


async def retrieve_model(model_id: str) -> Response:
    try:
        if not may_use(model_id):
            raise EngineNotFoundError(model_id)
        entry = current_app.config["REGISTRY"].get(model_id)
    except EngineNotFoundError:
        raise MODEL_NOT_FOUND.error(model_id) from None
    return json_response(model_object(entry))


async def token_pieces(engine: AsyncEngine, tokens: list[int]) -> list[bytes]:
    try:
        return await engine.token_pieces(tokens)
    except EngineError as error:  # a token id outside the vocabulary: 400
        raise from_engine_error(error) from None


async def tokenize() -> Response:
    body = await parse_body(TokenizeRequest)
    async with held_engine(body.model or default_model()) as engine:
        tokens = await engine.tokenize(body.content, add_special=body.add_special,
                                       parse_special=body.parse_special)
        if not body.with_pieces:
            return json_response(Tokens(tokens=tokens))
        pieces = await token_pieces(engine, tokens)
    with_pieces: list[TokenPiece] = [{"id": token, "piece": piece_json(piece)}
                                     for token, piece in zip(tokens, pieces, strict=True)]
    return json_response(Tokens(tokens=with_pieces))


async def detokenize() -> Response:
    body = await parse_body(DetokenizeRequest)
    async with held_engine(body.model or default_model()) as engine:
        pieces = await token_pieces(engine, body.tokens)
    return json_response(Text(content=b"".join(pieces).decode("utf-8", "replace")))


ROUTES = (
    Route("get", ("/v1/models", "/models"), list_models, "Engines in the OpenAI model-list shape",
          response=ModelList),
    Route("get", ("/v1/models/{model_id}", "/models/{model_id}"), retrieve_model, "One model",
          response=Model, errors=(404,), slashes=frozenset({"model_id"})),
    Route("post", ("/tokenize",), tokenize, "llama-server's tokenize", TokenizeRequest, Tokens,
          errors=(404, 500)),
    Route("post", ("/detokenize",), detokenize, "llama-server's detokenize", DetokenizeRequest, Text,
          errors=(404, 500)),
)
