"""POST /v1/embeddings (and /embeddings): OpenAI's embeddings API on an embedding engine."""
from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from quart import Blueprint, Response, g

from ..engine import EngineError, Usage
from ..engine.embedding import NotAnEmbeddingEngineError
from .errors import bad_request, from_engine_error
from .http import parse_body
from .protocol_embeddings import EmbeddingRequest
from .routes_openai import held_engine, log_prompt

blueprint = Blueprint("embeddings", __name__)


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[dict[str, Any]]:
    """OpenAI's data items. base64 is the raw little-endian float32 bytes, as OpenAI sends
    (the openai SDK asks for base64 by default and decodes it with numpy)."""
    if encoding_format == "base64":
        raw = np.ascontiguousarray(vectors, dtype="<f4")
        return [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
                for index, row in enumerate(raw)]
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return [{"object": "embedding", "index": index, "embedding": row} for index, row in enumerate(rows)]


@blueprint.post("/v1/embeddings")
@blueprint.post("/embeddings")
async def embeddings() -> Response:
    body = await parse_body(EmbeddingRequest)
    g.record.model = body.model
    async with held_engine(body.model) as engine:
        spec = engine.embedding
        if spec is None:  # before tokenizing what it cannot embed
            raise from_engine_error(NotAnEmbeddingEngineError(engine.engine_id))
        if body.dimensions is not None and body.dimensions != spec.dimensions:
            raise bad_request(f"dimensions: this model's embeddings have {spec.dimensions} dimensions "
                              "and are not shortened; omit dimensions", param="dimensions")
        inputs: list[list[int]] = []
        for index, item in enumerate(body.inputs()):
            if isinstance(item, str):
                if not item:
                    raise bad_request(f"input[{index}] is an empty string", param="input")
                log_prompt(item)
                # As llama-server: BOS/EOS as the model wants, control-token text parsed.
                inputs.append(await engine.tokenize(item, add_special=True, parse_special=True))
            else:
                inputs.append(item)
        try:
            vectors = await engine.embed(inputs)
        except EngineError as error:  # refusals (400), a full queue (503), a failed step (500)
            raise from_engine_error(error) from None
    prompt_tokens = sum(len(ids) for ids in inputs)
    g.record.usage = Usage(prompt_tokens, 0)
    payload = {"object": "list", "data": encode_vectors(vectors, body.encoding_format),
               "model": body.model,
               "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    content_type="application/json")
