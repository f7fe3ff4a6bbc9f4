"""Run one engine request per prompt and merge their events: the bridge between a
handler and AsyncEngine.generate()."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..engine import AsyncEngine, ErrorEvent, Event, FinishEvent, SamplingParams, TokenEvent, Usage


@dataclass(slots=True)
class ChoiceResult:
    index: int
    parts: list[str] = field(default_factory=list)
    finish: FinishEvent | None = None
    error: ErrorEvent | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


def total_usage(finishes: list[FinishEvent]) -> Usage:
    return Usage(sum(f.usage.prompt_tokens for f in finishes),
                 sum(f.usage.completion_tokens for f in finishes),
                 sum(f.usage.cached_tokens for f in finishes))


class MultiStream:
    """``await start()`` submits every prompt at once and waits for each first event, so
    refusals (queue full, context too long) raise before any response is sent. Then
    ``events()`` yields ``(index, event)`` as they come. ``close()`` aborts what is left."""

    def __init__(self, engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams,
                 request_id: str, timeout_s: float | None = None) -> None:
        self._generators = [engine.generate(ids, params, f"{request_id}-{i}", timeout_s)
                            for i, ids in enumerate(prompts)]
        self._firsts: list[Event] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def num_choices(self) -> int:
        return len(self._generators)

    async def start(self) -> None:
        results = await asyncio.gather(*(g.__anext__() for g in self._generators),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise errors[0]
        self._firsts = list(results)  # type: ignore[arg-type]

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        if len(self._generators) == 1:  # one prompt: no merging, no extra task per token
            yield 0, self._firsts[0]
            if isinstance(self._firsts[0], TokenEvent):
                async for event in self._generators[0]:
                    yield 0, event
            return
        queue: asyncio.Queue[tuple[int, Event] | None] = asyncio.Queue()
        pending = 0
        for index, first in enumerate(self._firsts):
            yield index, first
            if isinstance(first, TokenEvent):
                pending += 1
                self._tasks.append(asyncio.create_task(self._pump(index, queue)))
        while pending:
            item = await queue.get()
            if item is None:
                pending -= 1
                continue
            yield item

    async def _pump(self, index: int, queue: asyncio.Queue[tuple[int, Event] | None]) -> None:
        try:
            async for event in self._generators[index]:
                queue.put_nowait((index, event))
        finally:
            queue.put_nowait(None)

    async def collect(self) -> list[ChoiceResult]:
        choices = [ChoiceResult(index) for index in range(len(self._generators))]
        async for index, event in self.events():
            choice = choices[index]
            if isinstance(event, TokenEvent):
                choice.parts.append(event.text)
            elif isinstance(event, FinishEvent):
                choice.parts.append(event.text)
                choice.finish = event
            else:
                choice.error = event
        return choices

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for generator in self._generators:
            with contextlib.suppress(BaseException):
                await generator.aclose()
