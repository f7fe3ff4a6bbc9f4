"""The parts of a chat request (pydantic): messages and their content parts, tools and the
tool choice, the response format, stream options; and the two base policies every request
model takes (``Strict``: an unknown field is a 400; ``Lenient``: shapes clients fill with keys
we have no use for). ``protocol`` assembles the request bodies from them."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import legacy


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is not a number, "yes" not a bool


class Lenient(BaseModel):
    """Shapes clients fill with extra keys we have no use for (names, ids, cache hints)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(Lenient):
    include_usage: bool = False


class SpeculativeOptions(Strict):
    n_max: Annotated[int, Field(ge=0, le=64)]  # most draft tokens per step (0 = off)


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class FunctionCall(Lenient):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)


class ToolCall(Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


_TEMPLATE_ROLES = {"developer": "system", "function": "tool"}  # a legacy function result is a tool's


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None   # assistant turns that called tools
    tool_call_id: str | None = None            # tool results
    reasoning_content: str | None = None       # earlier thinking, when a client echoes it back
    function_call: FunctionCall | None = None  # legacy: an assistant turn's one call (legacy.py)

    @model_validator(mode="after")
    def _check_legacy(self) -> ChatMessage:
        legacy.raise_for(legacy.message_error(self.role, self.name, self.function_call, self.tool_calls))
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)  # as vLLM and llama-server join them

    def template_message(self) -> dict[str, Any]:
        """The message as chat templates see it (Hugging Face's conventions)."""
        message: dict[str, Any] = {"role": _TEMPLATE_ROLES.get(self.role, self.role), "content": self.text()}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class JsonSchemaFormat(Lenient):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # llama-server's json_object

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class FunctionDefinition(Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
