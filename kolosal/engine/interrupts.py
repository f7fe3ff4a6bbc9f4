"""When a request may stop the decode step in flight.

A tenant that has nothing in flight on an engine (its first request beside another
tenant's flood) is admitted fairly and gets a prompt step of its own
(``fair_queue.first_prompts``), but only after the step in flight ends: on a CPU a step of
32 decode rows takes ~130 ms against the ~15 ms of a short prompt, so its first token
would wait mostly for other tenants' work. Such an arrival stops that step instead
(``Context.interrupt``: ggml stops at its next graph node; libllama removes the step's new
positions and nothing of it was committed), and the scheduler plans again with the
newcomer's prompt step first; the stopped rows are computed again in the step after.

Bounds, so the tenants already decoding keep their throughput:
- only a step with decode rows whose previous completed decode took at least
  ``MIN_STEP_S`` (a GPU's steps are shorter, and its graphs do not stop anyway);
- only in the first ``STOP_WITHIN`` of its expected time (the previous step's): a step
  further on is let finish, the newcomer waiting for at most that share of a step, so a
  stop throws away at most that share of the running tenants' work (a quarter on average);
- never the step right after a stopped one, so even a stream of newcomers costs the
  running tenants at most half of every other step;
- only one tenant's first arrival stops a step: a tenant with a request in flight waits
  for its turn as before, and with one tenant (no keys) nothing ever stops.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

MIN_STEP_S = 0.05
STOP_WITHIN = 0.5


class StepInterrupts:
    """The engine thread arms each step it may stop (``arm`` / ``disarm`` around the
    decode); any thread asks to stop the armed step (``request``). ``interrupt`` and
    ``resume`` are the context's."""

    def __init__(self, interrupt: Callable[[], None], resume: Callable[[], None]) -> None:
        self._interrupt, self._resume = interrupt, resume
        self._lock = threading.Lock()
        self._armed = False
        self._armed_at = 0.0
        self._last_decode_s = 0.0
        self._last_stopped = False

    # -- the engine thread ------------------------------------------------------------------
    def arm(self, has_decode_rows: bool) -> None:
        """Before a decode: clear any earlier request, then allow one for this step if it
        may be stopped."""
        with self._lock:
            self._resume()
            self._armed = (has_decode_rows and not self._last_stopped
                           and self._last_decode_s >= MIN_STEP_S)
            self._armed_at = time.perf_counter()

    def disarm(self, decode_s: float, stopped: bool) -> None:
        """After the decode: ``stopped`` when it returned ABORTED."""
        with self._lock:
            self._armed = False
            self._last_stopped = stopped
            if not stopped:
                self._last_decode_s = decode_s

    # -- any thread -------------------------------------------------------------------------
    def request(self) -> None:
        """Stop the step in flight if it is armed and not far along (else nothing: the next
        step is planned with the newcomer anyway)."""
        with self._lock:
            if self._armed and time.perf_counter() - self._armed_at < STOP_WITHIN * self._last_decode_s:
                self._interrupt()


class TenantsInFlight:
    """Which tenants have requests under way on an engine (its event loop's view): a
    tenant's first one beside others' is a newcomer's, the one that may stop a step."""

    def __init__(self) -> None:
        self._count: Counter[str] = Counter()

    def arrive(self, tenant: str) -> bool:
        """Count a request in; True when its tenant had none in flight while others did."""
        newcomer = not self._count[tenant] and bool(self._count)
        self._count[tenant] += 1
        return newcomer

    def leave(self, tenant: str) -> None:
        self._count[tenant] -= 1
        if not self._count[tenant]:
            del self._count[tenant]
