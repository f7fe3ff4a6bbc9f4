"""A copy of a real GGUF model with metadata keys added (e.g. ``general.sampling.temp``),
written into a test's tmp dir with the ``gguf`` package's types and constants: the keys go
right after the file header, followed by a padding string key so the added bytes are a
multiple of the data alignment (the tensor data then stays aligned where the tensor table
says it is); the rest of the file is copied as it is."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gguf

_HEADER = struct.Struct("<4sIQQ")
PAD_KEY = "kolosal.test.padding"


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _entry(key: str, value: int | float | str) -> bytes:
    if isinstance(value, str):
        return _string(key) + struct.pack("<I", gguf.GGUFValueType.STRING) + _string(value)
    if isinstance(value, int):
        return _string(key) + struct.pack("<Ii", gguf.GGUFValueType.INT32, value)
    return _string(key) + struct.pack("<If", gguf.GGUFValueType.FLOAT32, value)


def with_metadata(source: Path, dest: Path, values: dict[str, int | float | str]) -> Path:
    """``source`` with ``values`` added to its metadata (ints as INT32, floats as FLOAT32)."""
    alignment = gguf.GGUFReader(source).alignment
    added = b"".join(_entry(key, value) for key, value in values.items())
    pad = _entry(PAD_KEY, "")
    added += _entry(PAD_KEY, "x" * (-(len(added) + len(pad)) % alignment))
    assert len(added) % alignment == 0
    with source.open("rb") as reader, dest.open("wb") as writer:
        magic, version, n_tensors, n_kv = _HEADER.unpack(reader.read(_HEADER.size))
        writer.write(_HEADER.pack(magic, version, n_tensors, n_kv + len(values) + 1) + added)
        shutil.copyfileobj(reader, writer, 1 << 20)
    return dest
