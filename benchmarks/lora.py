"""What LoRA adapter sets cost, in process (no HTTP): one engine with two small adapters
(random low-rank updates of a few layers' attn_q/attn_v, written with the ``gguf`` package
as the tests do), C closed-loop streams of 64 sampled tokens each, three ways:

- ``base``: every stream on the base model;
- ``one set``: every stream on adapter 0;
- ``two sets``: half the streams on adapter 0, half on adapter 1: a step holds one set, so
  the sets take turns and each switch re-applies the adapters.

Phases alternate over ``--repeats`` rounds on one engine; the median tokens per second of
each is reported.

    python benchmarks/lora.py --streams 8 --seconds 20 --repeats 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, SamplingParams, TokenEvent  # noqa: E402
from kolosal.engine.lora import LoraSpec  # noqa: E402
from tests.lora_files import write_lora  # noqa: E402

PHASES: dict[str, tuple[tuple[tuple[int, float], ...], ...]] = {
    "base": ((),),
    "one set": (((0, 1.0),),),
    "two sets": (((0, 1.0),), ((1, 1.0),)),
}


async def phase(engine: AsyncEngine, streams: int, seconds: float,
                sets: tuple[tuple[tuple[int, float], ...], ...]) -> float:
    deadline = time.perf_counter() + seconds
    tokens = 0

    async def stream(number: int) -> None:
        nonlocal tokens
        params = SamplingParams(max_tokens=64, temperature=0.8, top_p=0.95, ignore_eos=True,
                                lora=sets[number % len(sets)])
        count = 0
        while time.perf_counter() < deadline:
            ids = await engine.tokenize(f"Stream {number}, request {count}: a story about the sea")
            async for _, event in engine.generate(ids, params, f"s{number}-{count}"):
                if isinstance(event, TokenEvent):
                    tokens += 1
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(stream(number) for number in range(streams)))
    return tokens / (time.perf_counter() - started)


async def run(streams: int, seconds: float, repeats: int, model: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        adapters = [Path(folder) / f"adapter{index}.gguf" for index in range(2)]
        for index, path in enumerate(adapters):
            write_lora(path, model, seed=index + 1)
        config = EngineConfig("lora-bench", str(model), n_ctx=streams * 160, n_parallel=streams,
                              lora=tuple(LoraSpec(str(path), 0.0) for path in adapters))
        registry = EngineRegistry()
        rates: dict[str, list[float]] = {name: [] for name in PHASES}
        try:
            await registry.add(config)
            async with registry.lease(config.engine_id) as engine:
                await phase(engine, streams, 2.0, PHASES["two sets"])  # warm-up
                for _ in range(repeats):
                    for name, sets in PHASES.items():
                        rates[name].append(await phase(engine, streams, seconds, sets))
        finally:
            await registry.close_all()
    return {name: round(statistics.median(values), 1) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args()
    medians = asyncio.run(run(args.streams, args.seconds, args.repeats, args.model))
    base = medians["base"]
    print("| phase | tok/s | vs base |\n|---|---|---|")
    for name, rate in medians.items():
        print(f"| {name} | {rate} | {rate / base:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
