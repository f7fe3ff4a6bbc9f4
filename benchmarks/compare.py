"""Side by side: our server vs llama-server built from the same pinned source, same model
file, threads, context and slots. Each concurrency level runs against both servers in turn
(the order alternates per level to spread machine noise), and the table shows the ratio
ours / llama-server for every figure, plus our throughput as a % of the raw decode limit.

    python build_llama.py --with-server          # once: builds the benchmark peer
    python benchmarks/compare.py --levels 1,8,32 --max-tokens 64 --plot benchmarks/out
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.loadgen import LevelResult, LoadConfig, requests_for, run_level  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.llama.loader import cache_dir  # noqa: E402

FIGURES = ("output_tok_s", "requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: list[str]
    model_id: str
    port: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_llama_server() -> Path | None:
    latest = cache_dir() / "builds" / "latest.json"
    if latest.is_file():
        lib_dir = Path(json.loads(latest.read_text())["lib_dir"])
        binary = lib_dir.parent / "server" / "bin" / "llama-server"
        if binary.is_file():
            return binary
    return None


def server_specs(model: Path, threads: int, n_ctx: int, parallel: int) -> list[ServerSpec]:
    port = free_port()
    ours = ServerSpec("kolosal", [sys.executable, "-m", "kolosal", "--model", str(model), "--port", str(port),
                                  "--threads", str(threads), "--n-ctx", str(n_ctx), "--parallel", str(parallel),
                                  "--engine-id", "bench", "--log-level", "warning"], "bench", port)
    specs = [ours]
    binary = find_llama_server()
    if binary is not None:
        port = free_port()
        specs.append(ServerSpec("llama-server", [str(binary), "-m", str(model), "--port", str(port),
                                                 "-t", str(threads), "-c", str(n_ctx), "-np", str(parallel),
                                                 "--log-disable"], "bench", port))
    else:
        print("llama-server not built: run `python build_llama.py --with-server`", file=sys.stderr)
    return specs


@contextmanager
def running(spec: ServerSpec) -> Iterator[str]:
    process = subprocess.Popen(spec.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{spec.port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {process.returncode}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError(f"{spec.name} did not become healthy")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def measure_level(spec: ServerSpec, level: int, args: argparse.Namespace) -> LevelResult:
    with running(spec) as url:
        config = LoadConfig(url=url, model=spec.model_id, endpoint=args.endpoint, max_tokens=args.max_tokens,
                            long_fraction=args.long_fraction)
        asyncio.run(run_level(config, 1, 1, progress=False))  # warm-up
        return asyncio.run(run_level(config, level, requests_for(level, rounds=args.rounds)))


def ratio_table(results: dict[str, list[LevelResult]], raw: dict[int, float]) -> str:
    names = list(results)
    lines = []
    for figure in FIGURES:
        lines.append(f"\n{figure}")
        header = f"{'C':>4} " + " ".join(f"{n:>13}" for n in names)
        if len(names) == 2:
            header += f" {'ratio':>7}"
        lines.append(header)
        for index, level_result in enumerate(results[names[0]]):
            values = [getattr(results[n][index], figure) for n in names]
            row = f"{level_result.concurrency:>4} " + " ".join(f"{v:>13.1f}" for v in values)
            if len(names) == 2:
                row += f" {values[0] / values[1]:>7.2f}" if values[1] else f" {'-':>7}"
            lines.append(row)
    if raw:
        lines.append("\nkolosal output tok/s as % of the raw batched-decode limit")
        for level_result in results[names[0]]:
            limit = raw.get(level_result.concurrency)
            if limit:
                lines.append(f"{level_result.concurrency:>4} {100 * level_result.output_tok_s / limit:>6.1f}%"
                             f"  (raw {limit:.1f} tok/s)")
    return "\n".join(lines)


def plot(results: dict[str, list[LevelResult]], out_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for figure, label, filename in (("output_tok_s", "output tokens/s", "throughput.png"),
                                    ("ttft_p50_ms", "TTFT p50 (ms)", "ttft.png")):
        fig, axis = plt.subplots(figsize=(6, 4))
        for name, rows in results.items():
            axis.plot([r.concurrency for r in rows], [getattr(r, figure) for r in rows], marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=100)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    parser.add_argument("--long-fraction", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--raw", action="store_true", help="also measure the raw decode limit")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    model = Path(args.model) if args.model else default_model_path()
    levels = [int(x) for x in args.levels.split(",")]
    specs = server_specs(model, args.threads, args.n_ctx, args.parallel)
    results: dict[str, list[LevelResult]] = {spec.name: [] for spec in specs}
    for index, level in enumerate(levels):
        order = specs if index % 2 == 0 else list(reversed(specs))
        for spec in order:
            print(f"[{spec.name}] C={level}", file=sys.stderr)
            results[spec.name].append(measure_level(spec, level, args))
    raw: dict[int, float] = {}
    if args.raw:
        from benchmarks.raw_decode import measure
        from kolosal.llama import Model, ModelParams

        with Model(model, ModelParams(n_gpu_layers=0)) as loaded:
            raw = {level: measure(loaded, level, args.max_tokens, args.threads).tok_s for level in levels}
    print(ratio_table(results, raw))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(
        {"levels": levels, "raw_tok_s": raw, "results": {k: [asdict(r) for r in v] for k, v in results.items()}},
        indent=2))
    plot(results, args.out)


if __name__ == "__main__":
    main()
