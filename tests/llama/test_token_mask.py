"""Context.mask_row (kolosal_apply_token_mask): every token whose bit is 0 in a llguidance
bitmask becomes -inf, every other logit is left exactly as it was, for masks of every shape
(sparse as in JSON structure, dense as inside a string, random, whole words of 0 or 1)."""
from __future__ import annotations

import numpy as np
import pytest

from kolosal.llama import Batch, Context, ContextParams, Model


def packed(allowed: np.ndarray) -> np.ndarray:
    """llguidance's layout: 32 tokens per uint32, least significant bit first."""
    padded = np.zeros(-(-allowed.size // 32) * 32, dtype=bool)
    padded[:allowed.size] = allowed
    return np.packbits(padded, bitorder="little").view(np.uint32).copy()


def masks(n_vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    few = np.zeros(n_vocab, dtype=bool)
    few[[0, 31, 32, 33, 1000, n_vocab - 1]] = True
    words = np.repeat(rng.random(-(-n_vocab // 32)) < 0.5, 32)[:n_vocab]
    return {"few": few, "none": np.zeros(n_vocab, dtype=bool), "all": np.ones(n_vocab, dtype=bool),
            "half": rng.random(n_vocab) < 0.5, "dense": rng.random(n_vocab) < 0.999,
            "sparse": rng.random(n_vocab) < 0.001, "whole-words": words}


@pytest.mark.parametrize("kind", ["few", "none", "all", "half", "dense", "sparse", "whole-words"])
def test_mask_row_forbids_exactly_the_zero_bits(llama_model: Model, kind: str) -> None:
    with Context(llama_model, ContextParams(n_ctx=256, n_seq_max=1)) as context, Batch(64) as batch:
        prompt = llama_model.vocab.tokenize("The capital of France is")
        batch.fill(np.array(prompt), np.arange(len(prompt)), np.zeros(len(prompt), dtype=np.int32),
                   np.array([0] * (len(prompt) - 1) + [1]))
        assert context.decode(batch) == 0
        row = len(prompt) - 1
        before = context.logits_row(row).copy()
        allowed = masks(context.n_vocab)[kind]
        context.mask_row(row, packed(allowed))
        after = context.logits_row(row)
        assert np.array_equal(after[allowed], before[allowed])
        assert np.all(np.isneginf(after[~allowed]))
