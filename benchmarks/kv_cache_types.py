"""KV cache types side by side on our server: for each (K, V) type pair a fresh server with
a large context, its memory estimate (GET /engines/{id}/status), its real resident memory
(RSS after the load, and after a load that fills the cache), and the short workload's
throughput and latency at a few concurrency levels.

    python benchmarks/kv_cache_types.py --n-ctx 32768 --types f16/f16,q8_0/q8_0,q4_0/q4_0,f16/q8_0
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import LoadConfig, parse_levels, requests_for, run_level  # noqa: E402
from benchmarks.machine import busy_fraction, machine_info  # noqa: E402
from benchmarks.metrics import LevelResult  # noqa: E402
from benchmarks.servers import (  # noqa: E402
    ServerSettings,
    add_server_options,
    kolosal_spec,
    running_process,
    settings_from_args,
)


@dataclass(slots=True)
class TypeResult:
    type_k: str
    type_v: str
    kv_estimate_bytes: int = 0
    total_estimate_bytes: int = 0
    rss_loaded_bytes: int = 0
    rss_after_bytes: int = 0
    background_busy: float | None = None
    levels: list[LevelResult] = field(default_factory=list)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def parse_types(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        k, _, v = item.strip().partition("/")
        pairs.append((k, v or k))
    return pairs


def measure_types(settings: ServerSettings, type_k: str, type_v: str, levels: list[int], rounds: int,
                  max_tokens: int, out: Path, progress: bool = False) -> TypeResult:
    """One fresh server with these cache types: memory, then each level."""
    result = TypeResult(type_k, type_v, background_busy=busy_fraction(1.0))
    flags = ("--cache-type-k", type_k, "--cache-type-v", type_v)
    spec = kolosal_spec(settings, f"kv-{type_k}-{type_v}", flags)
    with running_process(spec, out / f"{spec.name}.log") as process:
        status = httpx.get(f"{spec.url}/engines/{spec.model_id}/status", timeout=30).json()
        estimate = status.get("memory_estimate") or {}
        result.kv_estimate_bytes = int(estimate.get("kv_cache_bytes", 0))
        result.total_estimate_bytes = int(estimate.get("total_bytes", 0))
        result.rss_loaded_bytes = rss_bytes(process.pid)
        for level in levels:
            config = LoadConfig(url=spec.url, model=spec.model_id, max_tokens=max_tokens, seed=level)
            result.levels.append(asyncio.run(run_level(config, level, requests_for(level, rounds=rounds),
                                                       progress)))
        result.rss_after_bytes = rss_bytes(process.pid)
    return result


def markdown(results: list[TypeResult]) -> str:
    levels = [r.concurrency for r in results[0].levels] if results else []
    header = ("| K / V | KV estimate MiB | estimate total MiB | RSS loaded MiB | RSS after MiB | "
              + " | ".join(f"tok/s C={c} | ITL p50 ms C={c}" for c in levels) + " |")
    lines = [header, "|" + "---|" * (5 + 2 * len(levels))]
    for r in results:
        cells = [f"{r.type_k} / {r.type_v}", f"{r.kv_estimate_bytes / 2**20:.0f}",
                 f"{r.total_estimate_bytes / 2**20:.0f}", f"{r.rss_loaded_bytes / 2**20:.0f}",
                 f"{r.rss_after_bytes / 2**20:.0f}"]
        cells += [f"{level.output_tok_s:.1f} | {level.itl_p50_ms:.1f}" for level in r.levels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", type=parse_types, help="comma-separated K/V pairs",
                        default=parse_types("f16/f16,q8_0/q8_0,q4_0/q4_0,f16/q8_0"))
    parser.add_argument("--levels", type=parse_levels, default=parse_levels("1,8"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/kv_cache_types"))
    add_server_options(parser, n_ctx=32768, n_ctx_help="large, so the KV cache dominates memory")
    args = parser.parse_args()
    settings = settings_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for type_k, type_v in args.types:
        print(f"[kv] {type_k}/{type_v}", file=sys.stderr)
        results.append(measure_types(settings, type_k, type_v, args.levels, args.rounds, args.max_tokens,
                                     args.out, progress=True))
    table = markdown(results)
    print(table)
    (args.out / "kv_cache_types.md").write_text(table + "\n")
    (args.out / "kv_cache_types.json").write_text(json.dumps(
        {"machine": asdict(machine_info()), "argv": sys.argv, "results": [asdict(r) for r in results]},
        indent=2, default=str))


if __name__ == "__main__":
    main()
