"""Give freed heap memory back to the operating system after an engine is closed.

glibc keeps freed memory in per-thread arenas for reuse: after an engine's model, KV cache
and buffers are freed, the process's RSS stays where it was and grows in steps as new
threads get arenas (measured: 93 -> 186 MiB over 110 load/unload cycles). ``malloc_trim``
hands the free pages of every arena back (the same cycles stay flat at 46 MiB), so DELETE
and idle unload really return memory. Elsewhere (musl, macOS) it is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
