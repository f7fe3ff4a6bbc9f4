"""Embeddings throughput, side by side: our server (the model loaded as an embedding engine)
vs llama-server ``--embeddings`` built from the same pinned source, on the same model file
with the same threads, pooling, context, slots and tokens per step. At each concurrency
level C, C clients send ``POST /v1/embeddings`` requests back to back (a closed loop; one
input each unless --inputs-per-request), every input a distinct sentence; each server is
freshly started per level, warmed up with one request, and the order alternates per level.
Reports inputs/s, request latency p50/p99 and errors per server with the ratio ours /
llama-server, and how closely the two servers' vectors agree (cosine of the same inputs).

    python build_llama.py --with-server          # once: builds the benchmark peer
    python benchmarks/embeddings.py --levels 1,16,64 --out benchmarks/out
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import parse_levels  # noqa: E402
from benchmarks.machine import busy_fraction, machine_info  # noqa: E402
from benchmarks.metrics import percentile  # noqa: E402
from benchmarks.servers import (  # noqa: E402
    ServerSettings,
    ServerSpec,
    find_llama_server,
    kolosal_spec,
    llama_server_spec,
    running,
)
from kolosal.default_model import default_model_path  # noqa: E402

TOPICS = ("river", "mountain", "engine", "garden", "signal", "harbor", "lantern", "copper", "meadow",
          "circuit", "violin", "glacier", "market", "thunder", "orchard", "canvas", "bakery", "comet")


@dataclass(frozen=True, slots=True)
class EmbedSettings:
    """What both servers get."""

    model: Path
    threads: int
    n_ctx: int = 8192
    parallel: int = 64        # inputs decoded together (llama-server slots, our inputs per step)
    n_batch: int = 512        # tokens per step (llama-server: -b and -ub)
    pooling: str = "mean"


@dataclass(slots=True)
class EmbedLevel:
    server: str
    concurrency: int
    requests: int = 0
    inputs: int = 0
    errors: int = 0
    wall_s: float = 0.0
    inputs_per_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    error_samples: list[str] = field(default_factory=list)


def input_text(index: int, words: int) -> str:
    """A distinct sentence per index (about words + 8 Gemma tokens)."""
    rng = random.Random(index)
    return f"Note {index}: " + " ".join(rng.choice(TOPICS) for _ in range(words)) + "."


def embedding_specs(settings: EmbedSettings, peers: tuple[str, ...] = ("llama-server",),
                    llama_server: Path | None = None) -> list[ServerSpec]:
    """Ours first, then llama-server when built (a missing one is reported, not fatal). Both
    keep one unified KV pool and take ``n_batch`` tokens and ``parallel`` inputs per step."""
    base = ServerSettings(model=settings.model, threads=settings.threads, n_ctx=settings.n_ctx,
                          parallel=settings.parallel, peer_kv_unified=True)
    ours = kolosal_spec(base)
    specs = [replace(ours, command=(*ours.command, "--embedding", "--pooling", settings.pooling,
                                    "--n-batch", str(settings.n_batch)))]
    if "llama-server" in peers:
        binary = llama_server or find_llama_server()
        if binary is not None and binary.is_file():
            peer = llama_server_spec(base, binary)
            specs.append(replace(peer, command=(*peer.command, "--embeddings", "--pooling",
                                                settings.pooling, "-b", str(settings.n_batch),
                                                "-ub", str(settings.n_batch))))
        else:
            print("llama-server not built: run `python build_llama.py --with-server`", file=sys.stderr)
    return specs


async def embed(client: httpx.AsyncClient, model: str, texts: list[str]) -> np.ndarray:
    response = await client.post("/v1/embeddings", json={"model": model, "input": texts,
                                                         "encoding_format": "float"})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    data = sorted(response.json()["data"], key=lambda item: item["index"])
    return np.array([item["embedding"] for item in data], dtype=np.float32)


async def run_level(url: str, model: str, server: str, concurrency: int, num_requests: int,
                    inputs_per_request: int = 1, words: int = 16, timeout_s: float = 600.0,
                    seed: int = 0) -> EmbedLevel:
    """``concurrency`` clients share ``num_requests`` requests, each sending its next one as
    soon as its previous one is answered."""
    result = EmbedLevel(server, concurrency)
    latencies: list[float] = []
    indices = iter(range(num_requests))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def client_loop() -> None:
            for index in indices:
                first = (seed * 1_000_003 + index) * inputs_per_request
                texts = [input_text(first + k, words) for k in range(inputs_per_request)]
                sent = time.perf_counter()
                try:
                    vectors = await embed(client, model, texts)
                except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as error:
                    result.errors += 1
                    if len(result.error_samples) < 3:
                        result.error_samples.append(str(error) or type(error).__name__)
                    continue
                latencies.append(time.perf_counter() - sent)
                result.requests += 1
                result.inputs += len(vectors)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    result.inputs_per_s = result.inputs / result.wall_s if result.wall_s > 0 else 0.0
    result.latency_p50_ms = percentile(latencies, 50) * 1000
    result.latency_p99_ms = percentile(latencies, 99) * 1000
    return result


def measure_level(spec: ServerSpec, level: int, rounds: int, inputs_per_request: int, words: int,
                  log_dir: Path) -> EmbedLevel:
    """One level against a freshly started server, after one warm-up request."""
    with running(spec, log_dir / f"embeddings-{spec.name}.log") as url:
        asyncio.run(run_level(url, spec.model_id, spec.name, 1, 1, inputs_per_request, words, seed=99))
        return asyncio.run(run_level(url, spec.model_id, spec.name, level, max(8, level * rounds),
                                     inputs_per_request, words, seed=level))


async def sample_vectors(url: str, model: str, count: int = 16, words: int = 16) -> np.ndarray:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return await embed(client, model, [input_text(10_000 + i, words) for i in range(count)])


def agreement(specs: list[ServerSpec], log_dir: Path, words: int) -> float | None:
    """The lowest cosine between the two servers' vectors of the same inputs (1.0 = same)."""
    if len(specs) < 2:
        return None
    found = []
    for spec in specs[:2]:
        with running(spec, log_dir / f"embeddings-{spec.name}.log") as url:
            found.append(asyncio.run(sample_vectors(url, spec.model_id, words=words)))
    return float(np.min(np.sum(found[0] * found[1], axis=1)))


