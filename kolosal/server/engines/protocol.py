"""POST /engines bodies: the identity fields, and every tunable field generated from
EngineConfig's declared options (``kolosal.options``), so the CLI and HTTP cannot drift;
``defaults`` (the engine's sampling defaults) from the bounds the engine declares for them
(``kolosal.engine.sampling_defaults.BOUNDS``, the request fields' own)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ...engine import EngineConfig
from ...engine.lora import MAX_LORA_ADAPTERS
from ...engine.sampling_defaults import ALIASES, BOUNDS, Bound, SamplingDefaults
from ...options import by_name, option_fields
from ..lora.protocol import LoraFile


class DefaultsBase(BaseModel):
    """An engine's sampling defaults: each field a request may send, with its bounds; an
    unknown key, a value out of bounds or of the wrong type is a 400 naming it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """vLLM's ``repetition_penalty`` is our ``repeat_penalty``, as in requests."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for alias, name in ALIASES.items():
            if alias in data:
                if name in data:
                    raise ValueError(f"{alias} and {name} are the same field: send one of them")
                data[name] = data.pop(alias)
        return data


def _default_field(bound: Bound) -> Any:
    limits = Field(gt=bound.low, le=bound.high) if bound.low_open else Field(ge=bound.low, le=bound.high)
    return (Annotated[bound.kind, limits] | None, None)


SamplingDefaultsBody = create_model("SamplingDefaults", __base__=DefaultsBase,
                                    **{name: _default_field(bound) for name, bound in BOUNDS.items()})


class EngineCreateBase(BaseModel):
    """POST /engines. The identity fields and the LoRA adapters (their JSON form is not the
    config's) are here; every other tunable field (its name, type, default and bounds) is
    generated from EngineConfig below, so they cannot drift."""

    model_config = ConfigDict(extra="forbid", strict=True)
    engine_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    model_path: str = Field(min_length=1)
    lora: list[LoraFile] = Field(default=[], max_length=MAX_LORA_ADAPTERS,
                                 description=by_name(option_fields(EngineConfig))["lora"].option.help)
    defaults: SamplingDefaultsBody | None = Field(  # type: ignore[valid-type]
        default=None, description=by_name(option_fields(EngineConfig))["sampling_defaults"].option.help)

    def engine_config(self, model_path: str, lora_paths: Sequence[str] | None = None) -> EngineConfig:
        """The engine's config, with ``model_path`` and the adapters' paths (in ``lora``'s
        order; default: as given) as resolved by the caller."""
        paths = [item.path for item in self.lora] if lora_paths is None else lora_paths
        lora = tuple(item.spec(path) for item, path in zip(self.lora, paths, strict=True))
        defaults = SamplingDefaults(**self.defaults.model_dump(exclude_none=True)) if self.defaults \
            else SamplingDefaults()
        return EngineConfig(engine_id=self.engine_id, model_path=model_path, lora=lora,
                            sampling_defaults=defaults,
                            **{spec.name: getattr(self, spec.http_name) for spec in GENERATED_OPTIONS})


ENGINE_HTTP_OPTIONS = tuple(spec for spec in option_fields(EngineConfig) if spec.option.http)
GENERATED_OPTIONS = tuple(spec for spec in ENGINE_HTTP_OPTIONS
                          if spec.http_name not in EngineCreateBase.model_fields)
_ENGINE_FIELDS: dict[str, Any] = {
    spec.http_name: (Annotated[spec.type, Field(ge=spec.option.ge, le=spec.option.le,
                                                description=spec.option.help)], spec.default)
    for spec in GENERATED_OPTIONS}
EngineCreateRequest = create_model("EngineCreateRequest", __base__=EngineCreateBase, **_ENGINE_FIELDS)
