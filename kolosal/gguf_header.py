"""Validate a GGUF file's header, metadata and tensor table in pure Python before libllama
ever opens it.

Junk, truncated and wrong-format files are refused here with a clear message. The check is
bounded in memory and time whatever the file claims: only regular files are opened (a FIFO
or a device such as /dev/stdin would block the reader forever), reads go through a 1 MiB
window, array payloads are skipped by seeking, never read, and every count and length is
capped below (each far above any real model; the default Gemma 3 270M has 33 keys, 236
tensors, a 262k-token vocabulary and 6.5 MB of metadata). libllama itself would read a
1 GiB array into memory, so a file over these bounds never reaches it.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_KV_PAIRS = 65_536
MAX_TENSORS = 262_144             # merged-expert MoE models have a few thousand
MAX_KEY_BYTES = 65_535            # the GGUF spec's limit on a key
MAX_STRING_BYTES = 16 << 20       # one string value (chat templates are kilobytes)
MAX_ARRAY_ELEMENTS = 1 << 24      # one array (vocabularies are ~10^5)
MAX_STRING_ELEMENTS = 1 << 22     # all string-array elements together: each is read to skip it
MAX_METADATA_BYTES = 128 << 20    # the whole key/value section, which libllama reads into memory
MAX_TENSOR_NAME_BYTES = 63        # GGML_MAX_NAME, less its NUL
MAX_TENSOR_DIMS = 4               # GGML_MAX_DIMS
_WINDOW_BYTES = 1 << 20
_HEADER = struct.Struct("<4sIQQ")
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class InvalidModelFileError(ValueError):
    """The file is not a usable GGUF model."""


class _CorruptError(ValueError):
    """Truncated or inconsistent bytes (reported as corrupt metadata)."""


class _LimitError(ValueError):
    """A count or length over the bounds above (reported as implausible metadata)."""


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    version: int
    tensor_count: int
    kv_count: int
    file_size: int


def open_regular_file(path: str | Path) -> tuple[BinaryIO, int]:
    """``path`` opened for reading, and its size, only if it is a regular file. Raises
    FileNotFoundError, IsADirectoryError, or InvalidModelFileError for a FIFO, socket or
    device, which is refused before it is opened (opening a FIFO blocks until a writer comes)."""
    file_path = Path(path)
    try:
        info = os.stat(file_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {file_path}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"model path is a directory, not a GGUF file: {file_path}")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidModelFileError(f"{file_path.name}: not a regular file (a FIFO, socket or device)")
    # O_NONBLOCK: should a FIFO be swapped in after the stat, opening it still returns at once
    fd = os.open(file_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidModelFileError(f"{file_path.name}: not a regular file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _parse_header(raw: bytes, name: str, file_size: int) -> GGUFHeader:
    if len(raw) < _HEADER.size:
        raise InvalidModelFileError(f"{name}: too short to be a GGUF file ({file_size} bytes)")
    magic, version, tensor_count, kv_count = _HEADER.unpack(raw)
    if magic != GGUF_MAGIC:
        raise InvalidModelFileError(f"{name}: not a GGUF file (bad magic {magic!r})")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFileError(f"{name}: unsupported GGUF version {version}")
    if tensor_count > MAX_TENSORS or kv_count > MAX_KV_PAIRS:
        raise InvalidModelFileError(
            f"{name}: implausible header ({tensor_count} tensors, {kv_count} metadata keys; "
            f"limits {MAX_TENSORS} and {MAX_KV_PAIRS})")
    return GGUFHeader(version=version, tensor_count=tensor_count, kv_count=kv_count,
                      file_size=file_size)


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Return the header of a GGUF file, or raise FileNotFoundError/IsADirectoryError/
    InvalidModelFileError."""
    handle, file_size = open_regular_file(path)
    with handle:
        raw = handle.read(_HEADER.size)
    return _parse_header(raw, Path(path).name, file_size)


# GGUF value types -> struct format of one value (8 = string, 9 = array: variable size).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NUMERIC_SAMPLE = 4096  # numeric arrays up to this long are read for first/maximum


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """An array value, described without reading its elements (vocabularies are huge)."""
    element_type: int
    length: int
    first: object = None   # the first element for numeric arrays (e.g. per-layer head counts)
    maximum: object = None


def read_gguf_metadata(path: str | Path) -> dict[str, object]:
    """The metadata key/value pairs of a GGUF file: scalars and strings as Python values,
    arrays as ArrayInfo. The tensor table is walked too. A truncated or inconsistent file
    raises InvalidModelFileError ("corrupt"), one over the bounds above ("implausible")."""
    name = Path(path).name
    handle, file_size = open_regular_file(path)
    with handle:
        header = _parse_header(handle.read(_HEADER.size), name, file_size)
        reader = _Reader(handle, file_size, _HEADER.size)
        try:
            metadata = dict(reader.pair() for _ in range(header.kv_count))
            reader.skip_tensor_table(header.tensor_count)
        except _LimitError as error:
            raise InvalidModelFileError(f"{name}: implausible GGUF metadata ({error})") from None
        except (_CorruptError, struct.error, UnicodeDecodeError) as error:
            raise InvalidModelFileError(f"{name}: corrupt GGUF metadata ({error})") from None
    return metadata