def median_level(runs: list[EmbedLevel]) -> EmbedLevel:
    """The run with the median inputs/s (its other figures come with it); errors summed."""
    ordered = sorted(runs, key=lambda run: run.inputs_per_s)
    chosen = replace(ordered[len(ordered) // 2])
    chosen.errors = sum(run.errors for run in runs)
    chosen.error_samples = [sample for run in runs for sample in run.error_samples][:3]
    return chosen


def format_table(results: dict[str, list[EmbedLevel]]) -> str:
    names = list(results)
    lines = [f"{'C':>4} " + " ".join(f"{name + ' in/s':>20} {'p50 ms':>8} {'p99 ms':>8} {'err':>4}"
                                       for name in names)
             + ("   ratio" if len(names) > 1 else "")]
    for row in zip(*results.values(), strict=True):
        cells = " ".join(f"{r.inputs_per_s:>20.1f} {r.latency_p50_ms:>8.0f} {r.latency_p99_ms:>8.0f} "
                         f"{r.errors:>4}" for r in row)
        ratio = (f"   {row[0].inputs_per_s / row[1].inputs_per_s:.2f}x"
                 if len(row) > 1 and row[1].inputs_per_s > 0 else "")
        lines.append(f"{row[0].concurrency:>4} {cells}{ratio}")
    errors = [f"  {r.server} C={r.concurrency}: {'; '.join(r.error_samples)}"
              for rows in results.values() for r in rows if r.errors]
    return "\n".join(lines + errors)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--levels", type=parse_levels, default=parse_levels("1,16,64"))
    parser.add_argument("--rounds", type=int, default=4, help="requests per client per level")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-server runs per level; median")
    parser.add_argument("--inputs-per-request", type=int, default=1)
    parser.add_argument("--words", type=int, default=16, help="words per input (~words + 8 tokens)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--pooling", choices=["mean", "cls", "last"], default="mean")
    parser.add_argument("--peers", default="llama-server", help="comma-separated; '' for ours alone")
    parser.add_argument("--llama-server", type=Path, default=None, help="llama-server binary")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    settings = EmbedSettings(model=(args.model or default_model_path()).resolve(), threads=args.threads,
                             n_ctx=args.n_ctx, parallel=args.parallel, n_batch=args.n_batch,
                             pooling=args.pooling)
    specs = embedding_specs(settings, tuple(p for p in args.peers.split(",") if p), args.llama_server)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_info()}  busy before: {busy_fraction()}")
    results: dict[str, list[EmbedLevel]] = {spec.name: [] for spec in specs}
    for position, level in enumerate(args.levels):
        order = specs if position % 2 == 0 else list(reversed(specs))
        runs: dict[str, list[EmbedLevel]] = {spec.name: [] for spec in specs}
        for _ in range(args.repeats):
            for spec in order:
                run = measure_level(spec, level, args.rounds, args.inputs_per_request, args.words, args.out)
                runs[spec.name].append(run)
                print(f"  {spec.name:>14} C={level:<3} {run.inputs_per_s:8.1f} inputs/s "
                      f"p50 {run.latency_p50_ms:.0f} ms  errors {run.errors}", flush=True)
        for name, level_runs in runs.items():
            results[name].append(median_level(level_runs))
    cosine = agreement(specs, args.out, args.words)
    table = format_table(results)
    print(table)
    if cosine is not None:
        print(f"lowest cosine between the servers' vectors of the same inputs: {cosine:.5f}")
    report = {"settings": {**asdict(settings), "model": str(settings.model)},
              "machine": asdict(machine_info()), "levels": args.levels,
              "inputs_per_request": args.inputs_per_request, "words": args.words,
              "results": {name: [asdict(r) for r in rows] for name, rows in results.items()},
              "min_cosine_between_servers": cosine,
              "median_ratio": statistics.median(
                  [a.inputs_per_s / b.inputs_per_s for a, b in zip(*results.values(), strict=True)
                   if b.inputs_per_s > 0]) if len(results) > 1 else None}
    (args.out / "embeddings.json").write_text(json.dumps(report, indent=2))
    (args.out / "embeddings.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
