"""Validate a GGUF file's header in pure Python before libllama ever opens it.

Junk, truncated-to-nothing and wrong-format files are refused here with a clear message,
so the native loader only sees files that at least claim to be GGUF.
"""
from __future__ import annotations

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
