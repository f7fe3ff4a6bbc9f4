"""The inputs an embedding engine has waiting, and which of them the next step takes.
Pure Python: the batcher thread (embedding.py) owns one.

Policy (the generation queue's ideas, fair_queue.py, on the embedding step's tokens):
- Priority classes first: a lower ``Tenancy.priority`` fills the step before any higher.
- Within a class, fair on tokens between tenants (by weight) and, within a tenant, between
  its requests: each step goes round the tenants, least served first, and each turn takes
  one input of that tenant's least served request that still fits the step (a later
  short input may pass a long one that does not; the least served request goes first in
  the next step, where any one input fits). Turns go on until the step holds ``n_batch``
  tokens or its most inputs, or nothing else fits.
- Served tokens count while a tenant or request has inputs waiting: a newcomer starts level
  with the least served one waiting (no credit for idle time, no debt for past work), and of
  two served alike the one served longer ago goes first. So a one-input request sent
  behind a request of 2,048 inputs is in the next step, and a
  request's inputs never wait for more than the other requests' turns.
- A cancelled or answered request leaves whole at the next plan, and ``len`` counts exactly
  the inputs waiting.
"""
from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field

import numpy as np

from .request import ANONYMOUS, Tenancy


@dataclass(eq=False, slots=True)
class EmbeddingJob:
    """One request's inputs. The thread fills ``vectors`` row by row and resolves
    ``future`` on ``loop`` when the last row is in; ``cancelled`` (set by the awaiting
    coroutine when its client goes away) makes the thread skip the rest."""

    inputs: list[list[int]]
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    tenancy: Tenancy = ANONYMOUS
    vectors: np.ndarray | None = None
    remaining: int = 0
    cancelled: bool = False   # written by the event loop, read by the thread
    done: bool = False        # the thread has answered it or counted it out

    def __post_init__(self) -> None:
        self.remaining = len(self.inputs)


@dataclass(slots=True)
class StepPlan:
    entries: list[tuple[EmbeddingJob, int]] = field(default_factory=list)  # (job, input index)
    tokens: int = 0
    cancelled: list[EmbeddingJob] = field(default_factory=list)  # counted out by this plan


@dataclass(eq=False, slots=True)
class _Flow:
    """A queued job: its next input not taken yet, and the tokens it was served."""

    job: EmbeddingJob
    next: int = 0
    served: float = 0.0
    last_turn: int = -1  # when it was served last: of two served alike, the other goes first

    @property
    def waiting(self) -> int:
        return len(self.job.inputs) - self.next


TenantKey = tuple[int, str]  # (priority, tenant)


def _key(job: EmbeddingJob) -> TenantKey:
    return job.tenancy.priority, job.tenancy.tenant


