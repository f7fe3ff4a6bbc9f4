"""Validate a GGUF file's header in pure Python before libllama ever opens it.

Junk, truncated-to-nothing and wrong-format files are refused here with a clear message,
so the native loader only sees files that at least claim to be GGUF.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_TENSORS = 1_000_000
MAX_KV_PAIRS = 1_000_000
_HEADER = struct.Struct("<4sIQQ")


class InvalidModelFileError(ValueError):
    """The file is not a usable GGUF model."""


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    version: int
    tensor_count: int
    kv_count: int
    file_size: int


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Return the header of a GGUF file, or raise FileNotFoundError/IsADirectoryError/
    InvalidModelFileError."""
    file_path = Path(path)
    if not file_path.exists():
        raise FileNotFoundError(f"model file not found: {file_path}")
    if file_path.is_dir():
        raise IsADirectoryError(f"model path is a directory, not a GGUF file: {file_path}")
    file_size = file_path.stat().st_size
    with file_path.open("rb") as handle:
        raw = handle.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise InvalidModelFileError(f"{file_path.name}: too short to be a GGUF file ({file_size} bytes)")
    magic, version, tensor_count, kv_count = _HEADER.unpack(raw)
    if magic != GGUF_MAGIC:
        raise InvalidModelFileError(f"{file_path.name}: not a GGUF file (bad magic {magic!r})")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFileError(f"{file_path.name}: unsupported GGUF version {version}")
    if tensor_count > MAX_TENSORS or kv_count > MAX_KV_PAIRS:
        raise InvalidModelFileError(
            f"{file_path.name}: implausible header ({tensor_count} tensors, {kv_count} metadata keys)")
    return GGUFHeader(version=version, tensor_count=tensor_count, kv_count=kv_count,
                      file_size=file_size)


# GGUF value types -> struct format of one value (8 = string, 9 = array: variable size).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_STRING_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """An array value, described without reading its elements (vocabularies are huge)."""
    element_type: int
    length: int
    first: object = None   # the first element for numeric arrays (e.g. per-layer head counts)
    maximum: object = None


def read_gguf_metadata(path: str | Path) -> dict[str, object]:
    """The metadata key/value pairs of a (header-checked) GGUF file: scalars and strings as
    Python values, arrays as ArrayInfo. Pure Python over mmap; a truncated or inconsistent
    file raises InvalidModelFileError."""
    header = read_gguf_header(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        reader = _MetadataReader(data, _HEADER.size)
        try:
            return dict(reader.pair() for _ in range(header.kv_count))
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as error:
            raise InvalidModelFileError(f"{Path(path).name}: corrupt GGUF metadata ({error})") from None


class _MetadataReader:
    def __init__(self, data: mmap.mmap, offset: int) -> None:
        self.data = data
        self.offset = offset

    def unpack(self, fmt: str) -> object:
        value = struct.unpack_from(fmt, self.data, self.offset)[0]
        self.offset += struct.calcsize(fmt)
        return value

    def unpack_int(self, fmt: str) -> int:
        value = self.unpack(fmt)
        assert isinstance(value, int)
        return value

    def string(self) -> str:
        size = self.unpack_int("<Q")
        if size > MAX_STRING_BYTES or self.offset + size > len(self.data):
            raise ValueError(f"string of {size} bytes at offset {self.offset}")
        # libllama takes strings as bytes: an invalid one is no reason to refuse the file
        text = bytes(self.data[self.offset:self.offset + size]).decode("utf-8", "replace")
        self.offset += size
        return text

    def skip_string(self) -> None:
        size = self.unpack_int("<Q")
        if size > MAX_STRING_BYTES:
            raise ValueError(f"string of {size} bytes at offset {self.offset}")
        self.offset += size

    def value(self, kind: int) -> object:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.unpack(fmt)

    def array(self) -> ArrayInfo:
        kind, length = self.unpack_int("<I"), self.unpack_int("<Q")
        if kind == _STRING:
            for _ in range(length):
                self.skip_string()
            return ArrayInfo(kind, length)
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:  # nested arrays: no model metadata we read uses them
            raise ValueError(f"unsupported GGUF array element type {kind}")
        size = struct.calcsize(fmt)
        if self.offset + size * length > len(self.data):
            raise ValueError(f"array of {length} elements runs past the end of the file")
        values = struct.unpack_from(f"<{length}{fmt[1]}", self.data, self.offset) if length <= 4096 else ()
        self.offset += size * length
        return ArrayInfo(kind, length, values[0] if values else None, max(values) if values else None)

    def pair(self) -> tuple[str, object]:
        key = self.string()
        return key, self.value(self.unpack_int("<I"))
