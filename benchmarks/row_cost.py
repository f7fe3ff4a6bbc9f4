"""What a draft row costs: the decode time of one sequence's step with k rows, straight
through kolosal.llama (no scheduler), once with logits on every row (a step verifying k - 1
draft tokens) and once with logits on the last row only (a prompt chunk). The gap between the
two is the vocabulary projection, which every verified draft token pays. ``ceiling`` is the
speedup of speculative decoding if all k - 1 drafts were accepted: k tokens for the step's
time instead of k one-row steps.

    python benchmarks/row_cost.py --rows 1,2,3,5,9,17 --repeats 7 --json row_cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
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

CONTEXT_TOKENS = 200  # computed once, untimed: the rows attend to a realistic prefix


@dataclass(frozen=True, slots=True)
class RowCost:
    rows: int
    all_logits_ms: float   # median step time, every row with logits
    last_logits_ms: float  # median step time, only the last row with logits
    ceiling: float         # rows * (one-row step) / (this step, all logits)


def step_ms(context: Context, batch: Batch, rows: int, logits: np.ndarray, repeats: int) -> float:
    tokens = np.arange(1000, 1000 + rows, dtype=np.int32)
    positions = np.arange(CONTEXT_TOKENS, CONTEXT_TOKENS + rows, dtype=np.int32)
    seqs = np.zeros(rows, dtype=np.int32)
    times = []
    for _ in range(repeats):
        batch.fill(tokens, positions, seqs, logits)
        started = time.perf_counter()
        if context.decode(batch) != 0:
            raise RuntimeError(f"decode failed at {rows} rows")
        times.append(time.perf_counter() - started)
        context.seq_remove(0, CONTEXT_TOKENS, -1)  # the next repeat decodes the same positions
    return 1000 * statistics.median(times)


def measure(model: Model, row_counts: list[int], repeats: int, n_threads: int) -> list[RowCost]:
    params = ContextParams(n_ctx=1024, n_seq_max=1, n_threads=n_threads)
    with Context(model, params) as context, Batch(512) as batch:
        prefix = np.arange(2000, 2000 + CONTEXT_TOKENS, dtype=np.int32)
        batch.fill(prefix, np.arange(CONTEXT_TOKENS, dtype=np.int32),
                   np.zeros(CONTEXT_TOKENS, dtype=np.int32), np.zeros(CONTEXT_TOKENS, dtype=np.int8))
        if context.decode(batch) != 0:
            raise RuntimeError("prefill failed")
        step_ms(context, batch, 1, np.ones(1, dtype=np.int8), 2)  # warm-up
        results = []
        for rows in row_counts:  # the two arms alternate per repeat block
            every = step_ms(context, batch, rows, np.ones(rows, dtype=np.int8), repeats)
            last_only = np.zeros(rows, dtype=np.int8)
            last_only[-1] = 1
            last = step_ms(context, batch, rows, last_only, repeats)
            results.append(RowCost(rows, round(every, 2), round(last, 2), 0.0))
    one_row = next((r.all_logits_ms for r in results if r.rows == 1), None)
    if one_row is None:
        return results
    return [RowCost(r.rows, r.all_logits_ms, r.last_logits_ms, round(r.rows * one_row / r.all_logits_ms, 2))
            for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", default="1,2,3,5,9,17")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    row_counts = sorted({int(r) for r in args.rows.split(",")} | {1})
    with Model(Path(args.model or default_model_path()), ModelParams(n_gpu_layers=0)) as model:
        results = measure(model, row_counts, args.repeats, args.threads)
    print(f"{'rows':>4} {'all logits ms':>14} {'last logits ms':>15} {'ceiling':>8}")
    for r in results:
        print(f"{r.rows:>4} {r.all_logits_ms:>14.2f} {r.last_logits_ms:>15.2f} {r.ceiling:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": asdict(machine_info()),
                                               "results": [asdict(r) for r in results]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
