"""The instruction-set features of this machine's CPU: what a native build is made for.

A native build (``-march=native``) runs only on CPUs with at least the features of the one
it was compiled on: copied to a CPU with fewer (a shared home directory, a CI cache, an
image), it dies with SIGILL on the first decode. So the build cache key of a native build
holds this set (``build_llama.py``), the loader refuses a native build whose set this CPU
does not cover, and the cffi helpers (also compiled ``-march=native``) are keyed by it.

Standard library only, and no package-relative import: ``build_llama.py`` loads this file
by path before anything is installed.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

CPUINFO = Path(os.environ.get("KOLOSAL_CPUINFO", "/proc/cpuinfo"))
# /proc/cpuinfo "flags" that are instruction sets a compiler can target. The rest (bugs,
# power management, hypervisor hints) differ between hosts of the same CPU and would only
# cause rebuilds.
_X86_ISA_PREFIXES = ("sse", "ssse", "avx", "amx", "fma", "f16c", "bmi", "popcnt", "aes",
                     "vaes", "pclmul", "vpclmul", "gfni", "sha", "movbe", "lzcnt", "abm",
                     "adx", "xsave", "rdrnd", "rdseed", "cx16", "mmx", "clflushopt", "clwb",
                     "serialize", "waitpkg", "movdir", "prefetchw", "lahf_lm", "sse4a")


def host_cpu_features(cpuinfo: Path | None = None) -> frozenset[str]:
    """This CPU's instruction-set features, lower case; empty where they cannot be read."""
    path = cpuinfo or CPUINFO
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return _darwin_features() if platform.system() == "Darwin" else frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "flags":  # x86: the kernel's names for CPUID bits
            return frozenset(flag for flag in value.split() if flag.startswith(_X86_ISA_PREFIXES))
        if name == "features":  # ARM: every listed feature is an ISA extension
            return frozenset(value.split())
    return frozenset()


def _darwin_features() -> frozenset[str]:
    try:
        out = subprocess.run(["sysctl", "-a", "hw.optional"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.split(":")[0].strip() for line in out.splitlines()
                     if line.strip().endswith(": 1"))


def describe(features: frozenset[str]) -> str:
    """The features that matter to a reader of an error message, in a short line."""
    wide = sorted(f for f in features if f.startswith(("avx", "amx")))
    return " ".join(wide) if wide else (" ".join(sorted(features)[:24]) or "unknown")
