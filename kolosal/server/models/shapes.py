"""Model objects and token lists: typed once (/openapi.json's schemas are generated from
them) and built here."""
from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from typing_extensions import NotRequired

from ...engine import EngineEntry
from ..json_schema import Schema

EngineKind = Annotated[str, Schema({"enum": ["generation", "embedding"]})]  # which endpoints it serves


class Model(TypedDict):
    """OpenAI's model object, plus what a client picking an engine needs once it has
    loaded: its kind, context length and pooling."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: NotRequired[EngineKind]
    context_length: NotRequired[int]
    pooling: NotRequired[str | None]


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[Model]


class TokenPiece(TypedDict):
    id: int
    piece: str | list[int]   # text, or its bytes when it is not valid UTF-8 alone


class Tokens(TypedDict):
    tokens: list[int] | list[TokenPiece]


class Text(TypedDict):
    content: str


def model_object(engine: EngineEntry) -> Model:
    body: Model = {"id": engine.engine_id, "object": "model", "created": engine.created,
                   "owned_by": "kolosal"}
    if engine.info is not None:
        body["kind"] = engine.info.kind
        body["context_length"] = engine.info.n_ctx
        body["pooling"] = engine.info.pooling
    return body


def piece_json(piece: bytes) -> str | list[int]:
    """A piece as text, or as its byte values when it is not valid UTF-8 (part of a
    character), as llama-server writes it."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)
