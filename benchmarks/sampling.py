"""What sampling one row costs on the engine thread, on real logits: a batch of 32 one-row
sequences is decoded once, then each row is sampled by its own seeded Sampler (the chat
sampling SDKs send: temperature 0.8, top_p 0.95; and plain temperature 1), many times. The
figure is the engine thread's time per row (the median of the repeats), beside greedy's
argmax of the same rows. Run it on two commits to compare sampler implementations.

    python benchmarks/sampling.py                      # both bundled models
    python benchmarks/sampling.py --model FILE --rows 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from kolosal.default_model import bundled_model_paths  # noqa: E402
from kolosal.llama import Batch, Context, ContextParams, Model, ModelParams, Sampler, SamplerSettings  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "My favourite food is",
           "The weather today", "In 1969, astronauts", "Dear Sir or Madam,", "The best way to learn"]
SAMPLINGS = {"chat (t 0.8, top_p 0.95)": {"temperature": 0.8, "top_p": 0.95},
             "t 1.0": {"temperature": 1.0},
             "t 0.7, top_k 40": {"temperature": 0.7, "top_k": 40}}


def measure(path: Path, rows: int, repeats: int, threads: int) -> dict[str, float]:
    with Model(path, ModelParams(n_gpu_layers=0)) as model, \
            Context(model, ContextParams(n_ctx=4096, n_seq_max=rows, n_threads=threads)) as context, \
            Batch(4096) as batch:
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        flags: list[int] = []
        for seq in range(rows):
            ids = model.vocab.tokenize(PROMPTS[seq % len(PROMPTS)] + " " * (seq // len(PROMPTS)))
            tokens += ids
            positions += range(len(ids))
            seqs += [seq] * len(ids)
            flags += [0] * (len(ids) - 1) + [1]
        batch.fill(np.array(tokens), np.array(positions), np.array(seqs), np.array(flags))
        context.decode(batch)
        batch_rows = np.flatnonzero(np.array(flags))
        result = {"vocab": float(model.vocab.n_tokens)}
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            context.argmax_rows(batch_rows)
            times.append((time.perf_counter() - started) / rows)
        result["greedy argmax"] = statistics.median(times) * 1e3
        for name, settings in SAMPLINGS.items():
            samplers = [Sampler(SamplerSettings(seed=seq, **settings), context.n_vocab)  # type: ignore[arg-type]
                        for seq in range(rows)]
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                for sampler, row in zip(samplers, batch_rows, strict=True):
                    sampler.sample(context, int(row))
                times.append((time.perf_counter() - started) / rows)
            result[name] = statistics.median(times) * 1e3
            for sampler in samplers:
                sampler.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="GGUF file(s); default: the bundled ones")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = {}
    for path in args.model or bundled_model_paths():
        figures[path.name] = measure(path, args.rows, args.repeats, args.threads)
        print(path.name, f"(vocabulary {int(figures[path.name].pop('vocab'))}): ms per row, median of "
              f"{args.repeats}", flush=True)
        for name, value in figures[path.name].items():
            print(f"  {name:28s} {value:8.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
