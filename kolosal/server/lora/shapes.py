"""GET and POST /lora-adapters answers (llama-server's shapes), typed once."""
from __future__ import annotations

from typing import Literal, TypedDict

from ...engine import EngineEntry


class LoraAdapter(TypedDict):
    id: int         # its position in the engine's list: what a request's ``lora`` names
    path: str
    scale: float    # the engine's current default scale (0 = off)


class LoraApplied(TypedDict):
    success: Literal[True]


def lora_adapters(entry: EngineEntry) -> list[LoraAdapter]:
    """An engine's adapters with their current scales (the scales it loads with when it is
    not loaded: an engine that unloads and reloads starts from those again)."""
    live = entry.engine
    if live is not None and entry.config.lora:
        return [{"id": int(item["id"]), "path": str(item["path"]), "scale": float(item["scale"])}
                for item in live.lora_adapters()]
    return [{"id": index, "path": spec.path, "scale": spec.scale}
            for index, spec in enumerate(entry.config.lora)]
