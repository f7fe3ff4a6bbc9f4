"""OpenAI's legacy function calling, read as tools (the openai SDKs still send it, as do
older LangChain agents).

* ``functions`` (``[{name, description, parameters}]``) are the ``tools``, and an answer
  holds at most one call (the legacy API had no parallel calls);
* ``function_call`` (``"none"``, ``"auto"`` or ``{"name": ...}``) is the ``tool_choice``;
* an assistant message's ``function_call: {name, arguments}`` is its one tool call, and
  the ``role: "function"`` message after it (``name``, ``content``) that call's result.

The answer to a request with ``functions`` comes in the legacy shape:
``message.function_call`` and ``finish_reason: "function_call"`` (``delta.function_call``
streamed), as OpenAI answers. ``functions`` beside ``tools``, ``function_call`` beside
``tool_choice``, a ``function_call`` naming a function not in ``functions`` and repeated
function names are refused (400). The request model (``protocol``) holds the fields; this
module holds the rules, on plain values."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict


class FunctionName(BaseModel):
    """``function_call: {"name": ...}``."""

    model_config = ConfigDict(extra="ignore", strict=True)
    name: str


LegacyFunctionCall = Literal["none", "auto"] | FunctionName
LEGACY_CALL_ID = "call_fn{index}"  # ids pairing a message's function_call with its result


def raise_for(error: str | None) -> None:
    """A validator's refusal (pydantic makes it a 400 naming the field)."""
    if error is not None:
        raise ValueError(error)


def names_error(field: str, names: Iterable[str], with_tools: bool) -> str | None:
    """What is wrong with ``tools`` or ``functions`` (given their function names)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return f"{field} names '{name}' twice: function names must be unique"
        seen.add(name)
    if field == "functions" and with_tools:
        return "functions and tools cannot be combined: send tools (functions is their legacy form)"
    return None


def function_call_error(choice: LegacyFunctionCall, functions: Sequence[str] | None,
                        tool_choice: Any) -> str | None:
    """What is wrong with ``function_call`` (None: nothing); ``functions``: the offered
    names (None when the request has no ``functions``)."""
    if tool_choice is not None:
        return "function_call and tool_choice cannot be combined: send tool_choice (with tools)"
    if isinstance(choice, FunctionName):
        if functions is None:
            return "function_call names a function, which needs functions"
        if choice.name not in functions:
            return f"function_call names '{choice.name}', which is not in functions"
    return None


def as_tool_choice(choice: LegacyFunctionCall) -> Any:
    """``function_call`` as the ``tool_choice`` it means (a named one as its dict)."""
    if isinstance(choice, FunctionName):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


class _Message(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def function_call(self) -> object: ...

    @property
    def tool_call_id(self) -> str | None: ...


def message_error(role: str, name: str | None, function_call: Any, tool_calls: Any) -> str | None:
    """What is wrong with a message's legacy fields (None: nothing)."""
    if function_call is not None and role != "assistant":
        return "only an assistant message carries a function_call"
    if function_call is not None and tool_calls:
        return "a message carries tool_calls or a function_call, not both"
    if role == "function" and not name:
        return "a function message needs the name of the function it answers"
    return None


def call_ids(messages: Sequence[_Message]) -> list[tuple[int, str]]:
    """Ids that pair each legacy call with its result: ``(message index, id)`` for every
    assistant message with a ``function_call`` and every function message, which answers
    the last call before it."""
    ids: list[tuple[int, str]] = []
    last: str | None = None
    for index, message in enumerate(messages):
        if message.function_call is not None:
            last = LEGACY_CALL_ID.format(index=index)
            ids.append((index, last))
        elif message.role == "function" and message.tool_call_id is None:
            ids.append((index, last or LEGACY_CALL_ID.format(index=index)))
    return ids
