"""Hostile GGUF files, written into a test's tmp dir (never committed), cheaply: the real
default model's header, metadata and tensor table are copied and edited, and the tensor data
and any declared payload are left as a sparse hole (a 2 GiB file costs a few MB of disk).
Types and constants come from the ``gguf`` package (llama.cpp's own Python writer)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import gguf

# The default model's header, metadata and tensor table end at 6.5 MB; copy a margin.
HEAD_BYTES = 16 << 20
_HEADER = struct.Struct("<4sIQQ")
_FORMATS = {gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.UINT64: "<Q",
            gguf.GGUFValueType.INT32: "<i", gguf.GGUFValueType.FLOAT32: "<f"}


def _head(source: Path) -> tuple[bytearray, int]:
    with source.open("rb") as handle:
        head = bytearray(handle.read(HEAD_BYTES))
    magic, version, _, _ = _HEADER.unpack_from(head)
    assert magic == struct.pack("<I", gguf.GGUF_MAGIC) and version == gguf.GGUF_VERSION
    return head, source.stat().st_size


def _write(dest: Path, parts: list[bytes | int], size: int) -> Path:
    """bytes are written, ints are holes of that many zero bytes; then the file is extended
    (sparsely) to ``size``."""
    with dest.open("wb") as handle:
        for part in parts:
            if isinstance(part, int):
                handle.seek(part, 1)
            else:
                handle.write(part)
        handle.truncate(max(size, handle.tell()))
    return dest


def with_value(source: Path, dest: Path, key: str, value: int | float,
               kind: gguf.GGUFValueType = gguf.GGUFValueType.UINT32) -> Path:
    """A copy of ``source`` whose scalar ``key`` (of type ``kind``) holds ``value``: e.g. a
    ``gemma3.block_count`` of 0 or 100000."""
    head, size = _head(source)
    encoded = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind)
    at = head.find(encoded)
    assert at > 0 and head.find(encoded, at + 1) < 0, f"{key} not found once in {source.name}"
    struct.pack_into(_FORMATS[kind], head, at + len(encoded), value)
    return _write(dest, [bytes(head)], size)


def block_count_key(source: Path) -> str:
    """``<arch>.block_count`` of the source model (the architecture is its first string)."""
    head, _ = _head(source)
    marker = b"general.architecture"
    at = head.find(marker) + len(marker) + 4  # key, then the STRING type tag
    (length,) = struct.unpack_from("<Q", head, at)
    arch = head[at + 8:at + 8 + length].decode()
    return gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)


@dataclass(frozen=True)
class ExtraArray:
    """One metadata array added in front of the model's own keys: ``count`` elements of
    ``element``, whose payload (``payload_bytes`` of zeros) is a sparse hole."""
    key: str
    element: gguf.GGUFValueType
    count: int
    payload_bytes: int

    def encoded(self, key: str) -> list[bytes | int]:
        return [struct.pack("<Q", len(key)) + key.encode()
                + struct.pack("<IIQ", gguf.GGUFValueType.ARRAY, self.element, self.count),
                self.payload_bytes]


def u8_array(key: str, count: int) -> ExtraArray:
    return ExtraArray(key, gguf.GGUFValueType.UINT8, count, count)


def empty_strings_array(key: str, count: int) -> ExtraArray:
    """``count`` empty strings: each is an 8-byte zero length, so every one must be read to
    find the next (512 MiB of them is 64M elements)."""
    return ExtraArray(key, gguf.GGUFValueType.STRING, count, 8 * count)


def with_extra_arrays(source: Path, dest: Path, arrays: list[ExtraArray]) -> Path:
    """A copy of ``source`` with ``arrays`` added to its metadata. Each added entry is padded
    (by its key's length) to a multiple of the data alignment, so the tensor data of the copy
    stays where the tensor table says it is: without the bounds, the file would load."""
    head, size = _head(source)
    magic, version, n_tensors, n_kv = _HEADER.unpack_from(head)
    parts: list[bytes | int] = [_HEADER.pack(magic, version, n_tensors, n_kv + len(arrays))]
    added = 0
    for array in arrays:
        fixed = 8 + 4 + 4 + 8 + array.payload_bytes
        key = array.key
        while (fixed + len(key)) % gguf.GGUF_DEFAULT_ALIGNMENT:
            key += "_"
        parts += array.encoded(key)
        added += fixed + len(key)
    parts.append(bytes(head[_HEADER.size:]))
    return _write(dest, parts, size + added)


def with_header_counts(source: Path, dest: Path, n_tensors: int | None = None,
                       n_kv: int | None = None) -> Path:
    """A copy whose header declares other tensor and key counts."""
    head, size = _head(source)
    magic, version, tensors, kv = _HEADER.unpack_from(head)
    _HEADER.pack_into(head, 0, magic, version, tensors if n_tensors is None else n_tensors,
                      kv if n_kv is None else n_kv)
    return _write(dest, [bytes(head)], size)


def with_string_length(source: Path, dest: Path, key: str, length: int) -> Path:
    """A copy whose string value ``key`` declares ``length`` bytes (e.g. 2**40)."""
    head, size = _head(source)
    encoded = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", gguf.GGUFValueType.STRING)
    at = head.find(encoded)
    assert at > 0, f"{key} not found in {source.name}"
    struct.pack_into("<Q", head, at + len(encoded), length)
    return _write(dest, [bytes(head)], size)
