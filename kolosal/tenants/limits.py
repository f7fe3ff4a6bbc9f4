"""Per-key limits with OpenAI's answers: requests per minute, tokens per minute and
requests in flight.

Policy:
- Windows slide over the last ``WINDOW_S`` seconds. A request is admitted when the key has
  fewer than ``rpm`` admissions in the window, when the tokens it may use (its prompt plus
  the most output it may generate) fit in ``tpm`` beside the window's other tokens, and
  when fewer than ``max_concurrent`` of its requests are in flight. Its tokens are reserved
  at admission and settled to what it used when it ends (``Ticket.settle``), so a stream
  that stops early frees its unused share at once.
- Over a limit: ``RateLimitedError`` (HTTP 429 ``rate_limit_exceeded``) with the seconds
  until the window allows it (``Retry-After``, and ``retry-after-ms`` that the OpenAI SDKs
  read first) and which limit it met. Every answer to a limited key carries OpenAI's
  ``x-ratelimit-*`` headers for the limits it has.
- Everything runs on the event loop: no locks.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .keys import KeySpec

WINDOW_S = 60.0
BUSY_RETRY_S = 1.0  # Retry-After when the key's requests in flight are at their bound


class RateLimitedError(Exception):
    def __init__(self, message: str, retry_after_s: float, limit: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit = limit          # "requests", "tokens" or "concurrency"
        self.headers = headers


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60.0:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.0f}s"


@dataclass(slots=True)
class _TokenEntry:
    at: float
    amount: int
    live: bool = True  # still in the window (counted in token_total)


@dataclass(slots=True)
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[_TokenEntry] = field(default_factory=deque)
    token_total: int = 0
    in_flight: int = 0
    admitted: int = 0
    limited: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0, "concurrency": 0})
    tokens_used: int = 0

    def expire(self, now: float) -> None:
        while self.requests and now - self.requests[0] >= WINDOW_S:
            self.requests.popleft()
        while self.tokens and now - self.tokens[0].at >= WINDOW_S:
            entry = self.tokens.popleft()
            entry.live = False
            self.token_total -= entry.amount


@dataclass(slots=True)
class Ticket:
    """One admitted request's hold on its key's limits; ``settle`` it exactly once."""

    limiter: Limiter
    state: _KeyState
    entry: _TokenEntry | None
    settled: bool = False

    def settle(self, tokens_used: int) -> None:
        if self.settled:
            return
        self.settled = True
        self.state.in_flight -= 1
        self.state.tokens_used += tokens_used
        if self.entry is not None:
            if self.entry.live:  # the window counts what it used instead of what it reserved
                self.state.token_total += tokens_used - self.entry.amount
            self.entry.amount = tokens_used


class Limiter:
    """Each key's windows, by key name (they survive a keys-file reload)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._states: dict[str, _KeyState] = {}

    def _state(self, name: str) -> _KeyState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _KeyState()
        return state

    def admit(self, spec: KeySpec, tokens: int) -> Ticket:
        """Admit a request that may use ``tokens`` tokens, or raise RateLimitedError."""
        now = self.clock()
        state = self._state(spec.name)
        state.expire(now)
        refusal = self._refusal(spec, state, tokens, now)
        if refusal is not None:
            kind, wait, message = refusal
            state.limited[kind] += 1
            raise RateLimitedError(message, wait, kind, self.headers(spec))
        state.requests.append(now)
        state.in_flight += 1
        state.admitted += 1
        entry = None
        if spec.tpm is not None:
            entry = _TokenEntry(now, tokens)
            state.tokens.append(entry)
            state.token_total += tokens
        return Ticket(self, state, entry)

    def _refusal(self, spec: KeySpec, state: _KeyState, tokens: int,
                 now: float) -> tuple[str, float, str] | None:
        if spec.max_concurrent is not None and state.in_flight >= spec.max_concurrent:
            return ("concurrency", BUSY_RETRY_S,
                    f"Rate limit reached for key '{spec.name}': {spec.max_concurrent} requests in flight")
        if spec.rpm is not None and len(state.requests) >= spec.rpm:
            wait = state.requests[0] + WINDOW_S - now
            return "requests", wait, f"Rate limit reached for key '{spec.name}' on requests per minute: " \
                f"limit {spec.rpm}. Please try again in {duration(wait)}."
        if spec.tpm is not None and state.token_total + tokens > spec.tpm:
            wait = self._token_wait(state, spec.tpm - tokens, now)
            return "tokens", wait, f"Rate limit reached for key '{spec.name}' on tokens per minute: " \
                f"limit {spec.tpm}, used {state.token_total}, requested {tokens}. " \
                f"Please try again in {duration(wait)}."
        return None

    @staticmethod
    def _token_wait(state: _KeyState, room: int, now: float) -> float:
        """Seconds until the window's tokens drop to ``room`` (a whole window when the
        request alone is over the limit)."""
        if room < 0:
            return WINDOW_S
        total = state.token_total
        for entry in state.tokens:
            total -= entry.amount
            if total <= room:
                return max(0.0, entry.at + WINDOW_S - now)
        return WINDOW_S

    def headers(self, spec: KeySpec) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the limits this key has."""
        if spec.rpm is None and spec.tpm is None:
            return {}
        now = self.clock()
        state = self._state(spec.name)
        state.expire(now)
        headers: dict[str, str] = {}
        if spec.rpm is not None:
            reset = state.requests[0] + WINDOW_S - now if state.requests else 0.0
            headers |= {"x-ratelimit-limit-requests": str(spec.rpm),
                        "x-ratelimit-remaining-requests": str(max(0, spec.rpm - len(state.requests))),
                        "x-ratelimit-reset-requests": duration(reset)}
        if spec.tpm is not None:
            reset = state.tokens[-1].at + WINDOW_S - now if state.tokens else 0.0
            headers |= {"x-ratelimit-limit-tokens": str(spec.tpm),
                        "x-ratelimit-remaining-tokens": str(max(0, spec.tpm - state.token_total)),
                        "x-ratelimit-reset-tokens": duration(reset)}
        return headers

    def counters(self) -> dict[str, tuple[int, dict[str, int], int]]:
        """Per key name: (admitted, refusals by limit, tokens used)."""
        return {name: (state.admitted, dict(state.limited), state.tokens_used)
                for name, state in self._states.items()}
