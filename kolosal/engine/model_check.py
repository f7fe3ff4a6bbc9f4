"""The isolated model-file check, run before a file is loaded into the server process.

libllama aborts its process on some inconsistent files (a GGML_ASSERT on the hyper-
parameters, e.g. ``block_count`` 0 or 100000), and an abort cannot be caught: loaded in the
server, such a file would end every engine and every stream. So a file is checked first:

1. in pure Python, bounded in memory and time (``kolosal.gguf_header``): regular files
   only, every count and length capped, array payloads skipped unread;
2. in a short-lived child process (``python -m kolosal.llama.probe``) that loads the
   hyper-parameters, vocabulary and tensor table and builds a context of the default engine
   shape without allocating or reading weights. A crash, abort, non-zero exit or timeout of
   the child refuses the file (InvalidModelFileError, HTTP 400) and touches nothing else;
3. in the same child, a decode of a few tokens with the real weights on all cores: a
   libllama that cannot run on this CPU (built for another one, or ggml's AMX kernels) dies
   there with SIGILL, and the engine fails with LibraryCannotRunError, which names the
   signal, this CPU's features and the remedy, instead of the server dying on its first
   request. Any other crash while decoding refuses the file, as in 2.

Verdicts are remembered per file version (path, device, inode, size, mtime and ctime: a
file patched in place with its mtime restored still changes its ctime), whatever the
engine's shape, so loading the same file again costs one ``stat``. About 1.5 s of CPU for
the default model.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..gguf_header import InvalidModelFileError, read_gguf_metadata
from ..llama.cpu_features import describe, host_cpu_features

logger = logging.getLogger(__name__)
CHECK_TIMEOUT_S = 120.0
MAX_CONCURRENT_CHECKS = 2   # children at once (~90 MB each); more checks wait their turn
MAX_VERDICTS = 256
STDERR_TAIL_BYTES = 16 << 10
PROBE_MODULE = "kolosal.llama.probe"
REFUSED_PREFIX = "kolosal-probe: refused: "  # kolosal.llama.probe's refusal line (not imported:
EXIT_REFUSED = 3                              # engine code never imports the native layer here)
DECODING_LINE = "kolosal-probe: decoding"     # ... and the line that starts its decode phase
LIBRARY_REMEDY = ("rebuild libllama for this machine: `python build_llama.py` (a native build for "
                  "this CPU, without AMX), or `python build_llama.py --portable` (runs on any CPU)")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# The context the child builds: the default engine's. What a file can break there (its
# compute graph) does not depend on the shape; the shape only scales the simulated sizes.
CHECK_N_CTX, CHECK_N_BATCH, CHECK_N_SEQ_MAX = 4096, 512, 8


class LibraryCannotRunError(RuntimeError):
    """libllama died decoding on this CPU (SIGILL): no model will run until it is rebuilt."""


@dataclass(frozen=True, slots=True)
class _FileVersion:
    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


Verdict = InvalidModelFileError | LibraryCannotRunError | None  # None: loadable


class _Verdicts:
    """file version -> its verdict; least recently used dropped first. A memo of a pure
    function of the file's bytes (and this process's library), like functools.lru_cache."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[_FileVersion, Verdict] = OrderedDict()

    def get(self, key: _FileVersion) -> tuple[bool, Verdict]:
        if key not in self._entries:
            return False, None
        self._entries.move_to_end(key)
        return True, self._entries[key]

    def put(self, key: _FileVersion, verdict: Verdict) -> None:
        self._entries[key] = verdict
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


_verdicts = _Verdicts(MAX_VERDICTS)
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _check_turn() -> asyncio.Semaphore:
    """The running loop's limit on concurrent checks (a semaphore belongs to one loop)."""
    loop = asyncio.get_running_loop()
    turn = _turns.get(loop)
    if turn is None:
        turn = _turns[loop] = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
    return turn


def _file_version(path: str) -> _FileVersion:
    info = os.stat(path)
    return _FileVersion(path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                        info.st_ctime_ns)


