"""OpenAI request bodies (pydantic) and their translation to engine SamplingParams."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..engine import EngineConfig, SamplingParams
from ..options import option_fields

MAX_STOP_STRINGS = 4
MAX_PROMPTS = 64

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # e.g. "name" is harmless
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions. Fields that would change the output in a
    way we do not implement are refused (400) instead of silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is not a number, "yes" not a bool

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Unit = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    min_p: Unit = 0.0
    seed: int | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    user: str | None = None          # accepted, unused
    ignore_eos: bool = False         # non-standard, as in llama-server: fixed-length outputs
    timeout: Annotated[float, Field(gt=0.0)] | None = None  # non-standard: seconds, whole request
    logprobs: Literal[False, None] = None
    echo: Literal[False] = False

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return value

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, value: int | None) -> int | None:
        if value is not None and not -(2**63) <= value < 2**64:
            raise ValueError("seed must fit in 64 bits")
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int, n_vocab: int) -> SamplingParams:
        bias = {int(k): v for k, v in (self.logit_bias or {}).items()}
        if any(token >= n_vocab for token in bias):
            raise ValueError(f"logit_bias token ids must be below the vocabulary size {n_vocab}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, min_p=self.min_p,
            seed=None if self.seed is None else self.seed & 0xFFFFFFFF,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty, logit_bias=bias,
            stop=tuple(s for s in stop if s), ignore_eos=self.ignore_eos)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def resolved_max_tokens(self, limit: int) -> int:
        return min(self.max_completion_tokens or self.max_tokens or 128, limit)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1)] = 16
    suffix: None = None

    @model_validator(mode="after")
    def _check_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise ValueError("prompt must not be an empty list")
            if len(self.prompt) > MAX_PROMPTS and not isinstance(self.prompt[0], int):
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: text, or token ids."""
        prompt: Any = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [list(prompt)]
        return list(prompt)


class EngineCreateBase(BaseModel):
    """POST /engines. The identity fields are here; every tunable field (its name, type,
    default and bounds) is generated from EngineConfig below, so they cannot drift."""

    model_config = ConfigDict(extra="forbid", strict=True)
    engine_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    model_path: str = Field(min_length=1)

    def engine_config(self, model_path: str) -> EngineConfig:
        """The engine's config, with ``model_path`` as resolved by the caller."""
        return EngineConfig(engine_id=self.engine_id, model_path=model_path,
                            **{spec.name: getattr(self, spec.http_name) for spec in ENGINE_HTTP_OPTIONS})


ENGINE_HTTP_OPTIONS = tuple(spec for spec in option_fields(EngineConfig) if spec.option.http)
_ENGINE_FIELDS: dict[str, Any] = {
    spec.http_name: (Annotated[spec.type, Field(ge=spec.option.ge, le=spec.option.le,
                                                description=spec.option.help)], spec.default)
    for spec in ENGINE_HTTP_OPTIONS}
EngineCreateRequest = create_model("EngineCreateRequest", __base__=EngineCreateBase, **_ENGINE_FIELDS)
