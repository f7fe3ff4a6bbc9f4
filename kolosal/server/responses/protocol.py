"""POST /v1/responses bodies (OpenAI's Responses API) and their translation to a chat
completion request: input items become chat messages (``items``),
``text.format`` a response_format, Responses-shaped function tools chat tools. Everything
after that is the chat path's.

The sampling fields and extensions (``top_k``, ``seed``, ``stop``, ...) are the chat
endpoints' (inherited from ``SamplingFields``); fields of the chat shape that the Responses
API spells differently (``response_format``, ``n``, llama-server's ``grammar``) are refused.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ..completions.forms import INT32_MAX
from ..completions.parts import (
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Strict,
    Tool,
    ToolCall,
)
from ..completions.protocol import ChatCompletionRequest, SamplingFields
from .items import InputItem
from .shapes import FormatEcho, FunctionToolEcho, ResponseSettings

MAX_METADATA_KEYS = 16


# -- text.format, tools ---------------------------------------------------------------------------
class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format of type json_schema needs a schema")
        if self.type != "json_schema" and (self.schema_ is not None or self.name is not None):
            raise ValueError(f"text.format of type {self.type} takes no name or schema")
        return self

    def response_format(self) -> ResponseFormat | None:
        """The chat endpoint's response_format for this format (None: free text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat.model_construct(type="json_object")
        spec = JsonSchemaFormat.model_construct(name=self.name or "response", schema_=self.schema_,
                                                strict=self.strict, description=self.description)
        return ResponseFormat.model_construct(type="json_schema", json_schema=spec)

    def echo(self) -> FormatEcho:
        if self.type != "json_schema":
            return {"type": self.type}
        return {"type": self.type, "name": self.name or "response", "schema": self.schema_,
                "strict": self.strict, "description": self.description}


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only verbosity a model without the knob has


class FunctionTool(Strict):
    """A function tool in the Responses shape (name and parameters at the top level)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat_tool(self) -> Tool:
        function: dict[str, Any] = {"name": self.name, "description": self.description,
                                    "strict": self.strict}
        if self.parameters is not None:  # else the chat default: an object, no properties
            function["parameters"] = self.parameters
        return Tool.model_construct(type="function", function=FunctionDefinition.model_construct(**function))

    def echo(self) -> FunctionToolEcho:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters, "strict": self.strict}


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


class ReasoningConfig(Strict):
    """Accepted for clients that always send it; effort and summaries are knobs of models
    we do not serve, so only their absence is accepted."""

    effort: None = None
    summary: None = None


# -- the request ----------------------------------------------------------------------------------
def _user_message(value: Any) -> Any:
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value


class ResponsesRequest(SamplingFields):
    input: Annotated[list[InputItem], BeforeValidator(_user_message,  # a string: one user message
                                                      json_schema_input_type=str | list[InputItem])]
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    store: bool = True
    max_output_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool = True
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None             # nothing extra to include: must be empty
    truncation: Literal["disabled"] | None = None  # "auto" would drop input: refused
    background: Literal[False] | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None  # counts built-in tools: none here
    top_logprobs: Literal[0] | None = None
    # The chat shape's spellings are refused here (the Responses API has its own or none).
    stream_options: None = None
    response_format: None = None
    grammar: None = None
    json_schema: None = None
    n: Literal[1] = 1

    @model_validator(mode="before")
    @classmethod
    def _stream_options(cls, data: Any) -> Any:
        """``stream_options.include_obfuscation`` pads events against side channels; our
        events are not padded, so the option has nothing to turn off."""
        if isinstance(data, dict) and isinstance(data.get("stream_options"), dict) and set(
                data["stream_options"]) <= {"include_obfuscation"}:
            return {key: value for key, value in data.items() if key != "stream_options"}
        return data

    @field_validator("include")
    @classmethod
    def _check_include(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError(f"{value[0]!r} cannot be included: this server has no extra output data")
        return value

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if not self.input and self.previous_response_id is None:
            raise ValueError("input must not be empty")
        metadata = self.metadata or {}
        if len(metadata) > MAX_METADATA_KEYS or any(
                len(key) > 64 or len(value) > 512 for key, value in metadata.items()):
            raise ValueError(f"metadata has at most {MAX_METADATA_KEYS} keys of at most 64 "
                             "characters, values of at most 512")
        return self

    @model_validator(mode="after")
    def _check_tool_choice(self) -> ResponsesRequest:
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, FunctionChoice) and choice.name not in {t.name for t in self.tools or []}:
            raise ValueError(f"tool_choice names '{choice.name}', which is not in tools")
        return self

    def format(self) -> TextFormat:
        return self.text.format if self.text and self.text.format else TextFormat(type="text")

    def chat_request(self, conversation: list[dict[str, Any]]) -> ResponsesChat:
        """The chat completion this response runs: instructions as the system message, then
        ``conversation`` (the previous response's conversation and this input as messages).
        Built from this validated request without validating again."""
        shared = {name: getattr(self, name) for name in SamplingFields.model_fields if name not in _REFUSED}
        messages = ([{"role": "system", "content": self.instructions}] if self.instructions else [])
        messages += conversation
        choice = self.tool_choice
        return ResponsesChat.model_construct(
            # the sampling fields this request set: the engine's defaults fill the others
            _fields_set=(self.model_fields_set & set(shared)) | {"messages"},
            **shared, messages=[_chat_message(message) for message in messages],
            max_completion_tokens=self.max_output_tokens, response_format=self.format().response_format(),
            tools=[tool.chat_tool() for tool in self.tools] if self.tools else None,
            tool_choice=(NamedToolChoice.model_construct(
                type="function", function=NamedFunction.model_construct(name=choice.name))
                if isinstance(choice, FunctionChoice) else choice),
            parallel_tool_calls=self.parallel_tool_calls)

    def echo(self) -> ResponseSettings:
        """The request's settings as every response object repeats them."""
        choice = self.tool_choice
        return {
            "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {}, "model": self.model,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": self.store,
            "temperature": self.temperature, "text": {"format": self.format().echo(), "verbosity": "medium"},
            "tool_choice": ({"type": "function", "name": choice.name} if isinstance(choice, FunctionChoice)
                            else choice or "auto"),
            "tools": [tool.echo() for tool in self.tools or []], "top_p": self.top_p,
            "truncation": "disabled", "user": self.user, "background": False,
            "service_tier": "default", "top_logprobs": 0, "max_tool_calls": self.max_tool_calls}


_REFUSED = ("stream_options", "response_format", "grammar", "json_schema", "n", "store")


class ResponsesChat(ChatCompletionRequest):
    """The chat completion a response runs. Its refusals name the Responses API's fields:
    the prompt comes from ``input``, the response format from ``text.format``."""

    PROMPT_FIELD: ClassVar[str] = "input"
    FORMAT_FIELD: ClassVar[str] = "text.format"


def _chat_message(message: dict[str, Any]) -> ChatMessage:
    """A chat message (``items.chat_messages``' shape, already validated) as the chat
    request holds it."""
    calls = [ToolCall.model_construct(id=call["id"], type="function",
                                      function=FunctionCall.model_construct(**call["function"]))
             for call in message.get("tool_calls") or ()]
    return ChatMessage.model_construct(**{**message, "tool_calls": calls or None})
