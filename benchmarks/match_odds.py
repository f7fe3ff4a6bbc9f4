"""How well a prompt-lookup draft predicts, by the match length it continues: greedy outputs
of `echo` (and `short`) prompts, generated plainly, then at every output position the
engine's own drafter (``kolosal.engine.speculation.drafting.Drafter``) proposes one token from the
context before it; reported per match-length bucket: how many positions had a draft and how
often it was the token greedy decoding chose. This is the evidence behind ``MatchOdds``.

    python benchmarks/match_odds.py --kinds echo,short --prompts 16 --json match_odds.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.documents import echo_prompt  # noqa: E402
from benchmarks.prompts import short_prompt  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, SamplingParams  # noqa: E402
from kolosal.engine.speculation.drafting import Drafter, match_bucket  # noqa: E402

PROMPTS = {"echo": echo_prompt, "short": short_prompt}
BUCKET_NAMES = {7: "7-11", 8: "12+"}


async def greedy_output(engine: AsyncEngine, prompt: list[int], max_tokens: int) -> list[int]:
    """The plain greedy continuation's token ids (read from its logprobs)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, speculative=0,
                            logprobs=0)
    tokens: list[int] = []
    async for _, event in engine.generate(prompt, params, "match-odds"):
        tokens.extend(entry.token for entry in event.logprobs)  # type: ignore[union-attr]
    return tokens


def tally(prompt: list[int], output: list[int], drafted: Counter[int], right: Counter[int]) -> None:
    drafter = Drafter(1)
    for position in range(1, len(output)):
        draft = drafter.propose(prompt + output[:position], 1)
        if draft:
            bucket = match_bucket(drafter.match)
            drafted[bucket] += 1
            right[bucket] += draft[0] == output[position]


async def measure(kind: str, prompts: int, max_tokens: int, threads: int) -> dict[str, object]:
    registry = EngineRegistry()
    await registry.add(EngineConfig("match-odds", str(default_model_path()), n_ctx=4096, n_parallel=1,
                                    n_threads=threads))
    drafted: Counter[int] = Counter()
    right: Counter[int] = Counter()
    positions = 0
    try:
        async with registry.lease("match-odds") as engine:
            for index in range(prompts):
                prompt = await engine.tokenize(PROMPTS[kind](index))
                output = await greedy_output(engine, prompt, max_tokens)
                positions += len(output) - 1
                tally(prompt, output, drafted, right)
    finally:
        await registry.close_all()
    buckets = {BUCKET_NAMES.get(b, str(b)): {"drafts": drafted[b], "right": right[b],
                                             "share_right": round(right[b] / drafted[b], 3)}
               for b in sorted(drafted)}
    return {"kind": kind, "prompts": prompts, "positions": positions, "by_match_length": buckets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="echo,short")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = [asyncio.run(measure(kind, args.prompts, args.max_tokens, args.threads))
               for kind in args.kinds.split(",")]
    for result in results:
        print(f"{result['kind']}: {result['positions']} positions")
        print("  match  drafts  right  share")
        for name, row in result["by_match_length"].items():  # type: ignore[attr-defined]
            print(f"  {name:>5}  {row['drafts']:6d}  {row['right']:5d}  {row['share_right']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