async def check_model_file(path: str) -> None:
    """Return when the model file at ``path`` is safe to load into this process. Raises
    FileNotFoundError, IsADirectoryError, InvalidModelFileError (not a regular file, over
    the header bounds, refused by libllama, or crashing it), LibraryCannotRunError (the
    library dies decoding on this CPU) or OSError."""
    key = await asyncio.to_thread(_file_version, path)
    known, verdict = _verdicts.get(key)
    if not known:
        async with _check_turn():
            known, verdict = _verdicts.get(key)  # checked while this one waited its turn
            if not known:
                verdict, final = await _check(path)
                if final:  # a timeout may be a busy machine: not remembered
                    _verdicts.put(key, verdict)
    if verdict is not None:
        raise type(verdict)(str(verdict))  # a fresh one: a raise extends a traceback


async def model_file_error(path: str) -> Exception | None:
    """``check_model_file``'s error, returned rather than raised."""
    try:
        await check_model_file(path)
    except Exception as error:
        return error
    return None


async def _check(path: str) -> tuple[Verdict, bool]:
    """(None when loadable, else the error that says why not; whether that is final)."""
    name = Path(path).name
    started = time.monotonic()
    try:
        await asyncio.to_thread(read_gguf_metadata, path)
    except InvalidModelFileError as error:
        return error, True
    status, stderr = await _run_probe(path)
    logger.info("model file check of %s: exit status %s in %.2fs", name, status,
                time.monotonic() - started)
    if status == 0:
        return None, True
    if status is None:
        return InvalidModelFileError(
            f"{name}: the isolated load check did not finish in {CHECK_TIMEOUT_S:g}s"), False
    lines = stderr.decode("utf-8", "replace").splitlines()
    if status == EXIT_REFUSED and lines and lines[-1].startswith(REFUSED_PREFIX):
        return InvalidModelFileError(
            f"{name}: libllama cannot load it: {lines[-1][len(REFUSED_PREFIX):]}"), True
    if status == -signal.SIGILL and DECODING_LINE in lines:  # never the file's fault
        return LibraryCannotRunError(
            f"libllama died with SIGILL (illegal instruction) decoding {name} in the isolated "
            f"check: it was built for instructions this CPU does not run (this CPU: "
            f"{describe(host_cpu_features())}). To fix, {LIBRARY_REMEDY}"), True
    phase = "decoding with" if DECODING_LINE in lines else "loading"
    return InvalidModelFileError(f"{name}: {phase} it crashed libllama in the isolated load check "
                                 f"({_describe(status, lines)})"), True


def _describe(status: int, lines: list[str]) -> str:
    """The exit status or signal, and the assert that fired when there is one."""
    how = f"exit status {status}"
    if status < 0:
        try:
            how = signal.Signals(-status).name
        except ValueError:
            how = f"signal {-status}"
    failed = [line for line in lines if "GGML_ASSERT" in line or "GGML_ABORT" in line]
    detail = failed[-1] if failed else (lines[-1] if lines else "")
    detail = re.sub(r"\S*/", "", detail.strip())[:300]  # source paths: file names only
    return f"{how}: {detail}" if detail else how


async def _run_probe(path: str) -> tuple[int | None, bytes]:
    """The child's exit status (negative: killed by that signal; None: timed out) and the
    tail of its stderr."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", PROBE_MODULE, path, str(CHECK_N_CTX), str(CHECK_N_BATCH),
            str(CHECK_N_SEQ_MAX),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env)
    except OSError as error:
        raise RuntimeError(f"could not start the model file check: {error}") from error
    async def finish() -> tuple[int | None, bytes]:
        assert process.stderr is not None
        stderr = await _tail(process.stderr)
        return await process.wait(), stderr

    try:
        return await asyncio.wait_for(finish(), CHECK_TIMEOUT_S)
    except asyncio.TimeoutError:
        return None, b""
    finally:
        if process.returncode is None:  # timed out, or the caller was cancelled
            process.kill()
            await asyncio.shield(process.wait())


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """Read to EOF, keeping only the last STDERR_TAIL_BYTES."""
    kept = b""
    while chunk := await stream.read(1 << 16):
        kept = (kept + chunk)[-STDERR_TAIL_BYTES:]
    return kept
