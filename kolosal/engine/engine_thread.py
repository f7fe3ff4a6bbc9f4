"""The generation engine's thread (a ``WorkerThread``): owns all llama state, runs
schedule -> decode -> sample -> update. Events cross to asyncio once per step per event
loop (``worker.post``)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from .errors import EngineStoppedError, InferenceError
from .interrupts import StepInterrupts
from .kv_cache import KVMemory
from .plan import Emission, StepOutput, StepPlan
from .request import ErrorEvent, Event, EventSink, FinishEvent, Request, SamplerLike, SamplingParams
from .scheduler import Scheduler, SchedulerPolicy
from .stats import EngineStats, StatsRecorder
from .worker import WorkerThread, post

logger = logging.getLogger(__name__)


class ContextLike(KVMemory, Protocol):
    n_ctx: int

    def interrupt(self) -> None: ...

    def resume(self) -> None: ...


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
    def stopped(self) -> bool: ...

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


Command = AddRequest | AbortRequest


def _deliver(items: list[tuple[EventSink, Event]]) -> None:
    for sink, event in items:
        sink.queue.put_nowait((sink.index, event))


class EngineThread(WorkerThread[Command]):
    """The generation engine's thread: each step is schedule -> run (decode, sample) ->
    update -> emit. The queue bound counts requests in the inbox and in the scheduler's
    queue (siblings of an n > 1 group included)."""

    def __init__(self, runner: RunnerLike, n_parallel: int, n_batch: int, max_queue: int,
                 name: str) -> None:
        super().__init__(f"engine-{name}", max_queue)
        self.runner = runner
        context = runner.context
        self.scheduler = Scheduler(num_slots=n_parallel, n_ctx=context.n_ctx, n_batch=n_batch,
                                   memory=context, piece_of=runner.vocab.token_to_piece,
                                   is_eog=runner.vocab.is_eog, clock=time.monotonic,
                                   policy=runner.policy)
        self.stats = StatsRecorder(slots_total=n_parallel, kv_cells_total=context.n_ctx)
        self.interrupts = StepInterrupts(context.interrupt, context.resume)
        self._has_deadlines = False  # skip the deadline scan until a request brings one
        self._plan: StepPlan | None = None  # the step in progress, to fail it whole if it breaks

    # -- called from the event loop -------------------------------------------------------
    @property
    def num_queued(self) -> int:
        """Requests waiting for a slot: in the inbox or in the scheduler's queue."""
        return self.submitted + self.scheduler.num_waiting

    def queued_locked(self) -> int:
        return self.num_queued

    def submit(self, request: Request) -> None:
        """Queue a request (and its siblings); its events go to ``request.sink``."""
        self.enqueue(AddRequest(request), 1 + len(request.forks))

    def abort(self, request: Request) -> None:
        self.send(AbortRequest(request))

    def interrupt_step(self) -> None:
        """A tenant with nothing in flight here just submitted beside others: stop the step
        in flight if it may be stopped (``interrupts.py``)."""
        self.interrupts.request()

    def snapshot(self) -> EngineStats:
        return self.stats.snapshot

    # -- the thread -------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def take(self, command: Command) -> None:
        if isinstance(command, AddRequest):
            self._add(command.request)
        else:
            self._abort(command.request)

    def stop(self, reason: str) -> None:
        self._emit(self.scheduler.fail_all(EngineStoppedError(reason)))

    def refuse(self, command: Command, reason: str) -> None:
        if isinstance(command, AddRequest):
            group = [command.request, *command.request.forks]
            self._emit([Emission(member, ErrorEvent(EngineStoppedError(reason))) for member in group])

    def step(self) -> None:
        """One step; an exception in it (a bug) fails the requests it touched, never the
        engine."""
        self._plan = None
        try:
            self._step()
        except Exception as error:
            logger.exception("engine step failed")
            failure = InferenceError(f"inference failed: {error}")
            if self._plan is not None:
                self._emit(self.scheduler.fail_step(self._plan, failure))
            self._emit(self.scheduler.fail(list(self.scheduler.running), failure))

    def _add(self, request: Request) -> None:
        """Take a submitted group in: each member gets its sampler (a failure answers the
        group with an error), then the scheduler queues it."""
        group = [request, *request.forks]
        self.uncount(len(group))
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
        """Expire overdue requests, plan, run the step, commit its outcome (or plan it again
        after a newcomer stopped it, or shrink the batch after "no KV slot", or fail its
        requests after a decode error), emit, record."""
        started = time.perf_counter()
        if self._has_deadlines:
            self._emit(self.scheduler.expire())
        plan = self._plan = self.scheduler.schedule()
        if plan is None:
            self.stats.record_idle(self.scheduler)
            return
        scheduled_at = time.perf_counter()
        self.interrupts.arm(plan.num_decode_rows > 0)
        result = self.runner.run(plan)
        self.interrupts.disarm(result.decode_s, result.stopped)
        ran_at = time.perf_counter()
        if result.ok:
            emissions = self.scheduler.update(plan, result.output)
            self.scheduler.speculation.observe(plan, result.decode_s)
        elif result.stopped:  # for a newcomer (interrupts.py): nothing committed, planned again
            self.scheduler.counters.stopped_steps += 1
            emissions = []
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
        """Deliver the events (one hop per event loop); a request that ended is recorded
        and released."""
        items = []
        for emission in emissions:
            sink = emission.request.sink
            if sink is not None:
                items.append((sink.loop, (sink, emission.event)))
            if isinstance(emission.event, (FinishEvent, ErrorEvent)):
                self.stats.record_finish(emission.request, emission.event)
                self._release(emission.request)
        post(items, _deliver)

    def _release(self, request: Request) -> None:
        """Nobody listens any more: drop the sink and free the C sampler."""
        request.sink = None
        sampler, request.sampler = request.sampler, None
        if sampler is not None:
            sampler.close()


__all__ = ["EngineThread", "RunnerLike", "StepPlan"]
