"""Speculative decoding at one client, in process (no HTTP): the same prompts with drafts on
and off, alternating, on one engine. Per prompt kind: tokens/s (median over prompts and
repeats), the on/off ratio, draft tokens per generated token and the acceptance rate
(accepted / drafted draft tokens), and whether the greedy texts agreed.

    python benchmarks/speculation.py --kinds echo,short --prompts 4 --repeats 2 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.documents import echo_prompt  # noqa: E402
from benchmarks.prompts import short_prompt  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, FinishEvent, SamplingParams  # noqa: E402

PROMPTS = {"echo": echo_prompt, "short": short_prompt}


@dataclass(frozen=True, slots=True)
class KindResult:
    kind: str
    max_tokens: int
    tok_s_off: float
    tok_s_on: float
    ratio: float
    drafted_per_token: float
    acceptance: float
    same_text: int
    runs: int


async def one(engine: AsyncEngine, ids: list[int], max_tokens: int, speculative: int | None
              ) -> tuple[float, str, int, int]:
    """(tokens/s, text, draft tokens, accepted draft tokens) of one greedy request."""
    before = engine.stats()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, speculative=speculative)
    text, tokens = "", 0
    started = time.perf_counter()
    async for _, event in engine.generate(ids, params, "spec-bench"):
        text += getattr(event, "text", "")
        if isinstance(event, FinishEvent):
            tokens = event.usage.completion_tokens
    elapsed = time.perf_counter() - started
    after = engine.stats()
    return (tokens / elapsed, text, after["spec_draft_tokens"] - before["spec_draft_tokens"],
            after["spec_accepted_tokens"] - before["spec_accepted_tokens"])


async def measure(kind: str, prompts: int, repeats: int, max_tokens: int, threads: int,
                  draft_max: int) -> KindResult:
    registry = EngineRegistry()
    await registry.add(EngineConfig("spec-bench", str(default_model_path()), n_ctx=4096, n_parallel=4,
                                    n_threads=threads, spec_draft_max=draft_max))
    off: list[float] = []
    on: list[float] = []
    drafted = accepted = generated = same = 0
    try:
        async with registry.lease("spec-bench") as engine:
            for index in range(prompts):
                ids = await engine.tokenize(PROMPTS[kind](index))
                await one(engine, ids, 1, 0)  # the prompt cached: both runs start alike
                for repeat in range(repeats):
                    order = (0, None) if (index + repeat) % 2 == 0 else (None, 0)
                    texts = {}
                    for speculative in order:
                        tok_s, text, d, a = await one(engine, ids, max_tokens, speculative)
                        texts[speculative] = text
                        if speculative == 0:
                            off.append(tok_s)
                        else:
                            on.append(tok_s)
                            drafted, accepted, generated = drafted + d, accepted + a, generated + max_tokens
                    same += texts[0] == texts[None]
    finally:
        await registry.close_all()
    tok_s_off, tok_s_on = statistics.median(off), statistics.median(on)
    return KindResult(kind, max_tokens, round(tok_s_off, 2), round(tok_s_on, 2),
                      round(tok_s_on / tok_s_off, 3), round(drafted / max(generated, 1), 3),
                      round(accepted / max(drafted, 1), 3), same, len(on))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="echo,short")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--spec-draft-max", type=int, default=16,
                        help="the engine's draft length: the 'on' runs use the engine's own drafting")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = [asyncio.run(measure(kind, args.prompts, args.repeats, args.max_tokens, args.threads,
                                       args.spec_draft_max))
               for kind in args.kinds.split(",")]
    for result in results:
        print(json.dumps(asdict(result)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
