"""The Responses API's input items (pydantic) and their chat messages. An earlier response's
output items are valid input items too, which is how a stored response's output joins its
conversation."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, TypeAdapter

from ..completions.parts import Lenient


class TextContent(Lenient):
    type: Literal["input_text", "output_text"]
    text: str


class RefusalContent(Lenient):
    type: Literal["refusal"]
    refusal: str


Content = Annotated[TextContent | RefusalContent, Field(discriminator="type")]


def _parts(value: Any) -> Any:
    """A string is one text part (so a bad part is reported as such, not as "not a string")."""
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


def _text(content: list[Content] | list[TextContent]) -> str:
    return "\n".join(part.text if isinstance(part, TextContent) else part.refusal for part in content)


class MessageItem(Lenient):
    """``{"role", "content"}`` (EasyInputMessage), or a ``message`` item (an earlier
    response's output message included). ``id``, ``status`` and ``phase`` are ignored."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[list[Content], BeforeValidator(_parts, json_schema_input_type=str | list[Content])]


class FunctionCallItem(Lenient):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(Lenient):
    type: Literal["function_call_output"]
    call_id: str | None = None
    name: str | None = None
    output: Annotated[list[TextContent],
                      BeforeValidator(_parts, json_schema_input_type=str | list[TextContent])]


class ReasoningText(Lenient):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(Lenient):
    """An earlier response's reasoning, sent back: accepted and left out of the prompt
    (chat templates drop earlier thinking too)."""

    type: Literal["reasoning"]
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None


def _item_type(value: Any) -> str:
    found = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return found if isinstance(found, str) else "message"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type, custom_error_type="invalid_input_item",
                  custom_error_message="input items are messages, function_call, "
                                       "function_call_output or reasoning items")]
INPUT_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


def chat_messages(items: list[InputItem]) -> list[dict[str, Any]]:
    """Input items as chat messages: function calls join the assistant turn before them
    (or open one), their outputs become tool messages."""
    messages: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            message: dict[str, Any] = {"role": "tool", "content": _text(item.output)}
            if item.call_id is not None:
                message["tool_call_id"] = item.call_id
            if item.name is not None:
                message["name"] = item.name
            messages.append(message)
    return messages
