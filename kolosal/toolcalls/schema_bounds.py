"""What a request's JSON schema becomes before llguidance compiles it: the bounds llama.cpp's
schema converter (common/json-schema-to-grammar.cpp) puts on every JSON it generates, which
keep a small model from running on until ``max_tokens``.

- **Objects are closed** (``closed_objects``): an object schema with ``properties`` and no
  word on ``additionalProperties`` / ``patternProperties`` admits no other keys. JSON
  Schema's default (any extra key) lets a small model wander into invented keys.
- **Number digits are capped** (``capped_number``): llguidance's numbers have unbounded
  digits, so a model could write ``84.0000000…`` forever. Every ``number`` / ``integer``
  schema gets an integer part of at most ``MAX_INTEGER_DIGITS`` digits (llama.cpp's
  ``[1-9][0-9]{0,15}``), as bounds ``±INTEGER_CAP`` unless its own bounds are tighter; a
  ``number`` also at most ``MAX_FRACTION_DIGITS`` fraction digits, as ``multipleOf: 1e-10``
  (llguidance reads ``multipleOf`` as an f64 and 1e-10 is the finest power of ten it takes
  exactly; a ``multipleOf`` of the schema's own bounds its fraction already). Bounded
  numbers are plain decimals (llguidance writes no exponent for a bounded range), where
  llama.cpp also allows an exponent of up to 16 digits.
- **Whitespace runs are bounded** (``JSON_OPTIONS``, ``json_options``): JSON is written in
  the compact style ``json.dumps`` prints (``{"a": 1, "b": [2, 3]}``: one space after
  ``:`` and ``,``, no other whitespace). A schema whose ``x-guidance`` turns
  ``whitespace_flexible`` on without its own ``whitespace_pattern`` gets llama.cpp's
  ``space`` rule (one space, or one or two newlines and at most 20 spaces or tabs) for each
  run, never llguidance's unbounded ``[ \t\n\r]+``; its own pattern or separators are
  taken as written. (llama.cpp's own layout, flexible but bounded, as the default was
  measured and not kept: see benchmarks/RESULTS.md, issue 27.)

A schema's own constraints keep working: its tighter ``minimum`` / ``maximum`` stay, looser
ones give way to the cap, its ``multipleOf`` stays. Values (``const``, ``enum``) are not
touched, nor what a ``not`` or an ``if`` excludes (capping there would widen the schema).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

MAX_INTEGER_DIGITS = 16
MAX_FRACTION_DIGITS = 10
# The largest 16-digit integer an f64 holds (llguidance reads bounds as f64: 10**16 - 1
# rounds up to 10**16, a 17-digit number).
INTEGER_CAP = 9_999_999_999_999_998
FRACTION_STEP = 1e-10
# llama.cpp's ``space`` rule, as the one whitespace run llguidance allows between tokens.
BOUNDED_WHITESPACE = r"(?: |\n{1,2}[ \t]{0,20})"

# llguidance's options for every JSON the grammars produce (a schema's "x-guidance" overrides).
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ",
                                "key_separator": ": "}

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalItems", "then", "else", "contains", "additionalProperties")
_EXCLUDING = ("not", "if")  # what these hold is excluded or a test: a cap there would widen


def bounded_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with closed objects and capped number digits (see the module's
    docstring); ``schema`` itself is not changed."""
    caps_fraction = not _mentions(schema, "multipleOf")

    def capped(node: dict[str, Any]) -> dict[str, Any]:
        return capped_number(node, caps_fraction)

    rewritten: dict[str, Any] = _walk(closed_objects(schema), capped, _SUBSCHEMAS)
    return rewritten


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` where every object schema with ``properties`` and no word on
    ``additionalProperties`` (or ``patternProperties``) admits no other keys, as llama.cpp's
    grammars do."""
    return _walk(schema, _closed, _SUBSCHEMAS + _EXCLUDING)


def json_options(own: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every llguidance JSON option for a schema whose ``x-guidance`` is ``own``: its own
    over ``JSON_OPTIONS``, where ``whitespace_flexible`` without a ``whitespace_pattern``
    means no whitespace (false) or the bounded run (true)."""
    options = {**JSON_OPTIONS, **(own or {})}
    if own and "whitespace_flexible" in own and not own.get("whitespace_pattern"):
        options.pop("whitespace_pattern", None)
        if own["whitespace_flexible"]:
            options["whitespace_pattern"] = BOUNDED_WHITESPACE
    return options


def capped_number(schema: Mapping[str, Any], caps_fraction: bool = True) -> dict[str, Any]:
    """``schema`` with number digit caps when it describes a number or an integer."""
    capped = dict(schema)
    types = schema.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    if not kinds & {"number", "integer"} or "const" in schema or "enum" in schema:
        return capped
    _cap_side(capped, "maximum", "exclusiveMaximum", INTEGER_CAP)
    _cap_side(capped, "minimum", "exclusiveMinimum", -INTEGER_CAP)
    if "number" in kinds and caps_fraction and "multipleOf" not in capped:
        capped["multipleOf"] = FRACTION_STEP
    return capped


def _cap_side(schema: dict[str, Any], inclusive: str, exclusive: str, cap: int) -> None:
    """Bound one side at ``cap`` unless the schema's own bound on it is as tight."""
    sign = 1 if cap > 0 else -1
    own = [schema[key] for key in (inclusive, exclusive) if _is_number(schema.get(key))]
    if any(sign * value <= sign * cap for value in own):
        return
    schema.pop(exclusive, None)  # looser than the cap, or a draft-4 flag on the looser bound
    schema[inclusive] = cap


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def _walk(schema: Any, change: Callable[[dict[str, Any]], dict[str, Any]], single: tuple[str, ...]) -> Any:
    """A copy of ``schema`` where ``change`` was applied to every subschema (children first)
    under the list and map keywords and the ``single`` ones. Recursive: a schema is at most
    ``limits.MAX_SCHEMA_DEPTH`` deep by then."""
    if isinstance(schema, list):
        return [_walk(item, change, single) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    copy = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(copy.get(key), list):
            copy[key] = [_walk(item, change, single) for item in copy[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(copy.get(key), Mapping):
            copy[key] = {name: _walk(item, change, single) for name, item in copy[key].items()}
    for key in single:
        if isinstance(copy.get(key), (Mapping, list)):
            copy[key] = _walk(copy[key], change, single)
    return change(copy)


def _mentions(schema: Any, keyword: str) -> bool:
    """Does ``keyword`` appear as a key anywhere in ``schema``? (An iterative walk.)"""
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            if keyword in value:
                return True
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False