class _Reader:
    """Sequential reads through a bounded window over the file; what it skips it seeks over,
    so a declared gigabyte costs nothing."""

    def __init__(self, handle: BinaryIO, file_size: int, offset: int) -> None:
        self.handle = handle
        self.file_size = file_size
        self.offset = offset            # file position of the next read
        self.metadata_start = offset
        self.string_elements = 0        # budget: MAX_STRING_ELEMENTS
        self._window = b""
        self._window_start = 0

    def _view(self, size: int) -> int:
        """Index into the window where ``size`` bytes at ``offset`` start (refilled if needed)."""
        start = self.offset - self._window_start
        if start < 0 or start + size > len(self._window):
            if self.offset + size > self.file_size:
                raise _CorruptError(f"{size} bytes at offset {self.offset} run past the end of the file")
            self.handle.seek(self.offset)
            self._window = self.handle.read(max(size, _WINDOW_BYTES))
            self._window_start, start = self.offset, 0
            if len(self._window) < size:
                raise _CorruptError(f"short read at offset {self.offset}")
        return start

    def unpack(self, fmt: struct.Struct) -> tuple[object, ...]:
        start = self._view(fmt.size)
        self.offset += fmt.size
        return fmt.unpack_from(self._window, start)

    def u32(self) -> int:
        return self.integer(_U32)

    def u64(self) -> int:
        return self.integer(_U64)

    def integer(self, fmt: struct.Struct) -> int:
        value = self.unpack(fmt)[0]
        assert isinstance(value, int)
        return value

    def skip(self, size: int) -> None:
        if self.offset + size > self.file_size:
            raise _CorruptError(f"{size} bytes at offset {self.offset} run past the end of the file")
        self.offset += size

    def check_metadata_size(self, more: int) -> None:
        if self.offset + more - self.metadata_start > MAX_METADATA_BYTES:
            raise _LimitError(f"metadata over {MAX_METADATA_BYTES >> 20} MiB")

    def string(self, limit: int = MAX_STRING_BYTES) -> str:
        size = self.u64()
        if size > limit:
            raise _LimitError(f"a string of {size} bytes at offset {self.offset - 8} (limit {limit})")
        start = self._view(size)
        self.offset += size
        # libllama takes strings as bytes: an invalid one is no reason to refuse the file
        return self._window[start:start + size].decode("utf-8", "replace")

    def value(self, key: str, kind: int) -> object:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array(key)
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:
            raise _CorruptError(f"unknown GGUF value type {kind} for key '{key}'")
        return self.unpack(struct.Struct(fmt))[0]

    def array(self, key: str) -> ArrayInfo:
        kind, length = self.u32(), self.u64()
        if length > MAX_ARRAY_ELEMENTS:
            raise _LimitError(f"key '{key}' holds an array of {length} elements (limit {MAX_ARRAY_ELEMENTS})")
        if kind == _STRING:
            self.skip_strings(key, length)
            return ArrayInfo(kind, length)
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:  # nested arrays: no model metadata we read uses them
            raise _CorruptError(f"unsupported GGUF array element type {kind} for key '{key}'")
        size = struct.calcsize(fmt) * length
        self.check_metadata_size(size)
        if 0 < length <= _NUMERIC_SAMPLE:
            values = self.unpack(struct.Struct(f"<{length}{fmt[1]}"))
            return ArrayInfo(kind, length, values[0], max(values))  # type: ignore[type-var]
        self.skip(size)  # payload never read
        return ArrayInfo(kind, length)

    def skip_strings(self, key: str, count: int) -> None:
        """Each element's length must be read to find the next: a tight loop over the window."""
        self.string_elements += count
        if self.string_elements > MAX_STRING_ELEMENTS:
            raise _LimitError(f"key '{key}' brings the string-array elements to {self.string_elements} "
                              f"(limit {MAX_STRING_ELEMENTS})")
        unpack = _U64.unpack_from
        while count:
            start = self._view(8)
            window, end, index = self._window, len(self._window) - 8, start
            while count and index <= end:
                size = unpack(window, index)[0]
                if size > MAX_STRING_BYTES:
                    raise _LimitError(f"a string of {size} bytes in '{key}' (limit {MAX_STRING_BYTES})")
                index += 8 + size
                count -= 1
            self.skip(index - start)
            self.check_metadata_size(0)

    def pair(self) -> tuple[str, object]:
        key = self.string(MAX_KEY_BYTES)
        value = self.value(key, self.u32())
        self.check_metadata_size(0)
        return key, value

    def skip_tensor_table(self, count: int) -> None:
        """name, dims and type of each tensor: libllama reads names of any length, so check them."""
        for _ in range(count):
            name = self.string(MAX_TENSOR_NAME_BYTES)
            n_dims = self.u32()
            if n_dims > MAX_TENSOR_DIMS:
                raise _CorruptError(f"tensor '{name}' has {n_dims} dimensions")
            self.skip(8 * n_dims + 4 + 8)  # dims, type, data offset (libllama checks the values)
