"""Per-request values: sampling parameters, lifecycle status, output events, and the
engine-side state of one sequence."""
from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from .errors import EngineError
from .lora import BASE_MODEL, AdapterSet

if TYPE_CHECKING:
    from .constraint import Constraint
    from .detokenizer import Detokenizer
    from .speculation.drafting import Drafter

MAX_TOP_LOGPROBS = 20
_GROUPS = itertools.count()
SPECULATE_ON = -1        # SamplingParams.speculative: speculate, at the engine's draft length
DEFAULT_DRAFT_MAX = 16   # ... or this many when the engine has speculation off


class OutputWatch(Protocol):
    """Reads one sequence's output text as the engine releases it (on the engine thread)
    and may end it: a rule on the text that a stop string cannot say (the tool-call layer's
    "a call repeats an earlier one")."""

    def feed(self, text: str, num_tokens: int) -> int | None:
        """``text``: newly released text, ``num_tokens``: tokens generated so far. None: go
        on; else the request ends now (finish_reason stop), billed for that many tokens
        (the text after them is the watch's to drop)."""
        ...


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16                 # 0: only the prompt is computed (echo + logprobs)
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
    ignore_eos: bool = False             # end-of-generation tokens never sampled: exactly max_tokens
    cache_prompt: bool = True            # start from the longest cached prefix of the prompt
    logprobs: int | None = None          # None: off; k: the sampled token's logprob + k best
    prompt_logprobs: bool = False        # also each prompt token's logprob (completions echo)
    grammar: str | None = None           # an llguidance grammar the output must match
    special_as_text: bool = False        # control tokens (tool-call / reasoning markers) as text
    speculative: int | None = None       # draft tokens per step: None = the engine's setting,
    # 0 = off, k = at most k, SPECULATE_ON = on at the engine's length (DEFAULT_DRAFT_MAX if off)
    lora: tuple[tuple[int, float], ...] | None = None  # (adapter id, scale): exactly these
    # adapters (the others off; scale 0 = off); None = the engine's current scales (lora.py)
    watch: Callable[[], OutputWatch] | None = None  # makes each choice's OutputWatch

    def for_choice(self, index: int) -> SamplingParams:
        """The params of choice ``index`` of an n > 1 request: its own seed."""
        return self if self.seed is None else replace(self, seed=(self.seed + index) & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Tenancy:
    """Whose request this is: the tenant (an API key's name; "" for anonymous), its weight
    (a fair-share multiplier) and the request's priority class (lower first). The engine
    admits requests weighted-fair between tenants (fair_queue.py)."""

    tenant: str = ""
    weight: float = 1.0
    priority: int = 0


ANONYMOUS = Tenancy()


def new_group(request_id: str) -> str:
    """A ``Request.group`` for one client request: unique in the process even where
    clients reuse request ids."""
    return f"{request_id}#{next(_GROUPS)}"
QueueKey = tuple[int, float, int]  # (priority, start tag, arrival order): fair_queue.py


class RequestStatus(enum.IntEnum):
    """Ordered: everything >= FINISHED is terminal."""

    WAITING = 0      # queued for a slot (again, after a preemption)
    RUNNING = 1      # holds a slot: prefilling or decoding
    FINISHED = 2
    CANCELLED = 3
    FAILED = 4


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
class TokenLogprob:
    """One token's log-probability under the model's raw distribution (before temperature,
    penalties or grammar), with the best alternatives."""

    token: int
    logprob: float | None                        # None: the first prompt token has no context
    top: tuple[tuple[int, float], ...] = ()      # (token, logprob), best first


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New text for the client (complete UTF-8, stop strings held back)."""

    text: str
    num_tokens: int  # tokens generated so far
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens released since the last event


@dataclass(frozen=True, slots=True)
class FinishEvent:
    text: str  # trailing text released at the end (may be empty)
    finish_reason: FinishReason
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # when asked: one per prompt token


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: EngineError


Event = TokenEvent | FinishEvent | ErrorEvent


@dataclass(frozen=True, slots=True)
class EventSink:
    """Where one request's events go: an asyncio queue on a given event loop, tagged with
    the request's choice index (the n choices of one request share a queue)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[int, Event]]
    index: int = 0


class SamplerLike(Protocol):
    """A per-request sampler (kolosal.llama.Sampler): picks a token from a batch row of the
    last decode (``scratch``: the calling thread's buffer, when threads share a step;
    ``allowed``: the grammar's token bitmask for a constrained request)."""

    def sample(self, context: Any, row: int, scratch: Any = None, allowed: Any = None) -> int: ...

    def close(self) -> None: ...


@dataclass(slots=True, eq=False)
class Request:
    """Engine-side state of one sequence. ``token_ids`` is the prompt followed by every
    generated token; ``num_computed`` of them are in the KV cache. Whatever lies beyond
    ``num_computed`` is fed at the next step (a prompt chunk, or the last sampled token).

    A request of an n > 1 group that is not the first (``fork_of`` set) does not prefill
    its prompt: when the first request's prompt is computed, its KV is copied over and
    both sample their first token from the same logits row."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    sink: EventSink | None = None
    token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    seq_id: int = -1
    num_computed: int = 0
    num_cached: int = 0           # prompt tokens reused from a slot's prefix cache
    first_token_at: float = 0.0
    deadline: float | None = None  # monotonic time covering queue + prefill + decode
    sampler: SamplerLike | None = None  # None: greedy (argmax in numpy, no chain)
    constraint: Constraint | None = None
    detokenizer: Detokenizer | None = None
    drafter: Drafter | None = None       # set when this sequence drafts (speculative decoding)
    adapters: AdapterSet = BASE_MODEL    # its LoRA adapter set, resolved at submission
    fork_of: Request | None = None       # n > 1: the group's first request, until forked
    forks: list[Request] = field(default_factory=list)  # n > 1: on the first request
    tenancy: Tenancy = ANONYMOUS
    group: str = ""                      # the client request it is part of (its choices, its
    # prompts): no group holds more than its share of the slots while others wait (scheduler.py)
    queue_key: QueueKey | None = None    # its place in the wait queue, kept across preemptions
    watch: OutputWatch | None = None     # from params.watch, made when it is queued
    num_unbilled: int = 0                # generated tokens its watch dropped (not in usage)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet emitted
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)

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

    @property
    def awaits_fork(self) -> bool:
        """Holds a slot but waits for its group's first request to compute the prompt."""
        return self.fork_of is not None

    def usage(self) -> Usage:
        return Usage(self.num_prompt, self.num_generated - self.num_unbilled, self.num_cached)

    def watch_ends(self, text: str) -> bool:
        """Does the request's watch end it at this released text? Then only the tokens the
        watch says are billed (the text after them is the watch's to drop)."""
        if self.watch is None or not text:
            return False
        billed = self.watch.feed(text, self.num_generated)
        if billed is None:
            return False
        self.num_unbilled = self.num_generated - billed
        return True

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken = tuple(self.pending_logprobs)
        self.pending_logprobs.clear()
        return taken
