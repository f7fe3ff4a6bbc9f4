"""Fair scheduling between tenants, in process (no HTTP): one engine, tenant A floods it with
closed-loop streams while tenant B sends one request at a time.

Phases, each on a fresh engine so no cache carries over:
1. ``B alone``: B's sequential requests, TTFT p50.
2. ``A alone``: A's streams, A's tokens per second.
3. ``A + B, one tenant``: the same load with every request anonymous (first come, first
   served: what the engine did before tenants): B's TTFT and A's tokens per second.
4. ``A + B, two tenants``: the same load with A and B as tenants of equal weight.
5. ``A + C, equal weights``: two flooding tenants; each one's share of the tokens.

    python benchmarks/fairness.py --streams 64 --seconds 30
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import (  # noqa: E402
    AsyncEngine,
    EngineConfig,
    EngineRegistry,
    SamplingParams,
    Tenancy,
    TokenEvent,
)

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle. Number {}"


@dataclass(slots=True)
class Tally:
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)


async def one(engine: AsyncEngine, index: int, params: SamplingParams, tenancy: Tenancy,
              tally: Tally) -> None:
    ids = await engine.tokenize(PROMPT.format(index))
    started = time.perf_counter()
    first = True
    async for _, event in engine.generate(ids, params, f"r{index}", tenancy=tenancy):
        if first and isinstance(event, TokenEvent):
            tally.ttfts.append(time.perf_counter() - started)
            first = False
        if isinstance(event, TokenEvent):
            tally.tokens = tally.tokens + 1


async def closed_loop(engine: AsyncEngine, streams: int, seconds: float, params: SamplingParams,
                      tenancy: Tenancy, tally: Tally, offset: int) -> None:
    deadline = time.perf_counter() + seconds

    async def stream(number: int) -> None:
        count = 0
        while time.perf_counter() < deadline:
            await one(engine, offset + number * 10_000 + count, params, tenancy, tally)
            count += 1

    await asyncio.gather(*(stream(number) for number in range(streams)))


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    b_ttft_p50_ms: float | None
    a_tok_s: float | None
    c_tok_s: float | None = None


async def phase(name: str, config: EngineConfig, a_streams: int, b: bool, c_streams: int,
                seconds: float, tenants: bool, b_tokens: int = 64) -> Phase:
    registry = EngineRegistry()
    params = SamplingParams(max_tokens=64, temperature=0.8, top_p=0.95, ignore_eos=True)
    a_tenancy = Tenancy("a") if tenants else Tenancy()
    b_tenancy = Tenancy("b") if tenants else Tenancy()
    c_tenancy = Tenancy("c") if tenants else Tenancy()
    a, b_tally, c = Tally(), Tally(), Tally()
    try:
        await registry.add(config)
        async with registry.lease(config.engine_id) as engine:
            await one(engine, -1, SamplingParams(max_tokens=2), Tenancy(), Tally())  # warm-up
            started = time.perf_counter()
            jobs = []
            if a_streams:
                jobs.append(closed_loop(engine, a_streams, seconds, params, a_tenancy, a, 0))
            if c_streams:
                jobs.append(closed_loop(engine, c_streams, seconds, params, c_tenancy, c, 5_000_000))
            if b:
                b_params = SamplingParams(max_tokens=b_tokens, temperature=0.8, top_p=0.95, ignore_eos=True)
                jobs.append(closed_loop(engine, 1, seconds, b_params, b_tenancy, b_tally, 9_000_000))
            await asyncio.gather(*jobs)
            elapsed = time.perf_counter() - started  # the deadline, then the requests in flight
    finally:
        await registry.close_all()
    return Phase(name, round(1000 * statistics.median(b_tally.ttfts), 1) if b_tally.ttfts else None,
                 round(a.tokens / elapsed, 1) if a_streams else None,
                 round(c.tokens / elapsed, 1) if c_streams else None)


async def run(streams: int, seconds: float, slots: int, model: str, b_tokens: int) -> list[Phase]:
    config = EngineConfig("fair", model, n_ctx=slots * 160, n_parallel=slots)
    return [await phase("B alone", config, 0, True, 0, seconds, True, b_tokens),
            await phase("A alone", config, streams, False, 0, seconds, True),
            await phase("A + B, one tenant (FCFS)", config, streams, True, 0, seconds, False, b_tokens),
            await phase("A + B, two tenants", config, streams, True, 0, seconds, True, b_tokens),
            await phase("A + C, equal weights", config, streams, False, streams, seconds, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--streams", type=int, default=64, help="A's (and C's) closed-loop streams")
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--b-tokens", type=int, default=64,
                        help="tokens of each of B's requests (fewer: more TTFT samples)")
    parser.add_argument("--json", help="write the phases here")
    args = parser.parse_args()
    phases = asyncio.run(run(args.streams, args.seconds, args.slots, args.model, args.b_tokens))
    print("| phase | B TTFT p50 (ms) | A tok/s | C tok/s |\n|---|---|---|---|")
    for result in phases:
        print(f"| {result.name} | {result.b_ttft_p50_ms} | {result.a_tok_s} | {result.c_tok_s} |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in phases], indent=2))


if __name__ == "__main__":
    main()
