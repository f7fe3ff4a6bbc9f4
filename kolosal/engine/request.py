"""Per-request values: sampling parameters, lifecycle status, output events."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .errors import EngineError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                       # 0 = off
    min_p: float = 0.0
    seed: int | None = None              # None = random
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False             # benchmarks: generate exactly max_tokens


class RequestStatus(enum.IntEnum):
    """Ordered: everything >= FINISHED is terminal."""

    WAITING = 0
    PREFILLING = 1
    DECODING = 2
    FINISHED = 3
    CANCELLED = 4
    FAILED = 5


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New text for the client (complete UTF-8, stop strings held back)."""

    text: str
    num_tokens: int  # tokens generated so far


@dataclass(frozen=True, slots=True)
class FinishEvent:
    text: str  # trailing text released at the end (may be empty)
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: EngineError


Event = TokenEvent | FinishEvent | ErrorEvent


@dataclass(slots=True, eq=False)
class Request:
    """Engine-side state of one sequence. ``token_ids`` is the prompt followed by every
    generated token; ``num_computed`` of them are in the KV cache. Whatever lies beyond
    ``num_computed`` is fed at the next step (a prompt chunk, or the last sampled token)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    seq_id: int = -1
    num_computed: int = 0
    num_cached: int = 0           # prompt tokens reused from a slot's prefix cache
    first_token_at: float = 0.0
    deadline: float | None = None  # monotonic time covering queue + prefill + decode
    sampler: object | None = None  # a kolosal.llama.Sampler when not greedy; opaque here
    detokenizer: object | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status >= RequestStatus.FINISHED

    def usage(self) -> Usage:
        return Usage(self.num_prompt, self.num_generated, self.num_cached)
