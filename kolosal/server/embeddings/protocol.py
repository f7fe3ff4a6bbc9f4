"""The body of POST /v1/embeddings (OpenAI's shape)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request

TokenId = Annotated[int, Field(ge=0)]


def _token_ids(items: list[Any]) -> bool:
    return all(type(item) is int and item >= 0 for item in items)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None  # only the model's own width
    user: str | None = None  # accepted, unused

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        """One clear message for every wrong shape (a union's own errors name its first
        member: "input.str: Input should be a valid string")."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        if isinstance(value, list) and (all(isinstance(item, str) for item in value)
                                        or all(isinstance(item, list) and _token_ids(item)
                                               for item in value)):
            if len(value) > MAX_EMBEDDING_INPUTS:
                raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
            return value
        if isinstance(value, list) and _token_ids(value):
            return value
        raise ValueError("input must be a string, a list of strings, a list of token ids or a list "
                         "of token-id lists (token ids are integers >= 0)")

    def inputs(self) -> list[str | list[int]]:
        """One entry per output vector: text, or token ids."""
        value: Any = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]
        return list(value)
