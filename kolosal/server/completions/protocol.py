"""Chat and text completion request bodies (pydantic) and their translation to engine
SamplingParams.

Strict where a field would change the output in a way we do not implement (400), lenient
where a field is a no-op that real clients send (``null`` for any optional field means its
default; ``store``, ``metadata``, ``response_format: {"type": "text"}``, ``tools: []``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...engine import ContextLengthExceededError, InvalidGrammarError, SamplingParams
from ...engine.request import MAX_TOP_LOGPROBS, SPECULATE_ON
from ...engine.sampling_defaults import BOUNDS, NO_DEFAULTS, SamplingDefaults
from ..lora.protocol import LoraScales, lora_pairs
from . import legacy
from .forms import (
    INT32_MAX,
    LogitBias,
    Prompt,
    bias_entries,
    check_logit_bias,
    check_prompt_list,
    split_prompts,
)
from .legacy import LegacyFunctionCall
from .parts import (
    ChatMessage,
    FunctionDefinition,
    NamedToolChoice,
    ResponseFormat,
    SpeculativeOptions,
    StreamOptions,
    Strict,
    Tool,
    ToolCall,
    ToolChoice,
)

MAX_STOP_STRINGS = 4
MAX_CHOICES = 128
MAX_LEGACY_LOGPROBS = 5
CHAT_MAX_TOKENS = 128       # the contract's defaults when a request gives none
COMPLETION_MAX_TOKENS = 16

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


# Other servers' names for our fields: vLLM's repetition_penalty, llama-server's n_predict.
ALIASES = {"repetition_penalty": "repeat_penalty", "n_predict": "max_tokens"}


class SamplingFields(Strict):
    """Fields shared by chat and text completions. Fields that would change the output in a
    way we do not implement are refused (400) instead of silently ignored.

    A refusal names the field at fault as the request spells it: ``PROMPT_FIELD`` (what
    the prompt came from) and ``FORMAT_FIELD`` (the response format) are each request
    kind's own names (the Responses API's chat request has ``input`` and ``text.format``)."""

    PROMPT_FIELD: ClassVar[str] = "prompt"
    FORMAT_FIELD: ClassVar[str] = "response_format"

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Unit = 1.0
    top_k: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    min_p: Unit = 0.0
    seed: int | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    logit_bias: LogitBias | None = None  # OpenAI's {"id": bias}; llama-server's [[id or text, bias]]
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    user: str | None = None          # accepted, unused
    ignore_eos: bool = False         # non-standard, as in llama-server: fixed-length outputs
    cache_prompt: bool = True        # non-standard, as in llama-server: False = compute the whole prompt
    timeout: Annotated[float, Field(gt=0.0)] | None = None  # non-standard: seconds, whole request
    priority: Annotated[int, Field(ge=-1000, le=1000)] | None = None  # vLLM's: lower first; key's default
    speculative: bool | SpeculativeOptions | None = None  # non-standard: prompt-lookup drafts
    response_format: ResponseFormat | None = None
    grammar: str | None = Field(default=None, max_length=100_000)   # llama-server: GBNF
    json_schema: dict[str, Any] | None = None                       # llama-server: a bare schema
    lora: LoraScales | None = None   # llama-server: [{"id", "scale"}], the others off; none: the engine's
    store: bool | None = None        # no-ops that SDKs and frameworks send
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """``"temperature": null`` (what many clients send for "unset") means the default;
        other servers' names for our fields are read as ours (``ALIASES``)."""
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if value is not None}
        for alias, name in ALIASES.items():
            if alias in data:
                value = data.pop(alias)
                if alias == "n_predict" and isinstance(value, int) and value < 0:
                    continue  # llama-server's -1: until the end (our default)
                if name in data and data[name] != value:
                    raise ValueError(f"{alias} and {name} disagree: send one of them")
                data[name] = value
        data.pop("timings_per_token", None)  # llama-server's: timings are not streamed here
        return data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value: dict[str, Any] | list[Any] | None) -> dict[str, Any] | list[Any] | None:
        check_logit_bias(value)
        return value

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, value: int | None) -> int | None:
        if value is not None and not -(2**63) <= value < 2**64:
            raise ValueError("seed must fit in 64 bits")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingFields:
        given = [name for name, value in (("response_format", self.structured_format()),
                                          ("grammar", self.grammar), ("json_schema", self.json_schema))
                 if value is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} cannot be combined: send one constraint")
        return self

    def structured_format(self) -> ResponseFormat | None:
        """The response_format that constrains the output ({"type": "text"} does not)."""
        if self.response_format is None or self.response_format.type == "text":
            return None
        return self.response_format

    def grammar_field(self) -> str:
        """The field the request's grammar comes from (enforced tool calls: ``tools``)."""
        if self.structured_format() is not None:
            return self.FORMAT_FIELD
        if self.json_schema is not None:
            return "json_schema"
        return "grammar" if self.grammar is not None else "tools"

    def field_at_fault(self, error: BaseException) -> str | None:
        """The field an engine refusal is about: the constraint when its grammar does not
        compile against the vocabulary, the prompt when it does not fit the context; None:
        the error's own."""
        if isinstance(error, InvalidGrammarError):
            return error.param or self.grammar_field()
        if isinstance(error, ContextLengthExceededError):
            return self.PROMPT_FIELD
        return None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def logprobs_count(self) -> int | None:
        """None: no logprobs; k: the sampled token's logprob and the k best alternatives."""
        return None

    def bias_entries(self) -> list[tuple[int | str, float]]:
        """logit_bias as (token id or text, bias) pairs; ``false`` is -inf (never)."""
        return bias_entries(self.logit_bias)

    def resolved_max_tokens(self, limit: int, default: int | None = None) -> int:
        """The request's max_tokens, else ``default`` (the operator's --max-tokens-default;
        0: until the end of the text or the context), else the request kind's own default;
        at most ``limit`` (the context)."""
        given = self.given_max_tokens()
        if given is None:
            given = self.DEFAULT_MAX_TOKENS if default is None else (default or limit)
        return min(given, limit)

    DEFAULT_MAX_TOKENS: ClassVar[int] = CHAT_MAX_TOKENS

    def given_max_tokens(self) -> int | None:
        return None

    def sampling_value(self, name: str, defaults: SamplingDefaults) -> Any:
        """The request's own value of a sampling field when it sent one, else the engine's
        default when it has one, else the body's default."""
        if name not in self.model_fields_set:
            value = getattr(defaults, name)
            if value is not None:
                return value
        return getattr(self, name)

    def sampling_params(self, max_tokens: int, logit_bias: Mapping[int, float] | None = None,
                        grammar: str | None = None, special_as_text: bool = False,
                        default_lora: tuple[tuple[int, float], ...] | None = None,
                        defaults: SamplingDefaults = NO_DEFAULTS) -> SamplingParams:
        """The engine's parameters: ``logit_bias`` the request's, resolved to token ids
        (prepare.py), ``grammar`` the constraint, ``special_as_text`` whether control tokens
        (markers the output parser reads) are rendered as text, ``default_lora`` the adapter
        set of a request that names none (its key's), ``defaults`` the engine's sampling
        defaults for the fields the request omits."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        value = {name: self.sampling_value(name, defaults) for name in BOUNDS}
        seed = value.pop("seed")
        return SamplingParams(
            max_tokens=max_tokens, **value, seed=None if seed is None else seed & 0xFFFFFFFF,
            logit_bias=dict(logit_bias or {}),
            stop=tuple(s for s in stop if s), ignore_eos=self.ignore_eos, cache_prompt=self.cache_prompt,
            logprobs=self.logprobs_count(), prompt_logprobs=self.wants_prompt_logprobs(),
            grammar=grammar, special_as_text=special_as_text, speculative=self.draft_max(),
            lora=default_lora if self.lora is None else lora_pairs(self.lora))

    def draft_max(self) -> int | None:
        """SamplingParams.speculative: None = the engine's setting."""
        if isinstance(self.speculative, SpeculativeOptions):
            return self.speculative.n_max
        if self.speculative is None:
            return None
        return SPECULATE_ON if self.speculative else 0

    def wants_prompt_logprobs(self) -> bool:
        return False


