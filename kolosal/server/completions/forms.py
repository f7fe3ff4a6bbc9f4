"""llama-server's forms of two completion fields, beside OpenAI's, validated here for
protocol.py: ``logit_bias`` as ``[[token id or text, bias], ...]`` or with text keys, and
prompt lists that mix token ids and texts (tools/server: the ``logit_bias`` field of
server-schema.cpp, ``tokenize_input_prompts`` / ``tokenize_mixed`` of server-common.cpp).

Where llama-server skips what it cannot read (an unknown token id, a bias of ``true``, a pair
of three), these are 400s naming the field; every list is bounded."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

INT32_MAX = 2**31 - 1
MAX_PROMPTS = 64
MAX_LOGIT_BIAS = 1024       # logit_bias entries, whichever form
MAX_BIAS_TEXT = 1024        # characters of one text entry of logit_bias
MAX_PROMPT_TEXTS = 1024     # text pieces in the mixed (ids and text) prompts of one request
# An object key that is a token id, as llama-server's strtol reads it (else: a text); in a
# pair, a string is always a text.
TOKEN_ID = re.compile(r"\s*[+-]?[0-9]+")

# A bias: a number, or false (never: -inf), as llama-server takes it.
Bias = Annotated[float, Field(ge=-100.0, le=100.0)] | Literal[False]
BiasTarget = Annotated[int, Field(ge=0, le=INT32_MAX)] | Annotated[str, Field(min_length=1,
                                                                           max_length=MAX_BIAS_TEXT)]
BiasPair = Annotated[tuple[BiasTarget, Bias], Field(strict=False)]  # JSON's [target, bias] list
LogitBias = dict[str, Bias] | list[BiasPair]
# One prompt's pieces: token ids, and texts tokenized where they stand. Ids are checked
# against the vocabulary where the prompt is taken (AsyncEngine.generate: a 400 naming prompt).
PromptPieces = list[int | str]
Prompt = str | PromptPieces | list[str | PromptPieces]


def check_logit_bias(value: Mapping[str, Any] | list[Any] | None) -> None:
    """Bounds of either form (ValueError); the values were checked by their types."""
    if value is not None and len(value) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} logit_bias entries are allowed")
    for key in value if isinstance(value, Mapping) else ():
        if not key or len(key) > MAX_BIAS_TEXT:
            raise ValueError(f"logit_bias keys are token ids or texts of 1 to {MAX_BIAS_TEXT} "
                             f"characters, got {key[:40]!r}")
        if TOKEN_ID.fullmatch(key) and int(key) < 0:
            raise ValueError(f"logit_bias keys must be token ids of 0 or more, got {key!r}")


def bias_entries(value: Mapping[str, Any] | list[Any] | None) -> list[tuple[int | str, float]]:
    """(token id or text, bias) pairs in the request's order, whichever form they came in (an
    object key of digits is a token id, a pair's string a text); ``false`` is -inf."""
    if isinstance(value, Mapping):
        pairs = [(int(key) if TOKEN_ID.fullmatch(key) else key, bias) for key, bias in value.items()]
    else:
        pairs = list(value or [])
    return [(target, -math.inf if bias is False else float(bias)) for target, bias in pairs]


def split_prompts(prompt: list[Any]) -> list[str | list[int | str]]:
    """llama-server's reading of a prompt list: with a token id at its top level it is one
    prompt (ids, or ids and texts mixed); else each element is a prompt (a text, or such a
    list)."""
    if any(isinstance(item, int) for item in prompt):
        return [list(prompt)]
    return [item if isinstance(item, str) else list(item) for item in prompt]


def check_prompt_list(prompt: list[Any]) -> None:
    """A list of prompts within bounds (ValueError): not empty, at most MAX_PROMPTS, each
    inner list holding a token id (a list of texts only is no prompt llama-server reads),
    at most MAX_PROMPT_TEXTS texts to tokenize in all."""
    prompts = split_prompts(prompt)
    if not prompts or any(isinstance(p, list) and not p for p in prompts):
        raise ValueError("prompt must not be an empty list")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
    pieces = [p for p in prompts if isinstance(p, list)]
    if any(not any(isinstance(piece, int) for piece in p) for p in pieces):
        raise ValueError("a prompt given as a list holds token ids (and texts between them); "
                         "send texts as separate prompts or join them")
    if sum(isinstance(piece, str) for p in pieces for piece in p) > MAX_PROMPT_TEXTS:
        raise ValueError(f"at most {MAX_PROMPT_TEXTS} texts in the mixed prompts of a request")
