"""The benchmark workloads: what each client sends, as sessions of one or more calls.

A session is a generator: it yields a call (path and the workload's part of the body), is
sent the text of the reply, and yields the next call, so a multi-turn chat resends its whole
history with each new user message, as chat UIs and agents do. The load generator adds the
fields every request shares (model, max_tokens, stream, sampling).

- ``short``: a short question per request, on /v1/completions (or chat) — the baseline load.
- ``mixed``: like short, but 10 % of the requests carry a ~1k-token document.
- ``chat``: every session is a 6-turn conversation on /v1/chat/completions over one shared
  ~400-token system prompt; each turn resends the history plus a new user message.
- ``echo``: a document followed by an instruction to repeat (or fix) it and its first line:
  outputs that largely copy the prompt, where drafts of the next tokens can be read from
  the context.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks.documents import CHAT_SYSTEM_PROMPT, CHAT_TURNS, chat_question, echo_prompt
from benchmarks.prompts import pick_prompt

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Call:
    path: str
    body: dict[str, Any]     # the workload's fields: prompt or messages


Session = Generator[Call, str, None]  # yields calls, is sent each reply's text


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    summary: str
    sessions: Callable[[int, int], Session]   # (index, seed) -> one session
    calls_per_session: int = 1
    # what compare.py uses unless told otherwise
    max_tokens: int = 64
    n_ctx: int = 8192
    levels: tuple[int, ...] = (1, 8, 32)
    peer_kv_unified: bool = False
    chat_template: str | None = None          # llama-server --chat-template (ours reads the GGUF)
    notes: tuple[str, ...] = field(default=())


def single(call: Call) -> Session:
    """A session of one call."""
    yield call


def completion_session(prompt: str, endpoint: str = "completions") -> Session:
    if endpoint == "chat":
        return single(Call(CHAT, {"messages": [{"role": "user", "content": prompt}]}))
    return single(Call(COMPLETIONS, {"prompt": prompt}))


def mixed_sessions(long_fraction: float = 0.1,
                   endpoint: str = "completions") -> Callable[[int, int], Session]:
    return lambda index, seed: completion_session(pick_prompt(index, long_fraction, seed), endpoint)


def chat_session(index: int, seed: int = 0, turns: int = CHAT_TURNS) -> Session:
    """One conversation: the shared system prompt, then ``turns`` user messages, each call
    carrying every earlier message and reply."""
    session = seed * 1_000_003 + index
    messages: list[dict[str, str]] = [{"role": "system", "content": CHAT_SYSTEM_PROMPT}]
    for turn in range(turns):
        messages.append({"role": "user", "content": chat_question(session, turn)})
        reply = yield Call(CHAT, {"messages": [dict(m) for m in messages]})
        messages.append({"role": "assistant", "content": reply})


def echo_sessions(endpoint: str = "completions") -> Callable[[int, int], Session]:
    return lambda index, seed: completion_session(echo_prompt(seed * 1_000_003 + index), endpoint)


WORKLOADS: dict[str, Workload] = {
    "short": Workload("short", "short questions, 64-token streamed completions", mixed_sessions(0.0),
                      levels=(1, 4, 8, 16, 32, 64)),
    "mixed": Workload("mixed", "10 % of requests carry a ~1k-token document, the rest short; streamed",
                      mixed_sessions(), peer_kv_unified=True, levels=(8, 32)),
    "chat": Workload("chat", f"{CHAT_TURNS}-turn conversations on a shared ~400-token system prompt, "
                     "each turn resending the whole history", chat_session, calls_per_session=CHAT_TURNS,
                     n_ctx=32768, peer_kv_unified=True, levels=(1, 8, 32), chat_template="gemma",
                     notes=("llama-server gets --chat-template gemma: the default GGUF has no template, "
                            "and ours falls back to Gemma's turn format",)),
    "echo": Workload("echo", "a document, then 'repeat it' (or fix its typos) and its first line: "
                     "outputs that copy the prompt", echo_sessions(), max_tokens=192, levels=(1, 8),
                     # a 260-token prompt + 192 tokens do not fit llama-server's 8192/32 cells a slot
                     peer_kv_unified=True),
}


def workload(name: str, endpoint: str = "completions", long_fraction: float | None = None) -> Workload:
    """A workload by name. ``endpoint`` ("completions" or "chat") applies to short, mixed and
    echo; ``long_fraction`` overrides the share of ~1k-token prompts of short and mixed."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}: one of {', '.join(WORKLOADS)}")
    base = WORKLOADS[name]
    if name == "chat":
        return base
    if name == "echo":
        return replace(base, sessions=echo_sessions(endpoint))
    fraction = long_fraction if long_fraction is not None else (0.1 if name == "mixed" else 0.0)
    return replace(base, sessions=mixed_sessions(fraction, endpoint))


def calls(session: Session, replies: Callable[[Call], str]) -> list[Call]:
    """Every call of a session, each reply made by ``replies`` (for tests and dry runs)."""
    made: list[Call] = []
    try:
        call = next(session)
        while True:
            made.append(call)
            call = session.send(replies(call))
    except StopIteration:
        return made
