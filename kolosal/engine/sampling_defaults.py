"""An engine's default sampling: the value of each sampling field that a request omits.

Two sources, the later winning field by field: the GGUF's ``general.sampling.*`` keys (a
model author's recommendation, as llama-server reads them in common/common.cpp), then the
engine's own ``defaults`` (POST /engines, a config file's engine, ``--sampling-defaults``).
A field neither sets keeps the server's own default (the request body's: OpenAI's).

Every value is checked against the bounds a request's own field has (``BOUNDS``), wherever
it comes from: an operator's out-of-range or non-finite value is refused; a GGUF's is
ignored (logged), since the file is not the operator's to fix."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

logger = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Bound:
    kind: type            # int or float
    low: float
    high: float
    low_open: bool = False  # low itself is not allowed (repeat_penalty > 0)


# The request fields an engine may default, with the bounds the request's own fields have
# (kolosal/server/completions/protocol.py; a test keeps the two equal).
BOUNDS: dict[str, Bound] = {
    "temperature": Bound(float, 0.0, 2.0),
    "top_p": Bound(float, 0.0, 1.0),
    "top_k": Bound(int, 0, INT32_MAX),
    "min_p": Bound(float, 0.0, 1.0),
    "repeat_penalty": Bound(float, 0.0, 10.0, low_open=True),
    "presence_penalty": Bound(float, -2.0, 2.0),
    "frequency_penalty": Bound(float, -2.0, 2.0),
    "seed": Bound(int, -(2**63), 2**64 - 1),
}
ALIASES = {"repetition_penalty": "repeat_penalty"}  # vLLM's name, as requests take it
# The GGUF keys we apply (gguf-py's Keys.General.SAMPLING_*). The others (sequence, xtc_*,
# mirostat*, penalty_last_n) configure samplers this server does not run: not applied.
GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
             "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
             "general.sampling.penalty_repeat": "repeat_penalty"}


class SamplingDefaultsError(ValueError):
    """A default that no request could send; ``key`` is the field at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def check_name(name: str) -> Bound:
    bound = BOUNDS.get(name)
    if bound is None:
        raise SamplingDefaultsError(name, f"unknown sampling default {name!r}; known: "
                                    f"{', '.join(BOUNDS)} (and repetition_penalty)")
    return bound


def check_value(name: str, value: Any) -> int | float:
    """``value`` as field ``name`` takes it, or SamplingDefaultsError."""
    bound = check_name(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            bound.kind is int and not isinstance(value, int)):
        kind = "an integer" if bound.kind is int else "a number"
        raise SamplingDefaultsError(name, f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value) or value < bound.low or value > bound.high or (
            bound.low_open and value == bound.low):
        low = f"> {bound.low:g}" if bound.low_open else f">= {bound.low:g}"
        raise SamplingDefaultsError(name, f"{name} must be {low} and <= {bound.high:g}, got {value!r}")
    return int(value) if bound.kind is int else float(value)


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """None: not set here (the next source's value, or the server's own default)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, value in self.items():
            object.__setattr__(self, name, check_value(name, value))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SamplingDefaults:
        """From a JSON object or a config file's mapping: names as a request spells them
        (``repetition_penalty`` too); null means unset. SamplingDefaultsError otherwise."""
        if not isinstance(values, Mapping):
            raise SamplingDefaultsError("defaults", f"sampling defaults must be an object, got {values!r}")
        found: dict[str, Any] = {}
        for key, value in values.items():
            name = ALIASES.get(key, key)
            check_name(name)  # an unknown name is refused even with a null value
            if name in found:
                raise SamplingDefaultsError(name, f"{name} is given twice ({key})")
            if value is not None:
                found[name] = value
        return cls(**found)

    @classmethod
    def from_flag(cls, text: str) -> SamplingDefaults:
        """``--sampling-defaults temperature=0.7,top_k=40`` (``none``: nothing set)."""
        values: dict[str, Any] = {}
        if text.strip().lower() == "none":
            return cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, number = (part.strip() for part in item.partition("="))
            if not sep:
                raise SamplingDefaultsError("defaults", f"expected NAME=VALUE, got {item!r}")
            try:
                values[name] = int(number) if number.lstrip("+-").isdigit() else float(number)
            except ValueError:
                raise SamplingDefaultsError(name, f"{name}: not a number: {number!r}") from None
        return cls.from_mapping(values)

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, str]) -> SamplingDefaults:
        """The GGUF's ``general.sampling.*`` values (metadata as libllama renders it: text).
        A value that does not parse or is out of bounds is ignored and logged."""
        found: dict[str, int | float] = {}
        for key, name in GGUF_KEYS.items():
            text = metadata.get(key)
            if text is None:
                continue
            try:
                number = float(text)
                found[name] = check_value(name, int(number) if BOUNDS[name].kind is int
                                          and number.is_integer() else number)
            except (ValueError, OverflowError) as error:
                logger.warning("ignoring the model's %s = %r: %s", key, text, error)
        return cls(**found)  # type: ignore[arg-type]  # each checked against its own field

    def items(self) -> list[tuple[str, int | float]]:
        """The fields set here, in declaration order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def overridden_by(self, other: SamplingDefaults) -> SamplingDefaults:
        """These defaults with every field ``other`` sets taken from ``other``."""
        return replace(self, **dict(other.items()))  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, int | float]:
        return dict(self.items())

    def __str__(self) -> str:
        """As the flag takes it (``none`` when nothing is set)."""
        return ",".join(f"{name}={value}" for name, value in self.items()) or "none"


NO_DEFAULTS = SamplingDefaults()
