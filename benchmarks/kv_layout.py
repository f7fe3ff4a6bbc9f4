"""What other sequences' KV cells cost a decode step, in process: one unified KV pool (ours:
any sequence may use the whole context) against per-sequence streams (llama-server's
default: each slot has n_ctx / slots cells of its own).

In a unified pool every row's attention runs over all cells in use: a cell of another
sequence is masked, and masked cells still cost the kernel a check each (ggml's CPU flash
attention skips them one by one). Here R sequences of 100 cells each decode one token a
step, beside P cells of one parked sequence (a finished request's prefix cache), and the
same R sequences decode in a per-sequence-streams context, with consecutive sequence ids
("streams") and with every other id ("streams-gaps": libllama splits a step of several
streams into one ubatch per run of consecutive ids, ``split_equal(sequential)``, so busy
slots with free ones between them cost one graph each). Steps of all contexts are
interleaved, so the machine's drift hits them alike; the table gives medians.

    python benchmarks/kv_layout.py --model M --rows 1,31 --parked 0,2000,8000
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kolosal.llama import Batch, Context, Model  # noqa: E402
from kolosal.llama.context import ContextParams  # noqa: E402

CELLS = 16384       # the pool (unified) or all streams together
SLOTS = 32
ACTIVE_CELLS = 100  # each decoding sequence's own cells


@dataclass(frozen=True, slots=True)
class Case:
    rows: int
    layout: str          # "unified", "streams" or "streams-gaps"
    parked_cells: int    # cells of another, idle sequence (unified only)
    step_ms: float       # median llama_decode time of one step


def prefill(context: Context, batch: Batch, seq_id: int, count: int) -> None:
    tokens = np.random.default_rng(seq_id).integers(100, 20000, count).astype(np.int32)
    for start in range(0, count, 512):
        chunk = tokens[start:start + 512]
        batch.fill(chunk, np.arange(start, start + len(chunk), dtype=np.int32),
                   np.full(len(chunk), seq_id, dtype=np.int32), np.zeros(len(chunk), dtype=np.int8))
        if context.decode(batch) != 0:
            raise RuntimeError("prefill failed")


def seq_ids(layout: str, rows: int) -> list[int]:
    return list(range(0, 2 * rows, 2)) if layout == "streams-gaps" else list(range(rows))


def measure(model: Model, threads: int, rows: int, parked: list[int], steps: int,
            cells: int = CELLS, slots: int = SLOTS) -> list[Case]:
    """One context per case, R active sequences each; their steps interleaved. The parked
    sequence takes the last sequence id; "streams-gaps" (when 2R ids fit) uses every other
    id."""
    if rows >= slots:
        raise ValueError(f"--rows must be below {slots} (one sequence id is the parked one)")
    batch = Batch(512)
    gaps = [("streams-gaps", 0)] if 2 * rows <= slots else []
    layouts = [("streams", 0), *gaps, *[("unified", p) for p in parked]]
    cases: list[tuple[str, int, Context]] = []
    try:
        for layout, parked_cells in layouts:
            context = Context(model, ContextParams(n_ctx=cells, n_seq_max=slots, n_threads=threads,
                                                   n_threads_batch=threads,
                                                   kv_unified=layout == "unified"))
            if parked_cells:
                prefill(context, batch, slots - 1, parked_cells)
            for seq_id in seq_ids(layout, rows):
                prefill(context, batch, seq_id, ACTIVE_CELLS)
            cases.append((layout, parked_cells, context))
        times: list[list[float]] = [[] for _ in cases]
        for _ in range(steps):
            for index, (layout, _, context) in enumerate(cases):
                ids = seq_ids(layout, rows)
                batch.fill(np.full(rows, 1000, dtype=np.int32), np.full(rows, ACTIVE_CELLS, dtype=np.int32),
                           np.array(ids, dtype=np.int32), np.ones(rows, dtype=np.int8))
                started = time.perf_counter()
                if context.decode(batch) != 0:
                    raise RuntimeError("decode failed")
                times[index].append(time.perf_counter() - started)
                for seq_id in ids:  # back to 100 cells: every step sees the same pool
                    context.seq_remove(seq_id, ACTIVE_CELLS, -1)
        return [Case(rows, layout, parked_cells, round(1000 * statistics.median(t), 2))
                for (layout, parked_cells, _), t in zip(cases, times, strict=True)]
    finally:
        for _, _, context in cases:
            context.close()
        batch.close()


def main() -> None:
    from kolosal.default_model import default_model_path

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,31", help="decoding sequences per step, comma-separated")
    parser.add_argument("--parked", default="0,2000,8000", help="parked cells beside them (unified pool)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = Model(str(args.model or default_model_path()))
    parked = [int(p) for p in args.parked.split(",")]
    results: list[Case] = []
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            results += measure(model, args.threads, rows, parked, args.steps)
    finally:
        model.close()
    print(f"{'rows':>4} {'layout':>12} {'parked':>7} {'step ms':>8} {'vs streams':>10}")
    for case in results:
        base = next(c.step_ms for c in results if c.rows == case.rows and c.layout == "streams")
        print(f"{case.rows:>4} {case.layout:>12} {case.parked_cells:>7} {case.step_ms:>8.2f} "
              f"{case.step_ms / base:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in results], indent=2))


if __name__ == "__main__":
    main()
