"""LoRA adapters as the engine sees them, as plain values: the engine's adapters
(``LoraSpec``: a file and its default scale; an adapter's id is its position, as in
llama-server) and a request's adapter set.

An adapter set is the tuple of (id, scale) of the adapters a sequence runs with, scale
nonzero, sorted by id: ``()`` is the base model. It is resolved once, when a request is
submitted (``LoraTable.resolve``), so changing the engine's scales affects only requests
submitted afterwards and the engine thread never reads them. A request that names adapters
(``SamplingParams.lora``) gets exactly those: the ones it does not name are off, as in
llama-server's per-request ``lora`` and ``POST /lora-adapters``.

Scales are in [0, MAX_LORA_SCALE]: 0 is off; a negative, non-finite or larger scale is
refused (a 400 naming ``lora``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError

MAX_LORA_ADAPTERS = 32
MAX_LORA_SCALE = 10.0
AdapterSet = tuple[tuple[int, float], ...]   # (id, scale), scale nonzero, sorted by id
BASE_MODEL: AdapterSet = ()


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """One adapter an engine loads with its model, and its default scale."""

    path: str
    scale: float = 1.0


def check_scale(scale: object) -> float:
    """``scale`` as a float, or ValueError saying what a scale may be."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"a LoRA scale must be a number, got {scale!r}")
    value = float(scale)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_LORA_SCALE:
        raise ValueError(f"a LoRA scale must be in [0, {MAX_LORA_SCALE:g}] (0 = off), got {scale!r}")
    return value


def lora_spec(item: object) -> LoraSpec:
    """One adapter from its config forms: a LoraSpec, ``{"path": ..., "scale": ...}`` or a
    path. ValueError when it is none of them."""
    if isinstance(item, Mapping):
        unknown = set(item) - {"path", "scale"}
        if unknown:
            names = ", ".join(sorted(map(str, unknown)))
            raise ValueError(f"a LoRA adapter has a path and a scale, not {names}")
        item = LoraSpec(item.get("path"), item.get("scale", 1.0))  # type: ignore[arg-type]
    elif isinstance(item, str):
        item = LoraSpec(item)
    if not isinstance(item, LoraSpec):
        raise ValueError(f"a LoRA adapter is a path or {{\"path\", \"scale\"}}, got {item!r}")
    if not isinstance(item.path, str) or not item.path:
        raise ValueError(f"a LoRA adapter needs a path, got {item.path!r}")
    return LoraSpec(item.path, check_scale(item.scale))


def lora_flag(text: str) -> tuple[LoraSpec, ...]:
    """``--lora`` (and KOLOSAL_LORA): ``PATH[:SCALE]``, comma-separated for several, as
    llama-server's ``--lora-scaled``. A suffix that is not a number is part of the path."""
    specs = []
    for item in filter(None, text.split(",")):
        path, _, suffix = item.rpartition(":")
        try:
            scale = float(suffix) if path else None
        except ValueError:
            scale = None
        specs.append(LoraSpec(item) if scale is None else LoraSpec(path, check_scale(scale)))
    return tuple(specs)


def lora_specs(value: object) -> tuple[LoraSpec, ...]:
    """An engine's adapters from a config value (a list of the forms ``lora_spec`` takes)."""
    if isinstance(value, (str, Mapping, LoraSpec)) or not isinstance(value, Iterable):
        raise ValueError(f"lora must be a list of adapters, got {value!r}")
    specs = tuple(lora_spec(item) for item in value)
    if len(specs) > MAX_LORA_ADAPTERS:
        raise ValueError(f"at most {MAX_LORA_ADAPTERS} LoRA adapters per engine, got {len(specs)}")
    return specs


class LoraTable:
    """An engine's adapters (id = position) and their current default scales. The scales
    are replaced whole (one assignment), so a reader on any thread sees old or new ones."""

    def __init__(self, specs: tuple[LoraSpec, ...]) -> None:
        self.paths = tuple(spec.path for spec in specs)
        self._scales = tuple(spec.scale for spec in specs)

    def describe(self) -> list[dict[str, Any]]:
        """llama-server's GET /lora-adapters entries: id, path, current scale."""
        return [{"id": index, "path": path, "scale": scale}
                for index, (path, scale) in enumerate(zip(self.paths, self._scales, strict=True))]

    def set_scales(self, pairs: Iterable[tuple[int, float]]) -> None:
        """New default scales: each named id gets its scale, every other adapter 0 (off).
        InvalidRequestError (param ``lora``) for an unknown or repeated id or a bad scale."""
        self._scales = self._scales_of(pairs)

    def resolve(self, requested: Iterable[tuple[int, float]] | None) -> AdapterSet:
        """A request's adapter set: the engine's current scales when it names none (None),
        else exactly the adapters it names (checked as in ``set_scales``)."""
        scales = self._scales if requested is None else self._scales_of(requested)
        return tuple((index, scale) for index, scale in enumerate(scales) if scale != 0.0)

    def _scales_of(self, pairs: Iterable[tuple[int, float]]) -> tuple[float, ...]:
        scales = [0.0] * len(self.paths)
        named: set[int] = set()
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidRequestError(f"a LoRA entry is (id, scale), got {pair!r}", param="lora")
            index, scale = pair
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(scales):
                raise InvalidRequestError(
                    f"unknown LoRA adapter id {index!r}: this engine has {len(scales)} adapter(s)"
                    + (f" (ids 0 to {len(scales) - 1})" if scales else ""), param="lora")
            if index in named:
                raise InvalidRequestError(f"LoRA adapter id {index} is given twice", param="lora")
            named.add(index)
            try:
                scales[index] = check_scale(scale)
            except ValueError as error:
                raise InvalidRequestError(f"LoRA adapter {index}: {error}", param="lora") from None
        return tuple(scales)
