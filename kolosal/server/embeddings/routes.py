"""OpenAI's embeddings API on an embedding engine (its route is declared in ``ROUTES``)."""
from __future__ import annotations

import orjson
from quart import Response, g

from ...engine import EngineError, Usage
from ...engine.embedding import NotAnEmbeddingEngineError
from ..caller import admit, tenancy
from ..errors import bad_request, from_engine_error
from ..http import parse_body
from ..leases import held_engine
from ..records import log_prompt
from ..routing import Route
from .protocol import EmbeddingRequest
from .shapes import Embeddings, embeddings_body


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
        prompt_tokens = sum(len(ids) for ids in inputs)
        ticket = admit(prompt_tokens)  # the key's limits: 429 when over one
        try:
            vectors = await engine.embed(inputs, tenancy())
        except EngineError as error:  # refusals (400), a full queue (503), a failed step (500)
            raise from_engine_error(error) from None
        finally:
            if ticket is not None:
                ticket.settle(prompt_tokens)
    g.record.usage = Usage(prompt_tokens, 0)
    payload = embeddings_body(vectors, body.encoding_format, body.model, prompt_tokens)
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    content_type="application/json")


ROUTES = (
    Route("post", ("/v1/embeddings", "/embeddings"), embeddings, "Embeddings of an embedding engine",
          EmbeddingRequest, Embeddings, errors=(404, 500)),
)
