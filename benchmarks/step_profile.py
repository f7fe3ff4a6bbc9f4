"""Where one scheduler step's time goes, at concurrency C, in-process (no HTTP): schedule,
batch fill + llama_decode, sampling, update (detokenize, stops), hand-off to asyncio.
"Python overhead" is everything except llama_decode itself.

    python benchmarks/step_profile.py --concurrency 32 --tokens 64
"""
from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from kolosal.default_model import default_model_path
from kolosal.engine import EngineConfig, EngineRegistry, SamplingParams


@dataclass(frozen=True)
class Profile:
    concurrency: int
    tok_s: float
    steps: int
    seconds: dict[str, float]
    python_overhead_pct: float


async def profile(concurrency: int, tokens: int, model: str | None = None, threads: int = 0) -> Profile:
    registry = EngineRegistry()
    engine = await registry.add(EngineConfig("profile", model or str(default_model_path()),
                                             n_ctx=max(2048, concurrency * (tokens + 32)),
                                             n_parallel=concurrency, n_threads=threads))
    try:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)

        async def one(index: int) -> None:
            ids = await engine.tokenize(f"Request {index}: once upon a time")
            async for _ in engine.generate(ids, params, f"p{index}"):
                pass

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
        stats = engine.stats()
    finally:
        await registry.close_all()
    phases = stats["profile"]
    step_total = (phases["schedule_s"] + phases["fill_and_decode_s"] + phases["sample_s"]
                  + phases["update_s"] + phases["deliver_s"])
    overhead = step_total - phases["decode_s"]
    return Profile(concurrency, round(concurrency * tokens / wall, 2), stats["steps"],
                   {k: round(v, 4) for k, v in phases.items()},
                   round(100 * overhead / step_total, 2) if step_total else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    result = asyncio.run(profile(args.concurrency, args.tokens, threads=args.threads))
    total = sum(v for k, v in result.seconds.items() if k != "decode_s")
    print(f"concurrency {result.concurrency}: {result.tok_s} tok/s over {result.steps} steps")
    for phase, seconds in result.seconds.items():
        share = 100 * seconds / total if total else 0.0
        print(f"  {phase:<18} {seconds:8.3f} s  {share:5.1f}%")
    print(f"  python overhead (all but llama_decode): {result.python_overhead_pct}% of step time")


if __name__ == "__main__":
    main()
