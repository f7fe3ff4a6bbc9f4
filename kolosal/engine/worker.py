"""The skeleton of an engine's thread, shared by the generation scheduler's thread
(engine_thread.py) and the embedding batcher (embedding.py).

One daemon thread owns the engine's libllama state. Other threads talk to it through an
inbox of commands only; it blocks on the inbox only when it has no work, and otherwise
takes in what arrived between two steps. Submissions are counted against a queue bound
under a lock (so concurrent handlers cannot overfill it) and refused once the engine stops.
A shutdown ends the loop; commands that raced it are still answered. Results cross back to
asyncio once per step and event loop (``post``).
"""
from __future__ import annotations

import abc
import asyncio
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import EngineOverloadedError, EngineStoppedError

C = TypeVar("C")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Shutdown:
    reason: str


def post(items: Iterable[tuple[asyncio.AbstractEventLoop, T]], deliver: Callable[[list[T]], None]) -> None:
    """Hand each event loop its items in one ``call_soon_threadsafe(deliver, items)``; a
    closed loop has nobody listening and is skipped."""
    by_loop: dict[asyncio.AbstractEventLoop, list[T]] = defaultdict(list)
    for loop, item in items:
        by_loop[loop].append(item)
    for event_loop, batch in by_loop.items():
        try:
            event_loop.call_soon_threadsafe(deliver, batch)
        except RuntimeError:  # that event loop is closed
            pass


class WorkerThread(abc.ABC, Generic[C]):
    """A thread serving commands of type ``C``. Subclasses say what work is pending
    (``has_work``), take a command in (``take``), run one step (``step``), end everything
    at shutdown (``stop``) and answer a command that arrived after it (``refuse``).
    ``queued_locked`` is what the queue bound counts, read under the lock; ``submitted``
    is the part of it the base class counts, released with ``uncount``."""

    def __init__(self, name: str, max_queue: int) -> None:
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue[C | Shutdown] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self.submitted = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- called from the event loop -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def shutdown(self, reason: str = "the engine was stopped") -> None:
        with self._lock:
            self._stopped = True
        self._inbox.put(Shutdown(reason))

    def enqueue(self, command: C, size: int) -> None:
        """Queue a command worth ``size`` queue places, or refuse it (503s): the engine is
        stopping, or the queue bound would be passed."""
        with self._lock:
            if self._stopped:
                raise EngineStoppedError("the engine is shutting down")
            if self.queued_locked() + size > self.max_queue:
                raise EngineOverloadedError(
                    f"the engine queue is full ({self.max_queue} waiting requests); retry later")
            self.submitted += size
        self._inbox.put(command)

    def send(self, command: C) -> None:
        """A command outside the queue bound (an abort)."""
        self._inbox.put(command)

    def uncount(self, size: int) -> None:
        with self._lock:
            self.submitted -= size

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stop = self._take_commands(block=not self.has_work)
            if stop is not None:
                self.stop(stop.reason)
                self._refuse_stragglers(stop.reason)
                return
            self.step()

    def _take_commands(self, block: bool) -> Shutdown | None:
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return None
            block = False
            if isinstance(command, Shutdown):
                return command
            self.take(command)

    def _refuse_stragglers(self, reason: str) -> None:
        """Commands that raced the shutdown still get an answer."""
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not isinstance(command, Shutdown):
                self.refuse(command, reason)

    # -- the subclass's part ----------------------------------------------------------------
    @property
    @abc.abstractmethod
    def has_work(self) -> bool: ...

    @abc.abstractmethod
    def queued_locked(self) -> int: ...

    @abc.abstractmethod
    def take(self, command: C) -> None: ...

    @abc.abstractmethod
    def step(self) -> None: ...

    @abc.abstractmethod
    def stop(self, reason: str) -> None: ...

    @abc.abstractmethod
    def refuse(self, command: C, reason: str) -> None: ...
