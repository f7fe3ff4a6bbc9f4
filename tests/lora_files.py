"""Small LoRA adapters for the default model (Gemma 3 270M), written with the ``gguf``
package into a test's tmp dir: random low-rank ``lora_a``/``lora_b`` pairs for the
attention q and v projections of a few layers, shaped from the model's own tensors (ggml
order: ``lora_a`` is [n_in, rank], ``lora_b`` [rank, n_out], as src/llama-adapter.cpp
checks them)."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np


@functools.lru_cache(maxsize=4)
def model_shapes(model_path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The model's architecture and each tensor's ggml shape (ne0 first)."""
    reader = gguf.GGUFReader(model_path)
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    return arch, {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}


def write_lora(path: Path, model_path: Path, *, seed: int = 0, rank: int = 4,
               layers: Sequence[int] = (0, 1, 2),
               targets: Sequence[str] = ("attn_q", "attn_v"), zero_b: bool = False, alpha: float = 4.0,
               strength: float = 1.0, arch: str | None = None, shrink: int = 0) -> Path:
    """Write an adapter; ``zero_b``: every lora_b all zeros (the adapter changes nothing);
    ``arch``: claim another architecture; ``shrink``: lora_a this much narrower than the
    model's input (a shape that belongs to another base model)."""
    model_arch, shapes = model_shapes(model_path)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch or model_arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            n_in, n_out = shapes[name][0] - shrink, shapes[name][1]
            lora_a = rng.normal(0.0, 1.0 / np.sqrt(n_in), (rank, n_in)).astype(np.float32)
            lora_b = (np.zeros((n_out, rank), np.float32) if zero_b
                      else rng.normal(0.0, strength, (n_out, rank)).astype(np.float32))
            writer.add_tensor(f"{name}.lora_a", lora_a)
            writer.add_tensor(f"{name}.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
