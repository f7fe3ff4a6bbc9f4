"""LoRA adapters on the real model: loading, refusals with their reasons, and what a set of
adapters does to one decode's logits."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kolosal.llama import AdapterLoadError, Batch, Context, ContextParams, LoraAdapter, Model

from ..lora_files import write_lora


@pytest.fixture(scope="module")
def decoder(llama_model: Model) -> Iterator[Any]:
    """The last prompt row's logits under a set of (adapter, scale)."""
    context = Context(llama_model, ContextParams(n_ctx=256, n_batch=64, n_seq_max=1))
    batch = Batch(64)
    tokens = llama_model.vocab.tokenize("The capital of France is", True, False)

    def logits(adapters: Sequence[tuple[LoraAdapter, float]]) -> np.ndarray:
        context.clear_memory()
        context.set_adapters(adapters)
        count = len(tokens)
        wanted = np.zeros(count, np.int8)
        wanted[-1] = 1
        batch.fill(np.array(tokens, np.int32), np.arange(count, dtype=np.int32),
                   np.zeros(count, np.int32), wanted)
        assert context.decode(batch) == 0
        return np.array(context.logits_row(count - 1))
    yield logits
    batch.close()
    context.close()


def test_adapters_change_the_logits_only_when_they_carry_weights(
        llama_model: Model, model_path: Path, tmp_path: Path, decoder: Any) -> None:
    with (LoraAdapter(llama_model, write_lora(tmp_path / "a.gguf", model_path)) as real,
          LoraAdapter(llama_model, write_lora(tmp_path / "z.gguf", model_path, zero_b=True)) as zero):
        assert real.alpha == 4.0
        base = decoder([])
        assert np.abs(decoder([(real, 1.0)]) - base).max() > 1.0
        assert np.array_equal(decoder([(zero, 1.0)]), base)
        assert np.array_equal(decoder([(real, 0.0)]), base)  # scale 0: not applied
        half = decoder([(real, 0.5)])
        assert 0 < np.abs(half - base).max() < np.abs(decoder([(real, 1.0)]) - base).max()
        assert np.array_equal(decoder([]), base)  # an empty set takes the adapters off again


@pytest.mark.parametrize(("case", "reason"), [
    ("missing", "not found"),
    ("model", "not a LoRA adapter"),
    ("arch", "is for architecture 'llama'"),
    ("shape", "returned NULL"),
    ("junk", "not a GGUF"),
])
def test_bad_adapter_files_are_refused_with_their_reason(
        llama_model: Model, model_path: Path, tmp_path: Path, case: str, reason: str) -> None:
    path = {"missing": lambda: tmp_path / "nope.gguf",
            "model": lambda: model_path,
            "arch": lambda: write_lora(tmp_path / "arch.gguf", model_path, arch="llama"),
            "shape": lambda: write_lora(tmp_path / "shape.gguf", model_path, shrink=8),
            "junk": lambda: _junk(tmp_path / "junk.gguf")}[case]()
    with pytest.raises(AdapterLoadError, match=reason):
        LoraAdapter(llama_model, path)


def _junk(path: Path) -> Path:
    path.write_bytes(b"not a gguf at all" * 10)
    return path


def test_close_is_idempotent(llama_model: Model, model_path: Path, tmp_path: Path) -> None:
    adapter = LoraAdapter(llama_model, write_lora(tmp_path / "a.gguf", model_path))
    adapter.close()
    adapter.close()
    with pytest.raises(RuntimeError, match="closed"):
        _ = adapter.ptr
