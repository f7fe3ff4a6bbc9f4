"""llama-server's GET and POST /lora-adapters: an engine's adapters and their default
scales. The engine is ``?model=ID``, else the default one (as llama-server's endpoints that
name no model). Each route is declared once, in ``ROUTES`` below."""
from __future__ import annotations

from quart import Response, current_app, request

from ...engine import EngineError, EngineNotFoundError
from ..errors import MODEL_NOT_FOUND, from_engine_error
from ..http import json_response, parse_body
from ..leases import default_model, held_engine
from ..routing import Route
from .protocol import LoraAdapterScales
from .shapes import LoraAdapter, LoraApplied, lora_adapters


def requested_model() -> str:
    return request.args.get("model") or default_model()


async def list_lora_adapters() -> Response:
    model = requested_model()
    try:
        entry = current_app.config["REGISTRY"].get(model)
    except EngineNotFoundError:
        raise MODEL_NOT_FOUND.error(model) from None
    return json_response(lora_adapters(entry))


async def set_lora_adapters() -> Response:
    """New default scales for the requests that name no ``lora`` from now on; the adapters
    the body leaves out are off (llama-server's rule)."""
    body = await parse_body(LoraAdapterScales)
    async with held_engine(requested_model()) as engine:
        try:
            engine.set_lora_scales([(entry.id, entry.scale) for entry in body.root])
        except EngineError as error:  # an unknown id or a bad scale: 400 naming lora
            raise from_engine_error(error) from None
    return json_response(LoraApplied(success=True))


ROUTES = (
    Route("get", ("/lora-adapters",), list_lora_adapters, "llama-server's LoRA adapters of an "
          "engine (?model=, default: the default engine), with their current scales",
          response=list[LoraAdapter], errors=(404,), query=("model",)),
    Route("post", ("/lora-adapters",), set_lora_adapters, "llama-server's LoRA scales: the "
          "engine's defaults for requests without lora (those left out: 0)", LoraAdapterScales,
          LoraApplied, errors=(404, 500), admin=True, query=("model",)),
)
