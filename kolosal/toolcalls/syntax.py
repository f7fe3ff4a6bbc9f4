"""The call syntax of each tool family: where a call may start, and when the text after
that start is a complete call, can still become one, or is not one.

A *region* begins at an opener (``<tool_call>``, ``[TOOL_CALLS]``, ``{`` ...). Its
``advance(text, final)`` gets the whole text from the opener on and answers NEED_MORE
(only when more text could change the answer), ``None`` (not a call: the opener is plain
content) or ``Accepted`` (the calls and how many characters they span). Every answer but
NEED_MORE is final under any continuation, which is what makes streamed parsing give the
same result however the text is split into deltas.
"""
from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from .families import ToolFamily
from .jsonscan import WHITESPACE, JsonScanner, ScanStatus


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


@dataclass(frozen=True, slots=True)
class RawCall:
    name: str
    arguments: str  # a JSON object, normalized


@dataclass(frozen=True, slots=True)
class Accepted:
    calls: list[RawCall]
    length: int  # characters of the region (from the opener) the calls took


RegionResult = Accepted | _NeedMore | None


class Region(Protocol):
    def advance(self, text: str, final: bool) -> RegionResult: ...


def skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in WHITESPACE:
        index += 1
    return index


def match(text: str, index: int, literal: str) -> Literal["full", "partial", "no"]:
    """Does ``literal`` start at ``index``: fully, as far as the text goes, or not?"""
    if text.startswith(literal, index):
        return "full"
    return "partial" if literal.startswith(text[index:]) else "no"


def normalize_arguments(value: Any) -> str | None:
    """Arguments as a JSON-object string, from an object or a string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") must stay escaped
        return json.dumps(value)
    return text


def call_from_object(obj: Any, arg_keys: tuple[str, ...],
                     tool_names: Collection[str] | None) -> RawCall | None:
    """``{"name": .., <arg key>: {..}}`` (with an optional ``"type": "function"``) as a call
    of an offered tool, or None."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name or (tool_names is not None and name not in tool_names):
        return None
    if obj.get("type", "function") != "function":
        return None
    value: Any = {}
    for key in arg_keys:
        if key in obj:
            value = obj[key]
            break
    arguments = normalize_arguments(value)
    return None if arguments is None else RawCall(name, arguments)


class JsonAt:
    """Incremental scanners for the JSON values of one region, keyed by start offset, so
    each ``advance`` only scans the characters that arrived since the last one."""

    def __init__(self) -> None:
        self._scanners: dict[int, tuple[JsonScanner, list[int]]] = {}

    def scan(self, text: str, start: int) -> tuple[ScanStatus, int]:
        """Status of the JSON value at ``start`` and, once complete, its end offset."""
        entry = self._scanners.get(start)
        if entry is None:
            entry = self._scanners[start] = (JsonScanner(), [start])
        scanner, fed = entry
        if scanner.status is ScanStatus.INCOMPLETE and fed[0] < len(text):
            scanner.feed(text[fed[0]:])
            fed[0] = len(text)
        return scanner.status, start + scanner.end

    def first_key(self, start: int) -> str | None:
        entry = self._scanners.get(start)
        return entry[0].first_key if entry else None


def scan_value(json_at: JsonAt, text: str, start: int, final: bool) -> Any:
    """The decoded JSON value at ``start`` with its end, NEED_MORE, or None if invalid."""
    if start >= len(text):
        return None if final else NEED_MORE
    status, end = json_at.scan(text, start)
    if status is ScanStatus.INVALID:
        return None
    if status is ScanStatus.INCOMPLETE:
        return None if final else NEED_MORE
    return json.loads(text[start:end]), end


class WrappedRegion:
    """``OPEN ws JSON-call [ws CLOSE]``: Hermes ``<tool_call>`` and our Gemma fence. A
    missing closer is forgiven (models often stop right after the JSON)."""

    def __init__(self, opener: str, closer: str, arg_keys: tuple[str, ...],
                 tool_names: Collection[str] | None, need_space: bool = False) -> None:
        self._opener, self._closer, self._arg_keys = opener, closer, arg_keys
        self._tool_names, self._need_space = tool_names, need_space
        self._json = JsonAt()

    def advance(self, text: str, final: bool) -> RegionResult:
        start = skip_ws(text, len(self._opener))
        if self._need_space and start == len(self._opener) and start < len(text):
            return None  # "```tool_calls" is not our fence
        scanned = scan_value(self._json, text, start, final)
        if scanned is None or scanned is NEED_MORE:
            return scanned
        value, end = scanned
        call = call_from_object(value, self._arg_keys, self._tool_names)
        if call is None:
            return None
        after = skip_ws(text, end)
        closing = match(text, after, self._closer)
        if closing == "full":
            return Accepted([call], after + len(self._closer))
        if closing == "partial" and not final:
            return NEED_MORE
        return Accepted([call], end)


