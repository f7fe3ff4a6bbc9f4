"""Where one scheduler step's time goes at concurrency C, in-process (no HTTP): an AsyncEngine
runs C greedy fixed-length requests at once, and ``engine.stats()["profile"]`` splits the
step into schedule, batch fill, llama_decode, sampling, update (detokenize, stops) and the
hand-off to asyncio. "Python overhead" is everything in the step except llama_decode.

    python benchmarks/step_profile.py --concurrency 32 --tokens 64
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import SAMPLINGS  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, SamplingParams  # noqa: E402

PHASES = ("schedule_s", "fill_s", "decode_s", "sample_s", "update_s", "deliver_s")


@dataclass(frozen=True, slots=True)
class Profile:
    concurrency: int
    tokens: int
    wall_s: float
    tok_s: float                  # generated tokens / wall time (prefill included)
    steps: int
    step_s: float                 # sum of step times
    seconds: dict[str, float]     # per phase; fill_s = fill_and_decode_s - decode_s
    python_overhead_pct: float    # (step_s - decode_s) / step_s

    def share(self, phase: str) -> float:
        return 100 * self.seconds[phase] / self.step_s if self.step_s else 0.0


def phase_seconds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    return {"schedule_s": delta["schedule_s"], "fill_s": delta["fill_and_decode_s"] - delta["decode_s"],
            "decode_s": delta["decode_s"], "sample_s": delta["sample_s"], "update_s": delta["update_s"],
            "deliver_s": delta["deliver_s"]}


async def run_requests(engine: AsyncEngine, concurrency: int, tokens: int, tag: str,
                       logprobs: int | None = None, sampling: str = "greedy") -> None:
    fields = SAMPLINGS[sampling]
    params = SamplingParams(max_tokens=tokens, temperature=float(fields["temperature"]),
                            top_p=float(fields.get("top_p", 1.0)), ignore_eos=True, logprobs=logprobs)

    async def one(index: int) -> None:
        ids = await engine.tokenize(f"Request {tag}-{index}: once upon a time")
        async for _ in engine.generate(ids, params, f"{tag}{index}"):
            pass

    await asyncio.gather(*(one(i) for i in range(concurrency)))


async def profile(concurrency: int, tokens: int, model: str | None = None, threads: int = 0,
                  n_ctx: int = 0, logprobs: int | None = None, spec_draft_max: int = 0,
                  sampling: str = "greedy") -> Profile:
    registry = EngineRegistry()
    config = EngineConfig("profile", model or str(default_model_path()),
                          n_ctx=n_ctx or max(2048, concurrency * (tokens + 32)), n_parallel=concurrency,
                          n_threads=threads, spec_draft_max=spec_draft_max)
    try:
        await registry.add(config)
        async with registry.lease("profile") as engine:
            await run_requests(engine, 1, 2, "warmup")  # page in weights; not counted below
            before = engine.stats()
            started = time.perf_counter()
            await run_requests(engine, concurrency, tokens, "p", logprobs, sampling)
            wall = time.perf_counter() - started
            after = engine.stats()
    finally:
        await registry.close_all()
    seconds = phase_seconds(before["profile"], after["profile"])
    step_s = sum(seconds.values())
    overhead = step_s - seconds["decode_s"]
    return Profile(concurrency, tokens, round(wall, 3), round(concurrency * tokens / wall, 2),
                   after["steps"] - before["steps"], round(step_s, 4),
                   {k: round(v, 4) for k, v in seconds.items()},
                   round(100 * overhead / step_s, 2) if step_s else 0.0)


def format_profile(result: Profile) -> str:
    lines = [f"concurrency {result.concurrency}, {result.tokens} tokens each: {result.tok_s} tok/s, "
             f"{result.steps} steps in {result.wall_s} s "
             f"({1000 * result.step_s / max(result.steps, 1):.1f} ms/step, steps cover "
             f"{100 * result.step_s / result.wall_s:.1f}% of wall time)"]
    for phase in PHASES:
        lines.append(f"  {phase[:-2]:<10} {result.seconds[phase]:8.3f} s  {result.share(phase):5.1f}%")
    lines.append(f"  python overhead (step time outside llama_decode): {result.python_overhead_pct}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--n-ctx", type=int, default=0, help="KV cells (default: enough for C requests)")
    parser.add_argument("--logprobs", type=int, default=None, help="top log-probabilities per token (0-20)")
    parser.add_argument("--spec-draft-max", type=int, default=0,
                        help="the engine's speculative draft length (0 = off, the default)")
    parser.add_argument("--sampling", choices=sorted(SAMPLINGS), default="greedy",
                        help="greedy (temperature 0) or chat (temperature 0.8, top_p 0.95)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    result = asyncio.run(profile(args.concurrency, args.tokens, args.model, args.threads, args.n_ctx,
                                 args.logprobs, args.spec_draft_max, args.sampling))
    print(format_profile(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
