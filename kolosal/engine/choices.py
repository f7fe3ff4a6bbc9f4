"""The sequences of one client request (its n choices, its prompts: ``Request.group``) and
their share of the slots. Pure Python, used by the scheduler.

Policy:
- The n choices of a request share one prefill: the first computes the prompt, the others
  hold slots and wait for its KV (``Request.fork_of``), then each samples on its own.
- No client request keeps more than its share of the slots (half, at least 1:
  ``group_share``) while another request waits. Alone it may take every slot; when a
  newcomer finds none free, it takes the slot of the youngest member beyond the share
  (``over_share_victim``; its cells stay as the slot's cache, and it comes back, next in
  line, when a slot frees). Choices that get no slot when their group is admitted wait in
  the group's place in line and compute the prompt themselves (sharing what is computed of
  it by then: ``KVCache.take_slot``); members beyond the share wait for a free slot and let
  the requests behind them pass (``Scheduler._admit``). A choice's output does not depend on
  how it got its prompt: its seed is its own (``SamplingParams.for_choice``), its logits
  the prompt's, up to the batch-shape rounding the README's Known limits describe.
"""
from __future__ import annotations

from collections import Counter

from .fair_queue import FairQueue
from .request import Request, RequestStatus


def group_share(num_slots: int) -> int:
    """The slots one client request keeps while others wait: half, at least 1."""
    return max(1, num_slots // 2)


def held_by(running: list[Request], group: str) -> int:
    return sum(1 for member in running if member.group == group)


def holds_share(running: list[Request], request: Request, num_slots: int) -> bool:
    """Whether ``request``'s client request already holds its share of the slots."""
    return held_by(running, request.group) >= group_share(num_slots)


def over_share_victim(running: list[Request], request: Request, num_slots: int) -> Request | None:
    """The running request to preempt so that ``request`` gets a slot, or None: the
    youngest member of the client request holding the most slots, when that is more than
    its share while ``request``'s holds less than its own, of a priority class no better
    than ``request``'s. A first choice whose prompt its siblings wait for is never chosen
    (a sibling that waits for it is: it has nothing computed)."""
    share = group_share(num_slots)
    held = Counter(member.group for member in running)
    if not held or held[request.group] >= share:
        return None
    group, count = held.most_common(1)[0]
    if count <= share:
        return None
    members = [member for member in running if member.group == group and not member.forks
               and member.tenancy.priority >= request.tenancy.priority]
    return members[-1] if members else None


def split_group(leader: Request, waiting: FairQueue, running: list[Request], num_free: int,
                num_slots: int) -> list[Request]:
    """The choices of a group just admitted (``leader`` holds a slot) that get a slot now:
    as many as are free, and no more than the group's share while another request waits.
    The others leave the group for the wait queue, in its place in line."""
    room = num_free
    if any(other.group != leader.group for other in waiting):
        room = min(room, group_share(num_slots) - held_by(running, leader.group))
    starting: list[Request] = []
    for fork in list(leader.forks):
        fork.queue_key = leader.queue_key  # its group's place in line, should it come back
        if len(starting) < room:
            starting.append(fork)
            continue
        leader.forks.remove(fork)
        fork.fork_of = None
        waiting.push(fork)
    return starting


def detach_forks(request: Request, waiting: FairQueue) -> None:
    """The group's first request is gone before its prompt was computed: each sibling
    computes the prompt itself (queued ones go back to the front of the queue)."""
    for fork in request.forks:
        fork.fork_of = None
        if fork.status == RequestStatus.WAITING:
            fork.queue_key = request.queue_key  # its group's place in line
            waiting.push(fork)
    request.forks.clear()