class BareJsonRegion:
    """``[<|python_tag|>] {"name": .., "parameters"|"arguments": {..}} [;]``: Llama 3.x and
    the plain-JSON fallback. Any ``{`` may open one, so a JSON object whose first key is
    not ``name``/``type`` is dismissed as soon as that key is read (content JSON keeps
    streaming)."""

    def __init__(self, tag: str, tool_names: Collection[str] | None) -> None:
        self._tag, self._tool_names = tag, tool_names
        self._json = JsonAt()

    def advance(self, text: str, final: bool) -> RegionResult:
        start = skip_ws(text, len(self._tag)) if self._tag and text.startswith(self._tag) else 0
        if start < len(text) and text[start] != "{":
            return None
        scanned = scan_value(self._json, text, start, final)
        first_key = self._json.first_key(start)
        if first_key is not None and first_key not in ("name", "type"):
            return None
        if scanned is None or scanned is NEED_MORE:
            return scanned
        value, end = scanned
        call = call_from_object(value, ("parameters", "arguments"), self._tool_names)
        if call is None:
            return None
        after = skip_ws(text, end)
        if after == len(text) and not final:
            return NEED_MORE  # a ';' separating parallel calls may follow
        return Accepted([call], after + 1 if text.startswith(";", after) else end)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
TOOL_CALLS = "[TOOL_CALLS]"


class MistralRegion:
    """``[TOOL_CALLS]`` then either a JSON list of calls (Nemo/v3) or
    ``name[ARGS]{..}`` with an optional ``[CALL_ID]id`` before ``[ARGS]`` (v11+)."""

    def __init__(self, tool_names: Collection[str] | None) -> None:
        self._tool_names = tool_names
        self._json = JsonAt()

    def advance(self, text: str, final: bool) -> RegionResult:
        start = skip_ws(text, len(TOOL_CALLS))
        if start == len(text):
            return None if final else NEED_MORE
        if text[start] in "[{":
            return self._json_calls(text, start, final)
        return self._name_args(text, start, final)

    def _json_calls(self, text: str, start: int, final: bool) -> RegionResult:
        scanned = scan_value(self._json, text, start, final)
        if scanned is None or scanned is NEED_MORE:
            return scanned
        value, end = scanned
        items = value if isinstance(value, list) else [value]
        calls = [call_from_object(item, ("arguments", "parameters"), self._tool_names)
                 for item in items]
        if not calls or any(call is None for call in calls):
            return None
        return Accepted([call for call in calls if call is not None], end)

    def _name_args(self, text: str, start: int, final: bool) -> RegionResult:
        """``name[CALL_ID]id[ARGS]{...}`` (the call id optional) from ``start``."""
        index = start
        while index < len(text) and text[index] in _NAME_CHARS:
            index += 1
        if index == len(text):
            return None if final else NEED_MORE  # the name may go on
        name = text[start:index]
        if not name or (self._tool_names is not None and name not in self._tool_names):
            return None
        index = _after_call_id(text, index)
        args_tag = match(text, index, "[ARGS]")
        if args_tag != "full":
            maybe = args_tag == "partial" or match(text, index, "[CALL_ID]") == "partial"
            return NEED_MORE if maybe and not final else None
        return self._arguments(name, text, index + len("[ARGS]"), final)

    def _arguments(self, name: str, text: str, start: int, final: bool) -> RegionResult:
        scanned = scan_value(self._json, text, start, final)
        if scanned is None or scanned is NEED_MORE:
            return scanned
        value, end = scanned
        arguments = normalize_arguments(value)
        if arguments is None:
            return None
        return Accepted([RawCall(name, arguments)], end)


def _after_call_id(text: str, index: int) -> int:
    """Past a ``[CALL_ID]`` and its id at ``index``, if one is there."""
    if not text.startswith("[CALL_ID]", index):
        return index
    index += len("[CALL_ID]")
    while index < len(text) and text[index].isalnum():
        index += 1
    return index


@dataclass(frozen=True, slots=True)
class Syntax:
    """What the streaming parser needs to know about one family."""
    family: ToolFamily
    openers: tuple[str, ...]

    def region(self, opener: str, tool_names: Collection[str] | None) -> Region:
        family = self.family
        if family is ToolFamily.HERMES:
            return WrappedRegion("<tool_call>", "</tool_call>", ("arguments", "parameters"),
                                 tool_names)
        if family is ToolFamily.GEMMA:
            return WrappedRegion(GEMMA_FENCE, "```", ("arguments", "parameters"), tool_names,
                                 need_space=True)
        if family in (ToolFamily.MISTRAL, ToolFamily.MISTRAL_ARGS):
            return MistralRegion(tool_names)
        return BareJsonRegion(PYTHON_TAG if opener == PYTHON_TAG else "", tool_names)


GEMMA_FENCE = "```tool_call"
PYTHON_TAG = "<|python_tag|>"

SYNTAXES = {
    ToolFamily.HERMES: Syntax(ToolFamily.HERMES, ("<tool_call>",)),
    ToolFamily.LLAMA3: Syntax(ToolFamily.LLAMA3, (PYTHON_TAG, "{")),
    ToolFamily.MISTRAL: Syntax(ToolFamily.MISTRAL, (TOOL_CALLS,)),
    ToolFamily.MISTRAL_ARGS: Syntax(ToolFamily.MISTRAL_ARGS, (TOOL_CALLS,)),
    ToolFamily.GEMMA: Syntax(ToolFamily.GEMMA, (GEMMA_FENCE,)),
    ToolFamily.JSON: Syntax(ToolFamily.JSON, ("{",)),
}
