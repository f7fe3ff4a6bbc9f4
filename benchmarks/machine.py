"""What machine a number came from, and how busy it was: benchmark figures are worthless
without the CPU, the core count and a note of the noise beside them."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MachineInfo:
    cpu_model: str
    cores: int
    memory_gib: float
    system: str
    python: str


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def machine_info() -> MachineInfo:
    return MachineInfo(cpu_model=cpu_model(), cores=os.cpu_count() or 0, memory_gib=memory_gib(),
                       system=f"{platform.system()} {platform.release()} {platform.machine()}",
                       python=platform.python_version())


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(window_s: float = 1.0) -> float | None:
    """Share of all CPUs busy over the next ``window_s`` seconds (None where unknown).
    Sampled while our own servers sit idle, it is the background noise of a measurement."""
    before = _cpu_times()
    time.sleep(window_s)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)