class EmbeddingQueue:
    def __init__(self) -> None:
        self._flows: list[_Flow] = []                  # in arrival order
        self._served: dict[TenantKey, float] = {}      # tokens / weight, tenants waiting only
        self._last_turn: dict[TenantKey, int] = {}     # as _Flow.last_turn, per tenant
        self._turns = 0
        self._depth = 0

    def __len__(self) -> int:
        """Inputs waiting."""
        return self._depth

    def __bool__(self) -> bool:
        return bool(self._flows)

    def jobs(self) -> list[EmbeddingJob]:
        return [flow.job for flow in self._flows]

    def clear(self) -> None:
        self._flows.clear()
        self._served.clear()
        self._last_turn.clear()
        self._depth = 0

    def push(self, job: EmbeddingJob) -> None:
        key = _key(job)
        peers = [flow.served for flow in self._flows if _key(flow.job) == key]
        if key not in self._served:
            self._served[key] = min((served for other, served in self._served.items()
                                     if other[0] == key[0]), default=0.0)
        self._flows.append(_Flow(job, served=min(peers, default=0.0)))
        self._depth += len(job.inputs)

    def plan(self, token_budget: int, max_inputs: int) -> StepPlan:
        """Take the inputs of one step (see the module's policy); jobs cancelled or
        answered since the last plan leave (the cancelled ones are counted out once)."""
        plan = StepPlan(cancelled=self._drop_gone())
        for priority in sorted({flow.job.tenancy.priority for flow in self._flows if flow.waiting}):
            if len(plan.entries) >= max_inputs:
                break
            self._fill(plan, priority, token_budget, max_inputs)
        self._flows = [flow for flow in self._flows if flow.waiting]
        waiting = {_key(flow.job) for flow in self._flows}
        self._served = {key: served for key, served in self._served.items() if key in waiting}
        self._last_turn = {key: turn for key, turn in self._last_turn.items() if key in waiting}
        self._depth -= len(plan.entries)
        return plan

    def _drop_gone(self) -> list[EmbeddingJob]:
        """Take the inputs of cancelled or answered jobs out; the cancelled jobs, each
        counted out once (marked done)."""
        cancelled = []
        for flow in self._flows:
            job = flow.job
            if job.cancelled or job.done:
                if not job.done:
                    job.done = True
                    cancelled.append(job)
                self._depth -= flow.waiting
                flow.next = len(job.inputs)
        return cancelled

    def _fill(self, plan: StepPlan, priority: int, token_budget: int, max_inputs: int) -> None:
        """Inputs of one class until the step is full: each from the least served tenant's
        least served job whose next input fits (a job or tenant with nothing that fits is
        out of this step: the room only shrinks)."""
        tenants, jobs = self._heaps(priority)
        while tenants and len(plan.entries) < max_inputs:
            _, _, tenant = heapq.heappop(tenants)
            flow = _pop_fitting(jobs[tenant], token_budget - plan.tokens)
            if flow is None:
                continue
            self._take(plan, flow, (priority, tenant))
            if flow.waiting:
                heapq.heappush(jobs[tenant], (flow.served, flow.last_turn, self._turns, flow))
            if jobs[tenant]:
                heapq.heappush(tenants, (self._served[(priority, tenant)], self._turns, tenant))

    def _heaps(self, priority: int) -> tuple[list[tuple[float, int, str]],
                                             dict[str, list[tuple[float, int, int, _Flow]]]]:
        """The class's tenants and each tenant's jobs with inputs waiting, as heaps: least
        served first, then the one served longer ago."""
        jobs: dict[str, list[tuple[float, int, int, _Flow]]] = {}
        for order, flow in enumerate(self._flows):
            if flow.waiting and flow.job.tenancy.priority == priority:
                entry = (flow.served, flow.last_turn, order, flow)
                jobs.setdefault(flow.job.tenancy.tenant, []).append(entry)
        for heap in jobs.values():
            heapq.heapify(heap)
        tenants = [(self._served[(priority, tenant)], self._last_turn.get((priority, tenant), -1), tenant)
                   for tenant in jobs]
        heapq.heapify(tenants)
        return tenants, jobs

    def _take(self, plan: StepPlan, flow: _Flow, key: TenantKey) -> None:
        """The flow's next input into the step, charged to it and to its tenant."""
        size = len(flow.job.inputs[flow.next])
        plan.entries.append((flow.job, flow.next))
        plan.tokens += size
        flow.next += 1
        flow.served += size
        self._served[key] += size / max(flow.job.tenancy.weight, 1e-6)
        self._turns += 1
        flow.last_turn = self._last_turn[key] = self._turns


def _pop_fitting(heap: list[tuple[float, int, int, _Flow]], room: int) -> _Flow | None:
    """The least served job of ``heap`` whose next input fits ``room`` tokens, taken off the
    heap; those before it that do not fit are dropped from it."""
    while heap:
        flow = heapq.heappop(heap)[3]
        if len(flow.job.inputs[flow.next]) <= room:
            return flow
    return None
