"""POST /engines bodies: the identity fields, and every tunable field generated from
EngineConfig's declared options (``kolosal.options``), so the CLI and HTTP cannot drift."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from ...engine import EngineConfig
from ...options import option_fields


class EngineCreateBase(BaseModel):
    """POST /engines. The identity fields are here; every tunable field (its name, type,
    default and bounds) is generated from EngineConfig below, so they cannot drift."""

    model_config = ConfigDict(extra="forbid", strict=True)
    engine_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    model_path: str = Field(min_length=1)

    def engine_config(self, model_path: str) -> EngineConfig:
        """The engine's config, with ``model_path`` as resolved by the caller."""
        return EngineConfig(engine_id=self.engine_id, model_path=model_path,
                            **{spec.name: getattr(self, spec.http_name) for spec in ENGINE_HTTP_OPTIONS})


ENGINE_HTTP_OPTIONS = tuple(spec for spec in option_fields(EngineConfig) if spec.option.http)
_ENGINE_FIELDS: dict[str, Any] = {
    spec.http_name: (Annotated[spec.type, Field(ge=spec.option.ge, le=spec.option.le,
                                                description=spec.option.help)], spec.default)
    for spec in ENGINE_HTTP_OPTIONS}
EngineCreateRequest = create_model("EngineCreateRequest", __base__=EngineCreateBase, **_ENGINE_FIELDS)
