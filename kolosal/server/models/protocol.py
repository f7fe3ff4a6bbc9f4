"""Bodies of POST /tokenize and /detokenize (llama-server's shapes)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..embeddings.protocol import TokenId


class TokenizeRequest(BaseModel):
    """llama-server's /tokenize: BOS only when asked (``add_special``), control-token text
    such as ``<start_of_turn>`` parsed (``parse_special``), pieces on request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    model: str | None = Field(default=None, min_length=1)  # default: the first ready engine


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: list[TokenId]
    model: str | None = Field(default=None, min_length=1)
