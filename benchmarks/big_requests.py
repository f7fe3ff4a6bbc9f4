"""One request beside a big one, in process (no HTTP): how long a small request waits when
a request of n choices fills every slot, or when a giant embeddings request is in front of
it (issue 27). Each phase on a fresh engine.

1. ``generation``: a request of n = slots greedy choices (``--big-tokens`` each, ignore_eos);
   once every choice decodes, a single request of 8 tokens. Its latency (submit to finish),
   and the big request's time alone and beside it.
2. ``embeddings``: a request of ``--giant-inputs`` inputs of one step each (n_batch 64);
   after its first step, a request of one input. Its latency, and the giant's time.

Runs whatever ``kolosal`` is importable first: ``PYTHONPATH=/other/checkout`` measures
another checkout (before/after).

    python benchmarks/big_requests.py --slots 8 --big-tokens 64 --giant-inputs 60
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, SamplingParams  # noqa: E402


async def big_request(engine: AsyncEngine, n: int, tokens: int, decoding: asyncio.Event | None) -> float:
    ids = await engine.tokenize("List the animals of the world, one per line:")
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    seen: set[int] = set()
    async for index, _ in engine.generate(ids, params, "big", n=n):
        seen.add(index)
        if decoding is not None and len(seen) == n:
            decoding.set()
    return time.perf_counter() - started


async def single_after(engine: AsyncEngine, decoding: asyncio.Event) -> float:
    await decoding.wait()
    ids = await engine.tokenize("A single request:")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    async for _ in engine.generate(ids, params, "one"):
        pass
    return time.perf_counter() - started


async def generation(registry: EngineRegistry, model: str, slots: int, tokens: int) -> dict[str, float]:
    await registry.add(EngineConfig("gen", model, n_ctx=4096, n_parallel=slots))
    try:
        async with registry.lease("gen") as engine:
            alone = await big_request(engine, slots, tokens, None)
            decoding = asyncio.Event()
            big, single = await asyncio.gather(big_request(engine, slots, tokens, decoding),
                                               single_after(engine, decoding))
            return {"big_alone_s": alone, "big_beside_s": big, "single_latency_s": single}
    finally:
        await registry.remove("gen")


async def embeddings(registry: EngineRegistry, model: str, inputs: int) -> dict[str, float]:
    await registry.add(EngineConfig("emb", model, n_ctx=256, n_batch=64, embedding=True))
    try:
        async with registry.lease("emb") as engine:
            started = time.perf_counter()
            giant = asyncio.create_task(engine.embed([[2] + [4000 + i % 300] * 62 for i in range(inputs)]))
            while engine.stats()["steps"] < 1:
                await asyncio.sleep(0.005)
            small_started = time.perf_counter()
            await engine.embed([[2] + [5000] * 62])
            small = time.perf_counter() - small_started
            await giant
            return {"giant_s": time.perf_counter() - started, "small_latency_s": small,
                    "step_ms": engine.stats()["last_step_ms"]}
    finally:
        await registry.remove("emb")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--big-tokens", type=int, default=64)
    parser.add_argument("--giant-inputs", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = str(default_model_path())
    registry = EngineRegistry()
    try:
        results = {"generation": await generation(registry, model, args.slots, args.big_tokens)}
        print(json.dumps(results), file=sys.stderr, flush=True)
        results["embeddings"] = await embeddings(registry, model, args.giant_inputs)
    finally:
        await registry.close_all()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
