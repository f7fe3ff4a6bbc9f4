"""TypedDict -> JSON Schema, for the response bodies that /openapi.json describes.

Response shapes are typed once, as TypedDicts (plain dicts at run time, so orjson writes
them as fast as ever), and their schemas are generated here. A converter of our own rather
than pydantic's ``TypeAdapter(...).json_schema()``: ~60 lines that write exactly what the
document needs (no ``title`` on every field, nested TypedDicts as shared
``#/components/schemas`` entries by class name), that read ``NotRequired`` right under
``from __future__ import annotations`` (``__required_keys__`` does not before Python 3.14), and
that let a field whose run-time value is not a JSON type (a numpy row) state its schema
with ``Annotated[..., Schema(...)]`` instead of needing a pydantic validator for it.

Handled: str, int, float, bool, None, Any, Literal, list, dict[str, X], unions (Optional
included), NotRequired / Required, nested TypedDicts and ``Annotated`` (its ``Schema``, or
the type it wraps). Objects allow keys beyond the declared ones, as OpenAI's clients do.
"""
from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from typing_extensions import (
    NotRequired,
    Required,
    get_type_hints,
    is_typeddict,
)

REF = "#/components/schemas/{name}"
PRIMITIVES: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number",
                              type(None): "null"}


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: typing hashes metadata
class Schema:
    """``Annotated[T, Schema({...})]``: the field's JSON Schema, as given."""

    schema: dict[str, Any]


def typed_dict_schema(typed_dict: type, definitions: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``typed_dict``'s schema; it and every TypedDict it holds are added to
    ``definitions`` (by class name)."""
    name = typed_dict.__name__
    if name not in definitions:
        definitions[name] = {}  # a placeholder first: a shape may hold itself
        properties: dict[str, Any] = {}
        required: list[str] = []
        for key, hint in get_type_hints(typed_dict, include_extras=True).items():
            origin: Any = get_origin(hint)
            if origin in (NotRequired, Required):
                hint = get_args(hint)[0]
            if origin is Required or (origin is not NotRequired and getattr(typed_dict, "__total__", True)):
                required.append(key)
            properties[key] = type_schema(hint, definitions)
        definitions[name] = {"type": "object", "required": required, "properties": properties}
    return {"$ref": REF.format(name=name)}


def type_schema(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one annotation."""
    if hint is Any:
        return {}
    if hint in PRIMITIVES:
        return {"type": PRIMITIVES[hint]}
    if is_typeddict(hint):
        return typed_dict_schema(hint, definitions)
    build = GENERICS.get(get_origin(hint))
    if build is None:
        raise TypeError(f"no JSON Schema for {hint!r}")
    return build(hint, definitions)


def _annotated(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    given = [meta.schema for meta in hint.__metadata__ if isinstance(meta, Schema)]
    return dict(given[0]) if given else type_schema(get_args(hint)[0], definitions)


def _literal(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    values = get_args(hint)
    return {"const": values[0]} if len(values) == 1 else {"enum": list(values)}


def _union(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [type_schema(arg, definitions) for arg in get_args(hint)]}


def _list(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": type_schema(get_args(hint)[0], definitions)}


def _dict(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    values = type_schema(get_args(hint)[1], definitions)
    return {"type": "object", **({"additionalProperties": values} if values else {})}


GENERICS: dict[Any, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    Annotated: _annotated, Literal: _literal, Union: _union, types.UnionType: _union,
    list: _list, dict: _dict}
