"""Closed-loop load generator for any OpenAI-compatible server.

C concurrent clients each send streaming requests back to back until the level's request
count is done. Per level: aggregate output tok/s, requests/s, TTFT and inter-token latency
percentiles, errors.

    python benchmarks/loadgen.py --url http://127.0.0.1:8080 --model gemma-3-270m-q4_k_m \
        --levels 1,8,32 --max-tokens 64
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx

SHORT_PROMPTS = ["Write a story about a lighthouse keeper.", "Explain how rainbows form.",
                 "List some facts about the ocean.", "Describe a busy market in the morning.",
                 "What makes a good cup of coffee?", "Tell me about the history of bicycles."]


def long_prompt(index: int, words: int = 750) -> str:
    """About 1k tokens of varied text (distinct per index so no prefix cache helps)."""
    rng = random.Random(index)
    vocabulary = ["river", "mountain", "engine", "garden", "signal", "harbor", "lantern", "copper",
                  "meadow", "circuit", "violin", "glacier", "market", "thunder", "orchard", "canvas"]
    body = " ".join(rng.choice(vocabulary) for _ in range(words))
    return f"Document {index}: {body}\nSummarize the document above."


@dataclass
class RequestRecord:
    ok: bool
    ttft_s: float = 0.0
    latency_s: float = 0.0
    completion_tokens: int = 0
    inter_token_s: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    output_tok_s: float
    requests_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    position = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[position]


@dataclass(frozen=True)
class LoadConfig:
    url: str
    model: str
    endpoint: str = "completions"        # or "chat"
    max_tokens: int = 64
    long_fraction: float = 0.0
    ignore_eos: bool = True
    api_key: str | None = None
    timeout_s: float = 300.0


def request_body(config: LoadConfig, prompt: str) -> tuple[str, dict]:
    common = {"model": config.model, "max_tokens": config.max_tokens, "stream": True,
              "temperature": 0.0, "stream_options": {"include_usage": True}}
    if config.ignore_eos:
        common["ignore_eos"] = True
    if config.endpoint == "chat":
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**common, "prompt": prompt}


async def one_request(client: httpx.AsyncClient, config: LoadConfig, prompt: str) -> RequestRecord:
    path, body = request_body(config, prompt)
    started = time.perf_counter()
    last = started
    record = RequestRecord(ok=False)
    chunks = 0
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}"
                await response.aread()
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    record.error = str(payload["error"].get("message"))
                    return record
                if payload.get("usage"):
                    record.completion_tokens = payload["usage"]["completion_tokens"]
                for choice in payload.get("choices") or []:
                    text = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        if chunks == 0:
                            record.ttft_s = now - started
                        else:
                            record.inter_token_s.append(now - last)
                        last = now
                        chunks += 1
    except httpx.HTTPError as error:
        record.error = type(error).__name__
        return record
    record.ok = True
    record.latency_s = time.perf_counter() - started
    record.completion_tokens = record.completion_tokens or chunks
    return record


def pick_prompt(config: LoadConfig, counter: int) -> str:
    if config.long_fraction and random.Random(counter).random() < config.long_fraction:
        return long_prompt(counter)
    return f"{SHORT_PROMPTS[counter % len(SHORT_PROMPTS)]} (request {counter})"


async def run_level(config: LoadConfig, concurrency: int, num_requests: int,
                    progress: bool = True) -> LevelResult:
    records: list[RequestRecord] = []
    counter = iter(range(num_requests))
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout_s, limits=limits,
                                 headers=headers) as client:
        async def worker() -> None:
            for index in counter:
                records.append(await one_request(client, config, pick_prompt(config, index)))
                if progress:
                    print(f"\r  C={concurrency:<3} {len(records)}/{num_requests} requests", end="",
                          file=sys.stderr, flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    if progress:
        print(file=sys.stderr)
    good = [r for r in records if r.ok]
    ttfts = [r.ttft_s * 1000 for r in good]
    itls = [gap * 1000 for r in good for gap in r.inter_token_s]
    tokens = sum(r.completion_tokens for r in good)
    return LevelResult(concurrency=concurrency, requests=len(records), errors=len(records) - len(good),
                       wall_s=round(wall, 3), output_tok_s=round(tokens / wall, 2),
                       requests_per_s=round(len(good) / wall, 3),
                       ttft_p50_ms=round(percentile(ttfts, 50), 1), ttft_p99_ms=round(percentile(ttfts, 99), 1),
                       itl_p50_ms=round(percentile(itls, 50), 1), itl_p99_ms=round(percentile(itls, 99), 1))


def requests_for(concurrency: int, minimum: int = 8, rounds: int = 2) -> int:
    """Enough requests that every client runs ``rounds`` requests (a closed loop)."""
    return max(minimum, concurrency * rounds)


async def sweep(config: LoadConfig, levels: list[int], rounds: int = 2) -> list[LevelResult]:
    return [await run_level(config, c, requests_for(c, rounds=rounds)) for c in levels]


def format_table(results: list[LevelResult]) -> str:
    header = f"{'C':>4} {'tok/s':>8} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'err':>4}"
    rows = [f"{r.concurrency:>4} {r.output_tok_s:>8.1f} {r.requests_per_s:>7.2f} {r.ttft_p50_ms:>9.0f} "
            f"{r.ttft_p99_ms:>9.0f} {r.itl_p50_ms:>8.1f} {r.itl_p99_ms:>8.1f} {r.errors:>4}" for r in results]
    return "\n".join([header, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", required=True)
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    parser.add_argument("--levels", default="1,4,8,16,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--long-fraction", type=float, default=0.0, help="share of ~1k-token prompts")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--api-key")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    config = LoadConfig(url=args.url, model=args.model, endpoint=args.endpoint, max_tokens=args.max_tokens,
                        long_fraction=args.long_fraction, api_key=args.api_key)
    results = asyncio.run(sweep(config, [int(x) for x in args.levels.split(",")], args.rounds))
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in results], handle, indent=2)


if __name__ == "__main__":
    main()
