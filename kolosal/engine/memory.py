"""How much memory an engine will take, estimated from its GGUF metadata before loading,
and byte sizes as operators write them ("8GiB", "512M")."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ..gguf_header import ArrayInfo, read_gguf_metadata
from .config import KV_CACHE_BYTES, EngineConfig
from .embedding import resolve_pooling, step_shape

F32_BYTES = 4
# Compute scratch (activations of one ubatch) is not in the metadata; it is small next to
# weights + KV for the models we serve. A fixed margin plus a share of the rest covers it.
SCRATCH_FIXED_BYTES = 32 << 20
SCRATCH_SHARE = 0.05

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str | int | float) -> int:
    """Bytes from 8589934592, "8GiB", "8 GB", "512M" (K/M/G/T are powers of 1000, KiB... of 1024)."""
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return int(text)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 8GiB, 512MB, 1073741824)")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.1f} MiB"


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights: int      # the tensors: the file size (mmap'd or copied to the device)
    kv_cache: int     # n_ctx cells x layers x KV heads x (K dims x K type + V dims x V type)
    buffers: int      # logits of one step's rows + compute scratch

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers

    def as_dict(self) -> dict[str, int]:
        return {"weights_bytes": self.weights, "kv_cache_bytes": self.kv_cache,
                "buffers_bytes": self.buffers, "total_bytes": self.total}


def _int(value: object, default: int = 0) -> int:
    if isinstance(value, ArrayInfo):  # per-layer values (e.g. head_count_kv): the largest
        value = value.maximum or default
    return int(value) if isinstance(value, (int, float)) else default


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the estimate needs from a model's metadata."""
    n_layer: int
    k_dims_per_cell: int    # per layer: KV heads x K dims
    v_dims_per_cell: int    # per layer: KV heads x V dims
    n_vocab: int


@functools.lru_cache(maxsize=32)
def _model_shape(path: str, size: int, mtime_ns: int) -> ModelShape:
    """Parsed once per file version (reading a 262k-token vocabulary takes ~0.2 s)."""
    metadata = read_gguf_metadata(path)
    arch = str(metadata.get("general.architecture", ""))

    def key(name: str, default: int = 0) -> int:
        return _int(metadata.get(f"{arch}.{name}"), default)

    n_embd = key("embedding_length")
    n_head = key("attention.head_count", 1) or 1
    n_head_kv = key("attention.head_count_kv", n_head) or n_head
    head_k = key("attention.key_length", n_embd // n_head)
    head_v = key("attention.value_length", n_embd // n_head)
    tokens = metadata.get("tokenizer.ggml.tokens")
    return ModelShape(n_layer=key("block_count"), k_dims_per_cell=n_head_kv * head_k,
                      v_dims_per_cell=n_head_kv * head_v,
                      n_vocab=tokens.length if isinstance(tokens, ArrayInfo) else 0)


def _output_rows(config: EngineConfig) -> int:
    """Rows of libllama's output buffer (n_vocab floats each): one per sequence for a
    generation engine; every token of a step for an embedding context, where each token
    is an output (512 rows: 512 MiB for a 262k vocabulary)."""
    if resolve_pooling(config) is not None:
        return step_shape(config)[0]
    return max(config.resolved_parallel, 1)


def estimate_memory(config: EngineConfig) -> MemoryEstimate:
    """Weights + KV cache + buffers of ``config``'s engine, before loading it."""
    stat = Path(config.model_path).stat()
    shape = _model_shape(config.model_path, stat.st_size, stat.st_mtime_ns)
    weights = stat.st_size
    type_k, type_v = config.resolved_cache_types
    per_cell = shape.k_dims_per_cell * KV_CACHE_BYTES[type_k] + shape.v_dims_per_cell * KV_CACHE_BYTES[type_v]
    kv_cache = int(config.n_ctx * shape.n_layer * per_cell)
    logits = shape.n_vocab * F32_BYTES * _output_rows(config)
    scratch = SCRATCH_FIXED_BYTES + int(SCRATCH_SHARE * (weights + kv_cache))
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, buffers=logits + scratch)
