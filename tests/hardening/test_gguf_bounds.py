"""GGUF validation is bounded whatever the header claims (issue 16, hole 2): gigabyte arrays
are refused from their declared size without being read, so are huge strings and counts, and
anything that is not a regular file is refused before it is opened."""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kolosal.gguf_header import (
    MAX_STRING_ELEMENTS,
    InvalidModelFileError,
    read_gguf_header,
    read_gguf_metadata,
)

from . import crafted_gguf as craft

GIB = 1 << 30
HOSTILE: dict[str, Callable[[Path, Path], Path]] = {
    # the attack pass's files: two sparse 1 GiB u8 arrays (8.6 GB RSS and 140 s before), and a
    # 512 MiB string array (64M empty strings: 19 s before)
    "two-1GiB-u8-arrays": lambda src, dst: craft.with_extra_arrays(
        src, dst, [craft.u8_array("junk.a", GIB), craft.u8_array("junk.b", GIB)]),
    "512MiB-string-array": lambda src, dst: craft.with_extra_arrays(
        src, dst, [craft.empty_strings_array("junk.s", 64 << 20)]),
    "string-elements-over-budget": lambda src, dst: craft.with_extra_arrays(
        src, dst, [craft.empty_strings_array("junk.s", MAX_STRING_ELEMENTS)]),  # + the vocabulary
    "2^40-byte-string": lambda src, dst: craft.with_string_length(src, dst, "general.name", 1 << 40),
    "2^40-tensors": lambda src, dst: craft.with_header_counts(src, dst, n_tensors=1 << 40),
    "2^40-keys": lambda src, dst: craft.with_header_counts(src, dst, n_kv=1 << 40),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_metadata_is_refused_unread(name: str, model_path: Path, tmp_path: Path) -> None:
    hostile = HOSTILE[name](model_path, tmp_path / f"{name}.gguf")
    with pytest.raises(InvalidModelFileError, match="implausible"):
        read_gguf_metadata(hostile)


def test_the_crafted_layout_is_a_valid_model_when_small(model_path: Path, tmp_path: Path) -> None:
    """The same construction with small arrays parses: the refusals above are for the sizes."""
    small = craft.with_extra_arrays(model_path, tmp_path / "small.gguf",
                                    [craft.u8_array("junk.a", 64), craft.empty_strings_array("junk.s", 100)])
    metadata = read_gguf_metadata(small)
    assert metadata["general.architecture"] == "gemma3"
    assert [k for k in metadata if k.startswith("junk.")] == ["junk.a__", "junk.s__"]


def _outcome(call: Callable[[], object], unblock: Callable[[], None]) -> BaseException | None:
    """Run ``call`` on a thread. If it is still waiting after a moment, ``unblock`` releases
    what it waits on (the other end of its pipe: a reader that opened it then reads a few
    bytes and EOF), so the test never hangs; what it returns or raises tells whether it read."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: B036 - handed to the test
            outcome.append(error)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():
        unblock()
        thread.join()
    return outcome[0]


def _feed_and_close(fifo: Path) -> None:
    """A writer for a reader blocked on the FIFO: 4 bytes, then EOF."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
    os.write(fd, b"GGUF")
    os.close(fd)


@pytest.mark.parametrize("reader", [read_gguf_header, read_gguf_metadata])
def test_a_fifo_is_refused_without_blocking(reader: Callable[[Path], object], tmp_path: Path) -> None:
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    error = _outcome(lambda: reader(fifo), lambda: _feed_and_close(fifo))
    # Refused by its type: a reader that had opened it would have failed on the 4 bytes instead.
    assert isinstance(error, InvalidModelFileError) and "not a regular file" in str(error)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "stdin"])
def test_devices_are_refused(device: str) -> None:
    """Character devices, and a pipe standing for the terminal of ``model_path: /dev/stdin``
    (the test holds its write end, so a reader would wait on it)."""
    read_end, write_end = os.pipe()
    path = f"/dev/fd/{read_end}" if device == "stdin" else device

    def feed_and_close() -> None:
        os.write(write_end, b"GGUF")
        os.close(write_end)
    try:
        error = _outcome(lambda: read_gguf_header(path), feed_and_close)
    finally:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):  # the write end may be closed already
                os.close(fd)
    assert isinstance(error, InvalidModelFileError) and "not a regular file" in str(error), error
