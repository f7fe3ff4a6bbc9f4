"""Waiting on a condition instead of sleeping for a guessed time: a test goes on as soon as
what it waits for is true, and fails with a message when it never becomes true."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def until(condition: Callable[[], object], timeout_s: float = 30.0, interval: float = 0.02,
          what: str = "the condition") -> None:
    """Poll ``condition`` until it is true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        time.sleep(interval)


async def until_async(condition: Callable[[], object], timeout_s: float = 30.0,
                      interval: float = 0.01, what: str = "the condition") -> None:
    """``until`` for a coroutine: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(interval)
