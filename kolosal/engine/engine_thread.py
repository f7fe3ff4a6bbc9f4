"""The engine thread: owns all llama state, runs schedule -> decode -> sample -> update.

The thread blocks on its inbox only when idle. Events cross to asyncio once per step per
event loop: ``loop.call_soon_threadsafe(deliver, batch_of_events)``.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from .errors import EngineOverloadedError, EngineStoppedError, InferenceError
from .request import ErrorEvent, Event, EventSink, FinishEvent, Request, SamplerLike, SamplingParams
from .scheduler import Emission, KVMemory, Scheduler, SchedulerPolicy, StepOutput, StepPlan
from .stats import EngineStats, StatsRecorder

logger = logging.getLogger(__name__)


class ContextLike(KVMemory, Protocol):
    n_ctx: int


class VocabLike(Protocol):
    def token_to_piece(self, token: int, special: bool = False) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...


class RunnerLike(Protocol):
    """What the thread needs of a ModelRunner (a fake one drives it in tests)."""

    @property
    def context(self) -> ContextLike: ...

    @property
    def vocab(self) -> VocabLike: ...

    @property
    def policy(self) -> SchedulerPolicy: ...

    def make_sampler(self, params: SamplingParams) -> SamplerLike | None: ...

    def run(self, plan: StepPlan) -> StepResultLike: ...


class StepResultLike(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def no_kv_slot(self) -> bool: ...

    @property
    def status_name(self) -> str: ...

    output: StepOutput
    decode_s: float
    sample_s: float


@dataclass(frozen=True, slots=True)
class AddRequest:
    request: Request  # with its n > 1 siblings in request.forks


@dataclass(frozen=True, slots=True)
class AbortRequest:
    request: Request


@dataclass(frozen=True, slots=True)
class Shutdown:
    reason: str


Command = AddRequest | AbortRequest | Shutdown


def _deliver(items: list[tuple[EventSink, Event]]) -> None:
    for sink, event in items:
        sink.queue.put_nowait((sink.index, event))


class EngineThread:
    def __init__(self, runner: RunnerLike, n_parallel: int, n_batch: int, max_queue: int,
                 name: str) -> None:
        self.runner = runner
        self.max_queue = max_queue
        context = runner.context
        self.scheduler = Scheduler(num_slots=n_parallel, n_ctx=context.n_ctx, n_batch=n_batch,
                                   memory=context, piece_of=runner.vocab.token_to_piece,
                                   is_eog=runner.vocab.is_eog, clock=time.monotonic,
                                   policy=runner.policy)
        self.stats = StatsRecorder(slots_total=n_parallel, kv_cells_total=context.n_ctx)
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._queue_lock = threading.Lock()
        self._num_in_inbox = 0  # requests submitted, not yet taken in by the thread
        self._stopped = False
        self._has_deadlines = False  # skip the deadline scan until a request brings one
        self._plan: StepPlan | None = None  # the step in progress, to fail it whole if it breaks
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)

    # -- called from the event loop -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def num_queued(self) -> int:
        """Requests waiting for a slot: in the inbox or in the scheduler's queue."""
        return self._num_in_inbox + self.scheduler.num_waiting

    def submit(self, request: Request) -> None:
        """Queue a request (and its siblings); its events go to ``request.sink``."""
        size = 1 + len(request.forks)
        with self._queue_lock:
            if self._stopped:
                raise EngineStoppedError("the engine is shutting down")
            if self.num_queued + size > self.max_queue:
                raise EngineOverloadedError(
                    f"the engine queue is full ({self.max_queue} waiting requests); retry later")
            self._num_in_inbox += size
        self._inbox.put(AddRequest(request))

    def abort(self, request: Request) -> None:
        self._inbox.put(AbortRequest(request))

    def shutdown(self, reason: str = "the engine was stopped") -> None:
        with self._queue_lock:
            self._stopped = True
        self._inbox.put(Shutdown(reason))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def snapshot(self) -> EngineStats:
        return self.stats.snapshot

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._handle_commands(block=not self.scheduler.has_work):
                return
            self._plan = None
            try:
                self._step()
            except Exception as error:  # never let one bad step kill the engine
                logger.exception("engine step failed")
                failure = InferenceError(f"inference failed: {error}")
                if self._plan is not None:
                    self._emit(self.scheduler.fail_step(self._plan, failure))
                self._emit(self.scheduler.fail(list(self.scheduler.running), failure))

    def _handle_commands(self, block: bool) -> bool:
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if isinstance(command, AddRequest):
                self._add(command.request)
            elif isinstance(command, AbortRequest):
                self._abort(command.request)
            else:
                self._emit(self.scheduler.fail_all(EngineStoppedError(command.reason)))
                self._drain_after_shutdown(command.reason)
                return False

    def _add(self, request: Request) -> None:
        group = [request, *request.forks]
        with self._queue_lock:
            self._num_in_inbox -= len(group)
        self._has_deadlines = self._has_deadlines or request.deadline is not None
        try:
            for member in group:
                member.sampler = self.runner.make_sampler(member.params)
        except Exception as error:
            self._emit([Emission(member, ErrorEvent(InferenceError(f"bad sampler: {error}")))
                        for member in group])
            return
        self.scheduler.add(request)

    def _abort(self, request: Request) -> None:
        if self.scheduler.abort(request):
            self.stats.record_cancel()
        self._release(request)

    def _step(self) -> None:
        started = time.perf_counter()
        if self._has_deadlines:
            self._emit(self.scheduler.expire())
        plan = self._plan = self.scheduler.schedule()
        if plan is None:
            self.stats.record_idle(self.scheduler)
            return
        scheduled_at = time.perf_counter()
        result = self.runner.run(plan)
        ran_at = time.perf_counter()
        if result.ok:
            emissions = self.scheduler.update(plan, result.output)
            self.scheduler.observe_step(plan, result.decode_s)
        elif result.no_kv_slot:
            logger.warning("no KV slot for a %d-token batch: shrinking and retrying", plan.num_tokens)
            self.scheduler.on_no_kv_slot(plan)
            emissions = []
        else:
            emissions = self.scheduler.fail([r for r, _ in plan.scheduled],
                                            InferenceError(f"llama_decode returned {result.status_name}"))
        updated_at = time.perf_counter()
        self._emit(emissions)
        done_at = time.perf_counter()
        self.stats.record_step(plan, self.scheduler, schedule_s=scheduled_at - started,
                               decode_s=result.decode_s, sample_s=result.sample_s,
                               run_s=ran_at - scheduled_at, update_s=updated_at - ran_at,
                               deliver_s=done_at - updated_at, ok=result.ok)

    def _emit(self, emissions: list[Emission]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[EventSink, Event]]]
        by_loop = defaultdict(list)
        for emission in emissions:
            sink = emission.request.sink
            if sink is not None:
                by_loop[sink.loop].append((sink, emission.event))
            if isinstance(emission.event, (FinishEvent, ErrorEvent)):
                self.stats.record_finish(emission.request, emission.event)
                self._release(emission.request)
        for event_loop, items in by_loop.items():
            try:
                event_loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening
                pass

    def _release(self, request: Request) -> None:
        """Nobody listens any more: drop the sink and free the C sampler."""
        request.sink = None
        sampler, request.sampler = request.sampler, None
        if sampler is not None:
            sampler.close()

    def _drain_after_shutdown(self, reason: str) -> None:
        """Requests that raced the shutdown still get an answer."""
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, AddRequest):
                group = [command.request, *command.request.forks]
                self._emit([Emission(member, ErrorEvent(EngineStoppedError(reason))) for member in group])


__all__ = ["EngineThread", "RunnerLike", "StepPlan"]
