"""Who waits for a slot, in the order they get one: weighted-fair between tenants (the API
keys the requests came with), within priority classes.

Policy:
- Priority classes first: a lower ``priority`` is admitted before any higher one (vLLM's
  ``priority`` field; a key's default).
- Within a class, start-time fair queuing on tokens: each request gets a start tag
  ``max(virtual time, its tenant's last finish tag)`` and moves its tenant's finish tag on
  by its cost (prompt tokens + the output tokens it may generate) divided by its tenant's
  weight. Requests are admitted by start tag, and the virtual time is the start tag of the
  last admitted one. A tenant that sends a flood only queues behind itself: another
  tenant's next request starts at the current virtual time, ahead of the flood's tail.
  With one tenant the tags grow with arrival: first come, first served.
- A request that comes back (preempted, or a sibling detached from its n > 1 group, which
  carries its group's tag) keeps the tag it had, so it is next in line again.
- ``fair_share`` says how many of the slots a tenant is due now (slots split by weight
  between the tenants with requests running or waiting); the scheduler preempts a tenant
  over its share for a waiting request of a tenant under it.
"""
from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator

from .request import QueueKey, Request


def request_cost(request: Request) -> int:
    """What admitting the request commits the engine to: its prompt and its longest output."""
    return request.num_prompt + max(request.params.max_tokens, 1) * (1 + len(request.forks))


class FairQueue:
    """Requests waiting for a slot, ordered by ``Key``. Iteration, ``len``, ``in`` and
    ``remove`` behave like the deque it replaces."""

    def __init__(self) -> None:
        self._entries: list[tuple[QueueKey, Request]] = []  # sorted by key (unique: arrival order)
        self._finish: dict[str, float] = {}                # tenant -> last finish tag
        self._virtual_time = 0.0
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[Request]:
        return iter([request for _, request in self._entries])

    def __contains__(self, request: object) -> bool:
        return any(entry[1] is request for entry in self._entries)

    def push(self, request: Request) -> None:
        """Queue a request: a new one gets its tag now; one that was queued before (a
        preempted request, a detached sibling) takes its old place."""
        if request.queue_key is None:
            request.queue_key = self._tag(request)
            bisect.insort_right(self._entries, (request.queue_key, request), key=lambda entry: entry[0])
        else:  # back in line: ahead of any other with the same tag (its group)
            bisect.insort_left(self._entries, (request.queue_key, request), key=lambda entry: entry[0])

    def peek(self) -> Request:
        return self._entries[0][1]

    def pop(self) -> Request:
        """The next request to admit; the virtual time moves to its start tag."""
        return self.take(self._entries[0][1])

    def take(self, request: Request) -> Request:
        """Admit this queued request (not necessarily the first)."""
        self.remove(request)
        assert request.queue_key is not None
        self._virtual_time = max(self._virtual_time, request.queue_key[1])
        return request

    def remove(self, request: Request) -> None:
        for index, entry in enumerate(self._entries):
            if entry[1] is request:
                del self._entries[index]
                return
        raise ValueError("not queued")

    def _tag(self, request: Request) -> QueueKey:
        tenancy = request.tenancy
        if not self._entries and self._finish:  # no backlog: every tenant starts even
            self._virtual_time = max(self._virtual_time, *self._finish.values())
        start = max(self._virtual_time, self._finish.get(tenancy.tenant, 0.0))
        self._finish[tenancy.tenant] = start + request_cost(request) / max(tenancy.weight, 1e-6)
        return (tenancy.priority, start, next(self._order))


def fair_share(tenants: dict[str, float], num_slots: int) -> dict[str, float]:
    """Slots per tenant, split by weight between ``tenants`` (name -> weight)."""
    total = sum(tenants.values())
    return {name: num_slots * weight / total for name, weight in tenants.items()} if total else {}


def admission_order(running: list[Request], waiting: FairQueue, num_slots: int) -> list[Request]:
    """The waiting requests in the order admission tries them: the queue's, except that
    within a priority class the requests of tenants below their fair share of the slots
    come first. With the slots full only those may take one (``unfair_victim``), and
    admission stops at the first request that can neither find nor take a slot: a tenant
    at its share whose requests lead the line (a wave of them freed at once, or its
    preempted ones, which keep their early places) would hold the others below theirs
    until its own requests finish. One tenant: the queue's order as it is."""
    queued = list(waiting)
    tenants = {member.tenancy.tenant for member in queued}
    if not queued or len(tenants | {member.tenancy.tenant for member in running}) < 2:
        return queued
    shares, held = _shares_held(running, queued, num_slots)
    return sorted(queued, key=lambda member: (member.tenancy.priority,
                                              held[member.tenancy.tenant] >= shares[member.tenancy.tenant]))


def _shares_held(running: list[Request], queued: Iterable[Request],
                 num_slots: int) -> tuple[dict[str, float], Counter[str]]:
    """Each tenant's fair share of the slots (by its weight, among the tenants running or
    waiting) and the slots it holds."""
    weights: dict[str, float] = {}
    for member in (*running, *queued):
        weights[member.tenancy.tenant] = max(weights.get(member.tenancy.tenant, 0.0), member.tenancy.weight)
    return fair_share(weights, num_slots), Counter(member.tenancy.tenant for member in running)


def unfair_victim(running: list[Request], waiting: FairQueue, request: Request,
                  num_slots: int) -> Request | None:
    """The running request to preempt so that ``request`` gets a slot, or None: one of a
    worse priority class, else, when ``request``'s tenant holds fewer slots than its fair
    share, one of a tenant that keeps at least its share without it (the most over its
    share first, its youngest request). Members of n > 1 groups are never chosen.
    Called at every step that finds the slots full: one pass over the running requests
    settles the common case of one tenant and one class without looking at the queue."""
    mine = request.tenancy
    if all(member.tenancy is mine or member.tenancy == mine for member in running):
        return None  # nobody of another tenant or class to take a slot from
    shares, held = _shares_held(running, waiting, num_slots)
    under_share = held.get(mine.tenant, 0) < shares.get(mine.tenant, 0.0)

    def eligible(member: Request) -> bool:
        theirs = member.tenancy
        if member.forks or member.fork_of is not None:
            return False
        if theirs.priority != mine.priority:
            return theirs.priority > mine.priority
        return (under_share and theirs.tenant != mine.tenant
                and held[theirs.tenant] - 1 >= shares[theirs.tenant])

    candidates = [(member.tenancy.priority, held[member.tenancy.tenant] / shares[member.tenancy.tenant],
                   order, member) for order, member in enumerate(running) if eligible(member)]
    return max(candidates, key=lambda candidate: candidate[:3])[3] if candidates else None


def first_prompts(running: list[Request], max_tokens: int) -> list[Request]:
    """The newcomers whose prompt gets a step of its own, ahead of the decoding sequences:
    a pending prompt of at most ``max_tokens`` whose tenant has nothing decoding while
    another tenant does. Such a tenant (one fairly admitted beside a flood) would otherwise
    wait for a step of the flood's decode rows plus its own prompt before its first token;
    this way it waits for one short step. Never in the one-tenant case."""
    decoding = {member.tenancy.tenant for member in running if member.num_pending == 1}
    return [member for member in running
            if decoding and member.tenancy.tenant not in decoding
            and 1 < member.num_pending <= max_tokens and not member.awaits_fork]
