"""Side by side: our server vs llama-server built from the same pinned source, on the same
model file with the same threads, total context and slots, under one workload (short,
mixed, chat, echo: see workloads.py). Each concurrency level runs against every server in
turn, each on a freshly started server (no cache carried over), the order alternating per
level and repeat to spread machine noise. Prints every figure per server with the ratio
ours / llama-server, our throughput as % of the raw decode limit (--raw), and writes
compare.json, compare.txt, summary.md (medians and the spread of the repeats) and plots.

    python build_llama.py --with-server          # once: builds the benchmark peer
    python benchmarks/compare.py --workload short --levels 1,4,8,16,32,64 --raw
    python benchmarks/compare.py --workload echo --peer-spec-type ngram-mod \
        --ours spec="--spec-draft-max 8"
    python benchmarks/compare.py --peers "" --ours portable= --ours-libllama portable=DIR  # builds
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import SAMPLINGS, LoadConfig, parse_levels, requests_for, run_level  # noqa: E402
from benchmarks.machine import busy_fraction, machine_info  # noqa: E402
from benchmarks.metrics import LevelResult, level_from_dict, median_result  # noqa: E402
from benchmarks.plots import plot_comparison  # noqa: E402
from benchmarks.report import markdown_spread, markdown_summary, ratio_table, raw_share_table  # noqa: E402
from benchmarks.servers import ServerSettings, ServerSpec, running, server_specs  # noqa: E402
from benchmarks.workloads import WORKLOADS, workload  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402


@dataclass(frozen=True, slots=True)
class SweepOptions:
    """The load every server gets at each level."""

    endpoint: str = "completions"
    max_tokens: int = 64
    long_fraction: float = 0.0
    rounds: int = 2               # sessions per client
    repeats: int = 1              # fresh-server runs per level and server; the median is reported
    max_level_s: float = 300.0
    progress: bool = True
    workload: str = "short"
    logprobs: int = 0             # top log-probabilities on every request
    n: int = 1                    # choices per request
    sampling: str = "greedy"      # loadgen.SAMPLINGS: greedy or chat


def measure_level(spec: ServerSpec, level: int, options: SweepOptions, log_dir: Path) -> LevelResult:
    """One level against a freshly started server, after one warm-up request."""
    with running(spec, log_dir / f"{spec.name}.log") as url:
        config = LoadConfig(url=url, model=spec.model_id, endpoint=options.endpoint,
                            max_tokens=options.max_tokens, long_fraction=options.long_fraction,
                            max_level_s=options.max_level_s, seed=level, workload=options.workload,
                            logprobs=options.logprobs, n=options.n, sampling=options.sampling)
        asyncio.run(run_level(LoadConfig(url=url, model=spec.model_id, max_tokens=8), 1, 1, progress=False))
        return asyncio.run(run_level(config, level, requests_for(level, rounds=options.rounds),
                                     options.progress))


def raw_limits(args: argparse.Namespace, model: Path, levels: list[int]) -> dict[int, float]:
    if args.raw_json:
        data = json.loads(Path(args.raw_json).read_text())
        return {int(row["batch_size"]): float(row["tok_s"]) for row in data["results"]}
    if not args.raw:
        return {}
    from benchmarks.raw_decode import measure
    from kolosal.llama import Model, ModelParams

    sizes = sorted({min(level, args.parallel) for level in levels})
    with Model(model, ModelParams(n_gpu_layers=0)) as loaded:
        return {size: measure(loaded, size, args.max_tokens, args.threads).tok_s for size in sizes}


def parse_ours(items: list[str]) -> dict[str, tuple[str, ...]]:
    """``--ours NAME="FLAGS"`` entries: our server run again under NAME with extra flags."""
    variants: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, _, flags = item.partition("=")
        if not name or name == "kolosal" or name.startswith("llama-server"):
            raise SystemExit(f"--ours {item!r}: expected NAME=FLAGS with a new NAME")
        variants[name] = tuple(shlex.split(flags))
    return variants


def parse_builds(items: list[str], ours: dict[str, tuple[str, ...]],
                 flag: str = "--ours-libllama") -> dict[str, Path]:
    """``NAME=DIR`` entries of ``--ours-libllama`` (the libllama build, its lib directory,
    that the variant NAME of ``--ours`` runs on; "kolosal" is the default build) or of
    ``--ours-checkout`` (the copy of this repository whose code it runs)."""
    builds: dict[str, Path] = {}
    for item in items:
        name, _, directory = item.partition("=")
        if name not in ours or not directory:
            raise SystemExit(f"{flag} {item!r}: expected NAME=DIR with NAME from --ours")
        builds[name] = Path(directory).expanduser()
    return builds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=list(WORKLOADS), default="short",
                        help="what each client sends (its defaults: levels, max tokens, n_ctx, peer KV)")
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--levels", type=parse_levels, default=None, help="default: the workload's")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the workload's")
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                        help="for short, mixed and echo (chat always uses chat completions)")
    parser.add_argument("--long-fraction", type=float, default=None,
                        help="share of ~1k-token prompts (short 0, mixed 0.1)")
    parser.add_argument("--logprobs", type=int, default=0, help="top log-probabilities on every request")
    parser.add_argument("--n", type=int, default=1, help="choices per request")
    parser.add_argument("--sampling", choices=list(SAMPLINGS), default="greedy",
                        help="greedy (temperature 0) or chat (temperature 0.8, top_p 0.95)")
    parser.add_argument("--rounds", type=int, default=2, help="sessions per client per level")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per level and server (order alternating); the table shows medians")
    parser.add_argument("--max-level-s", type=float, default=300.0, help="time limit of one level")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=None,
                        help="total KV cells, the same for every server (default: the workload's)")
    parser.add_argument("--parallel", type=int, default=32, help="slots, the same for every server")
    parser.add_argument("--peers", default="llama-server",
                        help="comma-separated: llama-server, llama-cpp-python (skipped if not installed); "
                             "empty for ours alone")
    parser.add_argument("--peer-spec-type", action="append", default=[],
                        help="also run llama-server with this --spec-type (ngram-simple, ngram-map-k, "
                             "ngram-map-k4v, ngram-mod, ngram-cache); repeatable")
    parser.add_argument("--ours-libllama", action="append", default=[], metavar="NAME=DIR",
                        help="run the --ours variant NAME on the libllama build in DIR")
    parser.add_argument("--ours-checkout", action="append", default=[], metavar="NAME=DIR",
                        help="run the --ours variant NAME from another copy of this repository "
                             "(e.g. `git worktree add DIR COMMIT`: before/after a change)")
    parser.add_argument("--ours", action="append", default=[], metavar='NAME="FLAGS"',
                        help="also run our server as NAME with extra flags, e.g. "
                             'spec="--spec-draft-max 8"; repeatable')
    parser.add_argument("--peer-kv-unified", action="store_true", default=None,
                        help="llama-server with one shared KV pool (-kvu), as ours; needed for long prompts "
                             "when n_ctx / parallel is smaller than a prompt (default: the workload's)")
    parser.add_argument("--llama-server", type=Path, default=None,
                        help="llama-server binary (default: the build cache)")
    parser.add_argument("--raw", action="store_true", help="also measure the raw decode limit (slow)")
    parser.add_argument("--raw-json", help="raw limits from `raw_decode.py --json FILE` instead")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/out/<workload>")
    args = parser.parse_args(argv)
    chosen = WORKLOADS[args.workload]
    args.levels = args.levels or list(chosen.levels)
    args.max_tokens = args.max_tokens or chosen.max_tokens
    args.n_ctx = args.n_ctx or chosen.n_ctx
    args.peer_kv_unified = chosen.peer_kv_unified if args.peer_kv_unified is None else args.peer_kv_unified
    args.out = args.out or Path("benchmarks/out") / args.workload
    workload(args.workload, args.endpoint, args.long_fraction)  # refuses a bad combination early
    return args


def main() -> None:
    args = parse_args()
    model = args.model or default_model_path()
    chosen = WORKLOADS[args.workload]
    settings = ServerSettings(model=model, threads=args.threads, n_ctx=args.n_ctx, parallel=args.parallel,
                              peer_kv_unified=args.peer_kv_unified, peer_chat_template=chosen.chat_template)
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    ours = {"kolosal": (), **parse_ours(args.ours)}
    specs = server_specs(settings, peers, args.llama_server, ours, tuple(args.peer_spec_type),
                         parse_builds(args.ours_libllama, ours),
                         parse_builds(args.ours_checkout, ours, "--ours-checkout"))
    options = SweepOptions(endpoint=args.endpoint, max_tokens=args.max_tokens,
                           long_fraction=args.long_fraction or 0.0, rounds=args.rounds, repeats=args.repeats,
                           max_level_s=args.max_level_s, workload=args.workload, logprobs=args.logprobs,
                           n=args.n, sampling=args.sampling)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs, noise = sweep(specs, args.levels, options, args.out)
    results = {name: [median_result(level) for level in levels] for name, levels in runs.items()}
    raw = raw_limits(args, model, args.levels)
    report = ratio_table(results)
    if raw:
        report += "\n" + raw_share_table(results["kolosal"], raw, args.parallel)
    print(report)
    payload = {"machine": asdict(machine_info()), "model": str(model), "started_at": started,
               "duration_s": round(time.time() - started, 1), "workload": args.workload,
               "argv": sys.argv, "settings": {**vars(args), "out": str(args.out)},
               "commands": {spec.name: list(spec.command) for spec in specs},
               "background_busy": noise, "raw_tok_s": raw,
               "results": {name: [asdict(r) for r in rows] for name, rows in results.items()},
               "runs": {name: [[asdict(r) for r in level] for level in levels]
                        for name, levels in runs.items()}}
    (args.out / "compare.json").write_text(json.dumps(payload, indent=2, default=str))
    (args.out / "compare.txt").write_text(report + "\n")
    summary = markdown_spread(runs)
    headline = markdown_summary(results, raw, args.parallel)
    (args.out / "summary.md").write_text((headline + "\n\n" if headline else "") + summary + "\n")
    title = (f"{args.workload}: {model.name}, {args.threads} threads, {args.parallel} slots, "
             f"{args.max_tokens}-token outputs")
    plot_comparison(results, raw, args.out, title, workload=args.workload)


def sweep(specs: list[ServerSpec], levels: list[int], options: SweepOptions,
          out: Path) -> tuple[dict[str, list[list[LevelResult]]], dict[str, list[float | None]]]:
    """Every level against every server, ``options.repeats`` times, the order alternating;
    returns each server's runs per level and the background CPU load before each run."""
    runs: dict[str, list[list[LevelResult]]] = {spec.name: [] for spec in specs}
    noise: dict[str, list[float | None]] = {spec.name: [] for spec in specs}
    for index, level in enumerate(levels):
        for spec in specs:
            runs[spec.name].append([])
        for repeat in range(options.repeats):
            order = specs if (index + repeat) % 2 == 0 else list(reversed(specs))
            for spec in order:
                noise[spec.name].append(busy_fraction(1.0))  # nothing of ours runs: background load
                print(f"[{spec.name}] {options.workload} C={level} run {repeat + 1}/{options.repeats} "
                      f"(background CPU busy {noise[spec.name][-1]})", file=sys.stderr)
                runs[spec.name][-1].append(measure_level(spec, level, options, out))
    return runs, noise


def load_results(path: Path) -> tuple[dict[str, list[LevelResult]], dict[int, float]]:
    """A compare.json read back (to re-plot or re-tabulate without re-measuring)."""
    data = json.loads(path.read_text())
    results = {name: [level_from_dict(row) for row in rows] for name, rows in data["results"].items()}
    return results, {int(k): float(v) for k, v in data.get("raw_tok_s", {}).items()}


if __name__ == "__main__":
    main()
