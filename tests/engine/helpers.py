"""Small helpers for driving a real AsyncEngine in tests."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from kolosal.engine import (
    AsyncEngine,
    EngineConfig,
    EngineRegistry,
    ErrorEvent,
    FinishEvent,
    SamplingParams,
    TokenEvent,
)


@dataclass
class Result:
    chunks: list[str] = field(default_factory=list)
    finish: FinishEvent | None = None
    error: ErrorEvent | None = None
    first_token_s: float = 0.0
    logprobs: list[Any] = field(default_factory=list)  # TokenLogprob, when the params ask

    @property
    def text(self) -> str:
        return "".join(self.chunks)


async def run(engine: AsyncEngine, prompt: str | list[int], params: SamplingParams,
              request_id: str = "test") -> Result:
    ids = prompt if isinstance(prompt, list) else await engine.tokenize(prompt)
    result = Result()
    started = time.monotonic()
    async for _, event in engine.generate(ids, params, request_id):
        if not result.chunks and not result.first_token_s:
            result.first_token_s = time.monotonic() - started
        if isinstance(event, TokenEvent):
            result.chunks.append(event.text)
            result.logprobs.extend(event.logprobs)
        elif isinstance(event, FinishEvent):
            if event.text:
                result.chunks.append(event.text)
            result.logprobs.extend(event.logprobs)
            result.finish = event
        else:
            result.error = event
    return result


@contextlib.asynccontextmanager
async def loaded(registry: EngineRegistry, config: EngineConfig) -> AsyncIterator[AsyncEngine]:
    """A new engine of the test's own, leased for the block and removed after it."""
    await registry.add(config)
    try:
        async with registry.lease(config.engine_id) as engine:
            yield engine
    finally:
        await registry.remove(config.engine_id)


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


async def wait_until_idle(engine: AsyncEngine, timeout_s: float = 2.0) -> dict[str, Any]:
    """The engine's stats once no slot is busy (a cancelled request is dropped at the next
    step, so this takes a step or two), or as they are when the timeout runs out."""
    deadline = time.monotonic() + timeout_s
    while engine.stats()["slots_busy"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return engine.stats()
