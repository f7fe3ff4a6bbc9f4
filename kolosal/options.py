"""Settings described once. A dataclass field made with ``option()`` carries its help text,
bounds, CLI flag (its environment variable is KOLOSAL_<FLAG>) and HTTP name; the CLI, the
environment, config files and ``POST /engines`` are all derived from these fields, so a
default or a limit is written in one place. Stdlib only: the engine imports it."""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_KEY = "kolosal.option"
_fields: dict[type, tuple[OptionField, ...]] = {}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class Option:
    help: str
    ge: float | None = None            # inclusive bounds, checked wherever the value comes from
    le: float | None = None
    flag: str | None = None            # "--n-ctx" (env KOLOSAL_N_CTX); None: no flag
    http: bool = True                  # settable in POST /engines (engine fields)
    alias: str | None = None           # its name over HTTP when not the field's
    choices: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None  # text (flag, env) -> value; default: the type


def option(default: T, help: str, **details: Any) -> T:
    """A dataclass field with a default and how it is exposed (see ``Option``)."""
    return dataclasses.field(default=default, metadata={_KEY: Option(help, **details)})


@dataclass(frozen=True, slots=True)
class OptionField:
    """One option of a settings dataclass, with its resolved type and default."""
    name: str
    type: Any
    default: Any
    option: Option

    @property
    def http_name(self) -> str:
        return self.option.alias or self.name

    @property
    def env_name(self) -> str | None:
        flag = self.option.flag
        return None if flag is None else "KOLOSAL_" + flag.lstrip("-").upper().replace("-", "_")

    @property
    def base_type(self) -> type:
        """int, float, bool, str or tuple (``X | None`` counts as X)."""
        kind = self.type
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        origin = typing.get_origin(kind)
        return origin if isinstance(origin, type) else kind

    def parse(self, text: str) -> Any:
        """The value of a flag or environment variable. Lists are comma-separated."""
        if self.option.parse is not None:
            return self.option.parse(text)
        kind = self.base_type
        if kind is bool:
            word = text.strip().lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                raise ValueError(f"{self.name}: expected 1/0, true/false, yes/no or on/off, got {text!r}")
            return word in TRUE_WORDS
        if kind is tuple:
            return tuple(item for item in text.split(",") if item)
        value = kind(text)
        if self.option.choices and value not in self.option.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.option.choices)}, got {text!r}")
        return value

    def check(self, value: Any) -> None:
        if value is None:  # unset: nothing to bound
            return
        low, high = self.option.ge, self.option.le
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(f"{word} {_number(limit)}" for word, limit in ((">=", low), ("<=", high))
                                  if limit is not None)
            raise OptionValueError(self.name, f"{self.name} must be {bounds}, got {value!r}")
        if self.option.choices and value not in self.option.choices:
            raise OptionValueError(self.name, f"{self.name} must be one of "
                                   f"{', '.join(self.option.choices)}, got {value!r}")


class OptionValueError(ValueError):
    """An option's value out of its bounds or choices; ``name`` is the option's."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def option_fields(cls: type) -> tuple[OptionField, ...]:
    """The ``option()`` fields of a dataclass, in declaration order."""
    found = _fields.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _fields[cls] = tuple(OptionField(f.name, hints[f.name], f.default, f.metadata[_KEY])
                                     for f in dataclasses.fields(cls) if _KEY in f.metadata)
    return found


def check_options(instance: Any) -> None:
    """Bounds and choices of every option of a dataclass instance (call in __post_init__)."""
    for spec in option_fields(type(instance)):
        spec.check(getattr(instance, spec.name))


def by_name(specs: Iterable[OptionField]) -> dict[str, OptionField]:
    return {spec.name: spec for spec in specs}
