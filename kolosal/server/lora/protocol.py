"""LoRA in request bodies, in llama-server's shapes: a request's ``lora`` and POST
/lora-adapters' body (``[{"id", "scale"}]``), and POST /engines' adapters
(``[{"path", "scale"}]``). Ids and scales are checked by the engine (kolosal/engine/lora.py):
an unknown id or a scale outside [0, 10] is a 400 naming ``lora``."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ...engine.lora import MAX_LORA_ADAPTERS, LoraSpec

LoraPairs = tuple[tuple[int, float], ...]


class LoraScale(BaseModel):
    """One adapter of a request's set: its id (GET /lora-adapters) and scale (0 = off)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: int
    scale: float


LoraScales = Annotated[list[LoraScale], Field(max_length=MAX_LORA_ADAPTERS)]


def lora_pairs(scales: list[LoraScale] | None) -> LoraPairs | None:
    """SamplingParams.lora: None (the engine's current scales) when the request names none."""
    return None if scales is None else tuple((entry.id, entry.scale) for entry in scales)


class LoraAdapterScales(RootModel[LoraScales]):
    """POST /lora-adapters: llama-server's bare list; the adapters it leaves out are off."""

    model_config = ConfigDict(strict=True)


class LoraFile(BaseModel):
    """One adapter of POST /engines: a GGUF LoRA file (under --models-dir when one is set)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(min_length=1)
    scale: float = 1.0

    def spec(self, path: str) -> LoraSpec:
        """The engine's form, with ``path`` as resolved by the caller."""
        return LoraSpec(path, self.scale)
