"""Our server against itself, for the costs of two features (issue 13's bars):

- ``logprobs``: throughput with ``logprobs`` (top 5) on every request vs the same load
  without, at 8 and 32 clients (bar: >= 0.9x);
- ``choices``: time to first token of ``n = 4`` vs ``n = 1`` on a ~500-token prompt, one
  request at a time, each prompt new to the cache (bar: <= 1.2x: the four choices share one
  prefill).

Every run starts a fresh server; the two arms alternate per repeat; medians are reported.

    python benchmarks/checks.py logprobs --levels 8,32 --repeats 3
    python benchmarks/checks.py choices --requests 8 --repeats 3
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

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compare import SweepOptions, measure_level  # noqa: E402
from benchmarks.loadgen import chunk_text, parse_levels  # noqa: E402
from benchmarks.metrics import LevelResult  # noqa: E402
from benchmarks.prompts import long_prompt  # noqa: E402
from benchmarks.servers import (  # noqa: E402
    ServerSettings,
    add_server_options,
    kolosal_spec,
    running,
    settings_from_args,
)

CHOICES_PROMPT_WORDS = 430  # about 500 Gemma tokens with the header and the question


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    level: int
    with_feature: list[float]
    without: list[float]
    bar: str

    @property
    def ratio(self) -> float:
        base = statistics.median(self.without)
        return statistics.median(self.with_feature) / base if base else 0.0


def logprobs_check(settings: ServerSettings, levels: list[int], repeats: int, rounds: int,
                   out: Path, top: int = 5, progress: bool = False) -> list[Ratio]:
    """Output tok/s with ``top`` logprobs on every request vs without, per level."""
    ratios = []
    for level in levels:
        arms: dict[int, list[LevelResult]] = {top: [], 0: []}
        for repeat in range(repeats):
            for logprobs in ((top, 0) if repeat % 2 == 0 else (0, top)):
                options = SweepOptions(rounds=rounds, logprobs=logprobs, progress=progress)
                arms[logprobs].append(measure_level(kolosal_spec(settings), level, options, out))
        ratios.append(Ratio("logprobs", level, [r.output_tok_s for r in arms[top]],
                            [r.output_tok_s for r in arms[0]], ">= 0.9x"))
    return ratios


async def first_token_s(client: httpx.AsyncClient, prompt: str, n: int, max_tokens: int) -> float:
    """Seconds from sending a streamed completion to its first text chunk."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "n": n, "stream": True,
            "temperature": 0.0, "ignore_eos": True}
    started = time.perf_counter()
    elapsed = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():  # read to the end: the request completes
            data = line[5:].strip() if line.startswith("data:") else ""
            if elapsed is None and data and data != "[DONE]" and chunk_text(json.loads(data)):
                elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError("the stream had no text")
    return elapsed


def choices_check(settings: ServerSettings, requests: int, repeats: int, out: Path,
                  n: int = 4, max_tokens: int = 8) -> Ratio:
    """TTFT of ``n`` choices vs one on distinct ~500-token prompts (no prefix-cache hits)."""
    arms: dict[int, list[float]] = {n: [], 1: []}
    for repeat in range(repeats):
        for choices in ((n, 1) if repeat % 2 == 0 else (1, n)):
            spec = kolosal_spec(settings)
            with running(spec, out / f"{spec.name}.log") as url:
                prompts = [choices_prompt(repeat * 1000 + i * 2 + choices) for i in range(requests)]
                times = asyncio.run(sequential_ttfts(url, prompts, choices, max_tokens))
                arms[choices].append(statistics.median(times))
    return Ratio(f"TTFT n={n} vs n=1", 1, arms[n], arms[1], "<= 1.2x")


async def sequential_ttfts(url: str, prompts: list[str], n: int, max_tokens: int) -> list[float]:
    """One request at a time, after a warm-up."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await first_token_s(client, "Hello", 1, 2)
        return [await first_token_s(client, prompt, n, max_tokens) for prompt in prompts]


def choices_prompt(index: int) -> str:
    return long_prompt(index, words=CHOICES_PROMPT_WORDS)


def format_ratios(ratios: list[Ratio]) -> str:
    lines = [f"{'check':<20} {'C':>3} {'with':>22} {'without':>22} {'ratio':>7}  bar"]
    for r in ratios:
        shown = " ".join(f"{v:.3g}" for v in r.with_feature), " ".join(f"{v:.3g}" for v in r.without)
        lines.append(f"{r.name:<20} {r.level:>3} {shown[0]:>22} {shown[1]:>22} {r.ratio:>6.2f}x  {r.bar}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["logprobs", "choices"])
    parser.add_argument("--levels", type=parse_levels, default=parse_levels("8,32"))
    parser.add_argument("--rounds", type=int, default=2, help="logprobs: requests per client")
    parser.add_argument("--requests", type=int, default=8, help="choices: requests per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/checks"))
    add_server_options(parser, n_ctx=8192)
    args = parser.parse_args()
    settings = settings_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.check == "logprobs":
        ratios = logprobs_check(settings, args.levels, args.repeats, args.rounds, args.out, progress=True)
    else:
        ratios = [choices_check(settings, args.requests, args.repeats, args.out)]
    print(format_ratios(ratios))
    (args.out / f"{args.check}.json").write_text(json.dumps(
        {"argv": sys.argv, "ratios": [{**asdict(r), "ratio": r.ratio} for r in ratios]}, indent=2))


if __name__ == "__main__":
    main()
