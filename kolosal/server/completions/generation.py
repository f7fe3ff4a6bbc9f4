"""Submit one engine request per prompt (each with ``n`` choices) and merge their events:
the bridge between a handler and AsyncEngine.generate()."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from quart import g

from ...engine import AsyncEngine, Event, FinishEvent, SamplingParams, Tenancy, Usage
from ...engine.request import ANONYMOUS, new_group
from ...tenants.limits import Ticket
from ..caller import admit, tenancy
from ..errors import from_engine_error
from ..guards import raise_if_client_gone
from .protocol import SamplingFields

Choices = AsyncGenerator[tuple[int, Event], None]


def total_usage(finishes: list[FinishEvent], choices_per_prompt: int = 1) -> Usage:
    """Usage of a whole response: each prompt counted once however many choices shared it."""
    return Usage(sum(f.usage.prompt_tokens for f in finishes) // choices_per_prompt,
                 sum(f.usage.completion_tokens for f in finishes),
                 sum(f.usage.cached_tokens for f in finishes) // choices_per_prompt)


@dataclass(slots=True)
class _Prompt:
    generator: Choices
    first: tuple[int, Event] | None = None


class MultiStream:
    """``await start()`` submits every prompt at once and waits for each first event, so
    refusals (queue full, context too long) raise before any response is sent. Then
    ``events()`` yields ``(choice index, event)`` as they come; prompt ``p``'s choice ``i``
    is index ``p * n + i``. ``close()`` aborts what is left.

    A greedy request that repeats a prompt runs it once and gives every repeat the same
    events: two runs of one prompt would otherwise differ at near ties (the second finds
    the first's prefix cached, and its last rows run on other kernels)."""

    def __init__(self, engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams,
                 request_id: str, timeout_s: float | None = None, n: int = 1,
                 tenancy: Tenancy = ANONYMOUS, ticket: Ticket | None = None) -> None:
        self.n = n
        self._ticket = ticket          # the key's hold on its limits, settled at close()
        self._used = 0                 # tokens of the finished choices (for the ticket)
        self.num_choices = len(prompts) * n
        first_of: dict[tuple[int, ...], int] = {}
        self._offsets: list[list[int]] = []  # per run: the prompts (times n) it answers for
        runs: list[list[int]] = []
        for index, ids in enumerate(prompts):
            key = tuple(ids)
            if params.temperature <= 0.0 and key in first_of:
                self._offsets[first_of[key]].append(index * n)
                continue
            first_of[key] = len(runs)
            runs.append(ids)
            self._offsets.append([index * n])
        group = new_group(request_id)  # its prompts share one request's share of the slots
        self._prompts = [_Prompt(engine.generate(ids, params, f"{request_id}-{p}" if len(prompts) > 1
                                                 else request_id, timeout_s, n, tenancy, group))
                         for p, ids in enumerate(runs)]
        self._prompt_tokens = sum(len(ids) for ids in runs)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        raise_if_client_gone()  # nothing is queued for a client that already left
        results = await asyncio.gather(*(p.generator.__anext__() for p in self._prompts),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise errors[0]
        for prompt, first in zip(self._prompts, results, strict=True):
            prompt.first = first  # type: ignore[assignment]

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        if self.num_choices == self.n:  # one prompt: no merging, no extra task per token
            prompt = self._prompts[0]
            assert prompt.first is not None
            yield prompt.first
            async for choice_event in prompt.generator:
                self._count(choice_event[1])
                yield choice_event
            return
        queue: asyncio.Queue[tuple[int, Event] | None] = asyncio.Queue()
        for index, prompt in enumerate(self._prompts):
            self._tasks.append(asyncio.create_task(self._pump(index, prompt, queue)))
        pending = len(self._prompts)
        while pending:
            item = await queue.get()
            if item is None:
                pending -= 1
                continue
            self._count(item[1])
            yield item

    def _count(self, event: Event) -> None:
        if isinstance(event, FinishEvent):
            self._used += event.usage.completion_tokens

    async def _pump(self, index: int, prompt: _Prompt,
                    queue: asyncio.Queue[tuple[int, Event] | None]) -> None:
        offsets = self._offsets[index]
        try:
            assert prompt.first is not None
            for offset in offsets:
                queue.put_nowait((offset + prompt.first[0], prompt.first[1]))
            async for choice, event in prompt.generator:
                for offset in offsets:
                    queue.put_nowait((offset + choice, event))
        finally:
            queue.put_nowait(None)

    async def close(self) -> None:
        """Abort what is unfinished; the key's limits count the tokens used."""
        if self._ticket is not None:
            self._ticket.settle(self._prompt_tokens + self._used)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for prompt in self._prompts:
            with contextlib.suppress(BaseException):
                await prompt.generator.aclose()



async def start(engine: AsyncEngine, prompts: list[list[int]], body: SamplingFields,
                params: SamplingParams, request_id: str) -> MultiStream:
    """Submit every prompt (n choices each); refusals raise here, before any response: the
    key's limits first (its tokens: the prompts and the most output they may generate), then
    the engine, which checks each prompt as it takes it; a refusal names the request's field."""
    ticket = admit(sum(len(ids) for ids in prompts) + max(params.max_tokens, 1) * body.n * len(prompts))
    try:
        streams = MultiStream(engine, prompts, params, request_id, body.timeout, body.n,
                              tenancy(body.priority), ticket)
        await streams.start()
    except Exception as error:
        if ticket is not None:
            ticket.settle(0)
        raise from_engine_error(error, param=body.field_at_fault(error)) from error
    g.record.token()  # every prompt has produced its first event
    return streams
