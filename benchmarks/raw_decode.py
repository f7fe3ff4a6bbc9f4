"""The raw-limit probe: batched greedy decode straight through kolosal.llama (no HTTP, no
scheduler). B sequences each get a short prompt, then T decode steps of B rows; the decode
phase's tokens/s is the ceiling our server can reach on this machine.

    python benchmarks/raw_decode.py --batch-sizes 1,8,32 --tokens 64
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from kolosal.default_model import default_model_path
from kolosal.llama import Batch, Context, ContextParams, Model, ModelParams


@dataclass(frozen=True)
class RawResult:
    batch_size: int
    tokens: int
    decode_s: float
    tok_s: float


def measure(model: Model, batch_size: int, tokens: int, n_threads: int = 0) -> RawResult:
    prompt = model.vocab.tokenize("Once upon a time")
    n_ctx = max(256, batch_size * (len(prompt) + tokens + 8))
    params = ContextParams(n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_seq_max=batch_size,
                           n_threads=n_threads)
    with Context(model, params) as context, Batch(max(512, batch_size)) as batch:
        seqs = np.repeat(np.arange(batch_size), len(prompt))
        # distinct last prompt token per sequence, so the rows are not identical work
        prompt_tokens = np.tile(np.array(prompt), batch_size)
        prompt_tokens[len(prompt) - 1::len(prompt)] = 1000 + np.arange(batch_size)
        positions = np.tile(np.arange(len(prompt)), batch_size)
        logits = np.zeros(len(prompt_tokens), dtype=np.int8)
        logits[len(prompt) - 1::len(prompt)] = 1
        for start in range(0, len(prompt_tokens), 512):
            end = start + 512
            batch.fill(prompt_tokens[start:end], positions[start:end], seqs[start:end], logits[start:end])
            assert context.decode(batch) == 0
        rows = np.flatnonzero(logits[-min(512, len(logits)):]) if len(logits) <= 512 else None
        if rows is None:  # last chunk only holds some of the output rows: recompute them
            last_chunk = logits[(len(logits) - 1) // 512 * 512:]
            rows = np.flatnonzero(last_chunk)
        next_tokens = context.argmax_rows(rows)
        position = np.full(batch_size, len(prompt))
        all_rows = np.arange(batch_size)
        started = time.perf_counter()
        for _ in range(tokens):
            batch.fill(next_tokens, position, np.arange(batch_size), np.ones(batch_size, dtype=np.int8))
            assert context.decode(batch) == 0
            next_tokens = context.argmax_rows(all_rows)
            position += 1
        elapsed = time.perf_counter() - started
    return RawResult(batch_size, batch_size * tokens, round(elapsed, 3), round(batch_size * tokens / elapsed, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    with Model(args.model or default_model_path(), ModelParams(n_gpu_layers=0)) as model:
        print(f"{'B':>4} {'tok/s':>8}")
        for size in (int(x) for x in args.batch_sizes.split(",")):
            result = measure(model, size, args.tokens, args.threads)
            print(f"{result.batch_size:>4} {result.tok_s:>8.1f}")


if __name__ == "__main__":
    main()
