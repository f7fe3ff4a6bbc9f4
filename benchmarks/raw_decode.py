"""The raw-limit probe: batched greedy decode straight through kolosal.llama (no HTTP, no
scheduler). B sequences each get a short prompt (prefilled untimed), then T timed steps of
B rows each (llama_decode + numpy argmax). Its tokens/s is the ceiling our server can reach
on this machine at B busy slots.

    python benchmarks/raw_decode.py --batch-sizes 1,2,4,8,16,32,64 --tokens 64 --json raw.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import machine_info  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.llama import Batch, Context, ContextParams, Model, ModelParams  # noqa: E402

PROMPT = "Once upon a time"


@dataclass(frozen=True, slots=True)
class RawResult:
    batch_size: int
    tokens: int          # generated in the timed phase, all sequences together
    elapsed_s: float     # timed phase: decode + argmax
    decode_s: float      # of which inside llama_decode
    tok_s: float


def prompts_for(model: Model, batch_size: int) -> list[list[int]]:
    """The same short prompt per sequence with a distinct last token, so rows differ."""
    base = model.vocab.tokenize(PROMPT)
    return [base[:-1] + [1000 + seq] for seq in range(batch_size)]


def prefill_all_but_last(context: Context, batch: Batch, prompts: list[list[int]]) -> None:
    tokens = np.array([t for p in prompts for t in p[:-1]], dtype=np.int32)
    positions = np.array([i for p in prompts for i in range(len(p) - 1)], dtype=np.int32)
    seqs = np.array([s for s, p in enumerate(prompts) for _ in p[:-1]], dtype=np.int32)
    for start in range(0, len(tokens), batch.capacity):
        end = start + batch.capacity
        batch.fill(tokens[start:end], positions[start:end], seqs[start:end],
                   np.zeros(len(tokens[start:end]), dtype=np.int8))
        if context.decode(batch) != 0:
            raise RuntimeError("prefill failed")


def measure(model: Model, batch_size: int, tokens: int, n_threads: int = 0, kv_unified: bool = True,
            n_ctx: int = 0) -> RawResult:
    prompts = prompts_for(model, batch_size)
    needed = batch_size * (len(prompts[0]) + tokens + 8)
    params = ContextParams(n_ctx=max(n_ctx, 256, needed), n_batch=512, n_ubatch=512, n_seq_max=batch_size,
                           n_threads=n_threads, kv_unified=kv_unified)
    with Context(model, params) as context, Batch(max(512, batch_size)) as batch:
        prefill_all_but_last(context, batch, prompts)
        next_tokens = np.array([p[-1] for p in prompts], dtype=np.int32)
        positions = np.array([len(p) - 1 for p in prompts], dtype=np.int32)
        seqs = np.arange(batch_size, dtype=np.int32)
        want_logits = np.ones(batch_size, dtype=np.int8)
        decode_s = 0.0
        started = time.perf_counter()
        for _ in range(tokens):
            batch.fill(next_tokens, positions, seqs, want_logits)
            before = time.perf_counter()
            if context.decode(batch) != 0:
                raise RuntimeError(f"decode failed at B={batch_size}")
            decode_s += time.perf_counter() - before
            next_tokens = context.argmax_rows(seqs)
            positions += 1
        elapsed = time.perf_counter() - started
    total = batch_size * tokens
    return RawResult(batch_size, total, round(elapsed, 3), round(decode_s, 3), round(total / elapsed, 2))


def sweep(model_path: Path, batch_sizes: list[int], tokens: int, n_threads: int = 0,
          kv_unified: bool = True) -> list[RawResult]:
    with Model(model_path, ModelParams(n_gpu_layers=0)) as model:
        measure(model, 1, 4, n_threads, kv_unified)  # warm-up: page in the weights
        return [measure(model, size, tokens, n_threads, kv_unified) for size in batch_sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--no-kv-unified", action="store_true",
                        help="one KV stream per sequence (llama-server's default) instead of one shared pool")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    model = args.model or default_model_path()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    results = sweep(model, sizes, args.tokens, args.threads, not args.no_kv_unified)
    print(f"{'B':>4} {'tok/s':>8} {'step ms':>8} {'in decode':>10}")
    for r in results:
        print(f"{r.batch_size:>4} {r.tok_s:>8.1f} {1000 * r.elapsed_s / args.tokens:>8.1f} "
              f"{100 * r.decode_s / r.elapsed_s:>9.1f}%")
    if args.json:
        payload = {"machine": asdict(machine_info()), "model": str(model), "tokens": args.tokens,
                   "threads": args.threads, "kv_unified": not args.no_kv_unified,
                   "results": [asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
