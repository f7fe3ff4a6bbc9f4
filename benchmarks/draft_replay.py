"""What the draft-length rule gets out of prompt lookup on one stream, against what a
perfect choice would get, without running the model again: greedy outputs of `echo` prompts
(generated once, or read from ``--outputs``) are replayed step by step through the engine's
own drafter, odds and rule (``Drafter``, ``MatchOdds``, ``draft_length``), with step times
by row count from ``row_cost.py``. Each step verifies the draft length the rule picks, and
accepts the draft's leading tokens that equal the greedy output (exactly what verification
does for a greedy request). The oracle knows how many draft tokens will be accepted and
verifies the count among those that yields the most tokens per second. Reported per maximum
draft length: decode speed-up over one-row steps (the model's time only).

    python benchmarks/row_cost.py --rows 1,2,...,18,20,22,24,28,32,40,48,64 --json row_cost.json
    python benchmarks/draft_replay.py --row-cost row_cost.json --draft-max 8,16,32,64 \
        --outputs echo_outputs.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.match_odds import PROMPTS, greedy_output  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import EngineConfig, EngineRegistry  # noqa: E402
from kolosal.engine.speculation.drafting import (  # noqa: E402
    MIN_SAMPLES,
    Drafter,
    MatchOdds,
    StepCost,
    draft_length,
)

Replay = list[tuple[list[int], list[int]]]  # (prompt ids, greedy output ids) per prompt


@dataclass(frozen=True, slots=True)
class ReplayResult:
    draft_max: int
    rule_speedup: float      # tokens per second of the rule's steps / of one-row steps
    oracle_speedup: float    # the same with the best count knowing the accepted run
    rule_tokens_per_step: float
    oracle_tokens_per_step: float


def step_times(row_cost: dict[str, Any]) -> Callable[[int], float]:
    """Seconds of a step by its rows (every row with logits): the measured counts, and
    between them a linear interpolation (row counts above the last measured one: its slope)."""
    rows = [int(r["rows"]) for r in row_cost["results"]]
    ms = [float(r["all_logits_ms"]) for r in row_cost["results"]]
    known = dict(zip(rows, ms, strict=True))
    slope = (ms[-1] - ms[-2]) / (rows[-1] - rows[-2]) if len(rows) > 1 else ms[-1]

    def seconds(count: int) -> float:
        if count in known:
            return known[count] / 1000
        if count > rows[-1]:
            return (ms[-1] + slope * (count - rows[-1])) / 1000
        return float(np.interp(count, rows, ms)) / 1000
    return seconds


def primed_cost(seconds: Callable[[int], float], most_rows: int) -> StepCost:
    """A StepCost that has seen every row count up to ``most_rows`` (as the engine's would
    after running a while)."""
    cost = StepCost()
    for _ in range(MIN_SAMPLES):
        for rows in range(1, most_rows + 1):
            cost.observe(rows, seconds(rows))
    return cost


def accepted_run(draft: list[int], output: list[int], position: int) -> int:
    run = 0
    while run < len(draft) and position + run < len(output) and draft[run] == output[position + run]:
        run += 1
    return run


def replay(outputs: Replay, seconds: Callable[[int], float], draft_max: int) -> ReplayResult:
    cost = primed_cost(seconds, draft_max + 1)
    odds = MatchOdds()
    totals = {"rule": [0.0, 0, 0], "oracle": [0.0, 0, 0]}  # seconds, tokens, steps
    for prompt, output in outputs:
        for who in totals:
            drafter, step, position = Drafter(draft_max), 0, 1  # the prompt's step gave output[0]
            while position < len(output):
                limit = min(draft_max, len(output) - position - 1)
                draft = [] if drafter.paused(step) else drafter.propose(prompt + output[:position], limit)
                run = accepted_run(draft, output, position)
                if who == "oracle":
                    count = max(range(run + 1), key=lambda c: (c + 1) / seconds(1 + c))
                else:
                    count = draft_length(odds.chances(drafter.match, len(draft), False), drafter.match,
                                         False, odds, 1, 1.0, cost) if draft else 0
                    if count:
                        odds.record(drafter.match, count, min(run, count), False)
                        drafter.record(count, min(run, count), step)
                gained = min(run, count) + 1
                totals[who][0] += seconds(1 + count)
                totals[who][1] += gained
                totals[who][2] += 1
                position += gained
                step += 1
    plain = 1 / seconds(1)

    def speedup(who: str) -> float:
        return round(totals[who][1] / totals[who][0] / plain, 3)
    return ReplayResult(draft_max, speedup("rule"), speedup("oracle"),
                        round(totals["rule"][1] / totals["rule"][2], 2),
                        round(totals["oracle"][1] / totals["oracle"][2], 2))


async def generate(prompts: int, max_tokens: int, threads: int) -> Replay:
    registry = EngineRegistry()
    await registry.add(EngineConfig("replay", str(default_model_path()), n_ctx=4096, n_parallel=1,
                                    n_threads=threads))
    outputs: Replay = []
    try:
        async with registry.lease("replay") as engine:
            for index in range(prompts):
                prompt = await engine.tokenize(PROMPTS["echo"](index))
                outputs.append((prompt, await greedy_output(engine, prompt, max_tokens)))
    finally:
        await registry.close_all()
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row-cost", required=True, help="row_cost.py's --json output")
    parser.add_argument("--draft-max", default="8,16,32,64")
    parser.add_argument("--outputs", type=Path, help="greedy outputs: read if it exists, else written")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.outputs and args.outputs.is_file():
        outputs = [(list(p), list(o)) for p, o in json.loads(args.outputs.read_text())]
    else:
        outputs = asyncio.run(generate(args.prompts, args.max_tokens, args.threads))
        if args.outputs:
            args.outputs.write_text(json.dumps(outputs) + "\n")
    seconds = step_times(json.loads(Path(args.row_cost).read_text()))
    results = [replay(outputs, seconds, int(m)) for m in args.draft_max.split(",")]
    print(f"{len(outputs)} outputs; decode speed-up over one-row steps")
    print(f"{'draft max':>9} {'rule':>6} {'oracle':>7} {'tokens/step rule':>17} {'oracle':>7}")
    for r in results:
        print(f"{r.draft_max:>9} {r.rule_speedup:>5.2f}x {r.oracle_speedup:>6.2f}x "
              f"{r.rule_tokens_per_step:>17.2f} {r.oracle_tokens_per_step:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
