"""The body of POST /v1/embeddings: typed once (/openapi.json's schema is generated from
it) and written by orjson straight from numpy (``OPT_SERIALIZE_NUMPY``), with no
Python list of floats in between."""
from __future__ import annotations

import base64
from typing import Annotated, Literal, TypedDict

import numpy as np

from ..json_schema import Schema

# A float vector is a numpy row at run time (orjson writes it as a JSON array of numbers).
Vector = Annotated[np.ndarray, Schema({"type": "array", "items": {"type": "number"}})]


class Embedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: Vector | str   # base64: the raw little-endian float32 bytes


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class Embeddings(TypedDict):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[Embedding]:
    """OpenAI's data items. base64 is the raw little-endian float32 bytes, as OpenAI sends
    (the openai SDK asks for base64 by default and decodes it with numpy)."""
    if encoding_format == "base64":
        raw = np.ascontiguousarray(vectors, dtype="<f4")
        return [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
                for index, row in enumerate(raw)]
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return [{"object": "embedding", "index": index, "embedding": row} for index, row in enumerate(rows)]


def embeddings_body(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> Embeddings:
    return {"object": "list", "data": encode_vectors(vectors, encoding_format), "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