class ChatCompletionRequest(SamplingFields):
    PROMPT_FIELD: ClassVar[str] = "messages"

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    functions: list[FunctionDefinition] | None = None  # legacy tools and tool_choice (legacy.py)
    function_call: LegacyFunctionCall | None = None
    reasoning_format: Literal["auto", "deepseek", "none"] = "auto"  # llama-server's; "none": inline
    modalities: list[Literal["text"]] | None = None
    # variables for the chat template (e.g. Qwen3's enable_thinking), as vLLM and llama-server
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None  # to the template

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        """A field validator (tools are validated before it), so the 400 names tool_choice."""
        tools: list[Tool] = info.data.get("tools") or []
        if choice is not None and choice not in ("none", "auto") and not tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {
                tool.function.name for tool in tools}:
            raise ValueError(f"tool_choice names '{choice.function.name}', which is not in tools")
        return choice

    @field_validator("tools", "functions")
    @classmethod
    def _check_names(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        names = [item.function.name if isinstance(item, Tool) else item.name for item in value or []]
        legacy.raise_for(legacy.names_error(info.field_name or "", names, bool(info.data.get("tools"))))
        return value

    @field_validator("function_call")
    @classmethod
    def _check_function_call(cls, choice: LegacyFunctionCall, info: ValidationInfo) -> LegacyFunctionCall:
        functions: list[FunctionDefinition] | None = info.data.get("functions")
        legacy.raise_for(legacy.function_call_error(
            choice, None if functions is None else [f.name for f in functions], info.data.get("tool_choice")))
        return choice

    def _read_legacy_functions(self) -> None:
        """``functions`` / ``function_call`` / legacy messages as tools (legacy.py)."""
        if self.functions:
            self.tools = [Tool(type="function", function=function) for function in self.functions]
            self.parallel_tool_calls = False  # the legacy answer holds one call
        if self.function_call is not None:
            choice = legacy.as_tool_choice(self.function_call)
            self.tool_choice = NamedToolChoice.model_validate(choice) if isinstance(choice, dict) else choice
        for index, call_id in legacy.call_ids(self.messages):
            message = self.messages[index]
            if message.function_call is not None:
                message.tool_calls = [ToolCall(id=call_id, function=message.function_call)]
            else:
                message.tool_call_id = call_id

    @property
    def legacy_functions(self) -> bool:
        """The request offered ``functions``: the answer takes the legacy shape."""
        return bool(self.functions)

    @model_validator(mode="after")
    def _check_tools(self) -> ChatCompletionRequest:
        self._read_legacy_functions()
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.active_tools() and (self.grammar is not None or self.json_schema is not None):
            # a grammar of the client's own leaves no room for the calls the model writes
            raise ValueError("tools cannot be combined with grammar or json_schema: those constrain "
                             "the whole output, leaving no room for tool calls; use response_format, "
                             "which allows a tool call or the answer in that format")
        return self

    def given_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_variables(self) -> dict[str, Any]:
        """What the chat template gets besides the messages: ``chat_template_kwargs``, and
        ``reasoning_effort`` as vLLM passes it."""
        variables = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            variables.setdefault("reasoning_effort", self.reasoning_effort)
        return variables

    def active_tools(self) -> list[Tool]:
        """The tools the model may call (none when tool_choice is "none")."""
        return [] if self.tool_choice == "none" else list(self.tools or [])


class CompletionRequest(SamplingFields):
    DEFAULT_MAX_TOKENS: ClassVar[int] = COMPLETION_MAX_TOKENS

    prompt: Prompt  # text, ids, ids and texts mixed (llama-server's), or a list of those
    max_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None  # None: 16 (or the server's)
    suffix: None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LEGACY_LOGPROBS)] | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: str | list[Any]) -> str | list[Any]:
        if isinstance(prompt, list):
            check_prompt_list(prompt)
        return prompt

    @model_validator(mode="after")
    def _check_lengths(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 is only meaningful with echo: true")
        if self.n > 1 and self.max_tokens == 0:
            raise ValueError("n > 1 needs max_tokens > 0")
        return self

    def logprobs_count(self) -> int | None:
        return self.logprobs

    def wants_prompt_logprobs(self) -> bool:
        return self.echo and self.logprobs is not None

    def given_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int | str]]:
        """One entry per prompt: text, or pieces (token ids, and texts to tokenize there)."""
        return [self.prompt] if isinstance(self.prompt, str) else split_prompts(self.prompt)
