"""Closed-loop load generator for any OpenAI-compatible server.

C concurrent clients each run sessions back to back (a session is one request, or a
multi-turn chat: see workloads.py) until the level's session count (or its time limit) is
reached. Per level: aggregate output tok/s, requests/s, TTFT and inter-token latency
percentiles, prompt tokens served from the server's prefix cache, errors. Outputs have a
fixed length: ``ignore_eos`` (a llama-server extension our server also accepts) keeps every
request at max_tokens.

    python benchmarks/loadgen.py --url http://127.0.0.1:8080 --model gemma-3-270m-q4_k_m \
        --workload mixed --levels 8,32 --max-tokens 64 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.metrics import LevelResult, RequestRecord, summarize  # noqa: E402
from benchmarks.progress import Progress  # noqa: E402
from benchmarks.workloads import WORKLOADS, Call, Session, workload  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# What a request's sampling fields are: greedy, or what SDK users and chat apps send.
SAMPLINGS: dict[str, dict[str, float]] = {"greedy": {"temperature": 0.0},
                                          "chat": {"temperature": 0.8, "top_p": 0.95}}


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str
    model: str
    endpoint: str = "completions"        # or "chat"
    max_tokens: int = 64
    long_fraction: float = 0.0           # share of ~1k-token prompts
    ignore_eos: bool = True
    api_key: str | None = None
    timeout_s: float = 300.0             # one request, connect to last byte
    max_level_s: float = 600.0           # no new requests after this; in-flight ones finish
    seed: int = 0                        # varies the prompts (e.g. per level)
    allow_remote: bool = False
    workload: str = "short"              # see workloads.py
    logprobs: int = 0                    # top log-probabilities per token on every request (0: none)
    n: int = 1                           # choices per request
    sampling: str = "greedy"             # a SAMPLINGS key

    def __post_init__(self) -> None:
        if self.endpoint not in ("completions", "chat"):
            raise ValueError("endpoint must be 'completions' or 'chat'")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}")
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
        if not self.allow_remote and urlparse(self.url).hostname not in LOOPBACK:
            raise ValueError(f"{self.url} is not loopback: pass allow_remote to load another host")


def request_body(config: LoadConfig, call: Call) -> tuple[str, dict[str, Any]]:
    """The call's body plus what every request of the level shares."""
    body: dict[str, Any] = {"model": config.model, "max_tokens": config.max_tokens, "stream": True,
                            **SAMPLINGS[config.sampling], "stream_options": {"include_usage": True},
                            **call.body}
    if config.ignore_eos:
        body["ignore_eos"] = True
    if config.n != 1:
        body["n"] = config.n
    if config.logprobs:
        if call.path.endswith("/chat/completions"):
            body.update(logprobs=True, top_logprobs=config.logprobs)
        else:
            body["logprobs"] = config.logprobs
    return call.path, body


def sessions(config: LoadConfig) -> Callable[[int, int], Session]:
    return workload(config.workload, config.endpoint, config.long_fraction or None).sessions


def chunk_text(payload: dict[str, Any], index: int | None = None) -> str:
    """The text of a stream chunk: every choice's, or only choice ``index``'s."""
    text = ""
    for choice in payload.get("choices") or []:
        if index is None or choice.get("index", 0) == index:
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


def cached_tokens(payload: dict[str, Any]) -> int | None:
    """Prompt tokens the server reused from its cache: OpenAI's usage field (ours and
    llama-server's), else llama-server's ``timings.cache_n``."""
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    if isinstance(details.get("cached_tokens"), int):
        return int(details["cached_tokens"])
    timings = payload.get("timings") or {}
    return int(timings["cache_n"]) if isinstance(timings.get("cache_n"), int) else None


async def one_request(client: httpx.AsyncClient, config: LoadConfig, call: Call) -> RequestRecord:
    """One streamed request of the workload."""
    path, body = request_body(config, call)
    return await stream_request(client, path, body)


async def stream_request(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> RequestRecord:
    """One streamed request (the one SSE client of the benchmarks). A pooled keep-alive
    connection the server closed while idle fails before any response (llama-server does
    this); that request is resent once on a new connection and counted as a reconnect, not
    an error. Its TTFT keeps the lost time."""
    record = RequestRecord()
    started = time.perf_counter()
    for _ in range(2):
        try:
            await stream_into(record, client, path, body, started)
            return record
        except httpx.RemoteProtocolError as error:
            if record.chunks or record.error:
                record.error = f"{type(error).__name__}: {error}"[:160]
                return record
            record.reconnects += 1
        except (httpx.HTTPError, json.JSONDecodeError) as error:
            record.error = f"{type(error).__name__}: {error}"[:160]
            return record
    record.error = "the server closed the connection twice before responding"
    return record


async def stream_into(record: RequestRecord, client: httpx.AsyncClient, path: str,
                      body: dict[str, Any], started: float) -> None:
    last = started
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            record.error = f"HTTP {response.status_code}: {response.text[:120]}"
            return
        async for line in response.aiter_lines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if not data or data == "[DONE]":
                continue
            payload = json.loads(data)
            if "error" in payload:
                error = payload["error"]
                record.error = str(error.get("message") if isinstance(error, dict) else error)
                return
            usage = payload.get("usage")
            if usage:
                record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                record.completion_tokens = int(usage.get("completion_tokens") or 0)
            cached = cached_tokens(payload)
            if cached is not None:
                record.cached_tokens = cached
            record.reply += chunk_text(payload, 0)
            if chunk_text(payload):
                now = time.perf_counter()
                if record.chunks == 0:
                    record.ttft_s = now - started
                else:
                    record.inter_token_s.append(now - last)
                last = now
                record.chunks += 1
    record.ok = record.chunks > 0
    record.error = "" if record.ok else "no text in the stream"
    record.latency_s = time.perf_counter() - started
    record.completion_tokens = record.completion_tokens or record.chunks


async def run_level(config: LoadConfig, concurrency: int, num_sessions: int,
                    progress: bool = True) -> LevelResult:
    """``concurrency`` clients share ``num_sessions`` sessions of the config's workload, each
    client starting its next session as soon as its previous one ends (a closed loop); the
    calls of one session are sent one after another, each with the previous reply."""
    records: list[RequestRecord] = []
    indices = iter(range(num_sessions))
    make_session = sessions(config)
    per_session = WORKLOADS[config.workload].calls_per_session
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    bar = Progress(num_sessions * per_session, f"C={concurrency}", enabled=progress)
    started = time.perf_counter()
    deadline = started + config.max_level_s
    async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout_s, limits=limits,
                                 headers=headers) as client:
        async def run_session(session: Session) -> None:
            call = next(session)
            for turn in itertools.count():
                if time.perf_counter() > deadline:
                    return
                record = await one_request(client, config, call)
                record.turn = turn
                records.append(record)
                bar.advance(record.completion_tokens, ok=record.ok)
                if not record.ok:
                    return  # a conversation cannot go on without its reply
                try:
                    call = session.send(record.reply)
                except StopIteration:
                    return

        async def client_loop() -> None:
            for index in indices:
                if time.perf_counter() > deadline:
                    return
                await run_session(make_session(index, config.seed))

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    bar.close()
    return summarize(concurrency, records, wall)


def requests_for(concurrency: int, minimum: int = 8, rounds: int = 2) -> int:
    """Enough sessions that every client runs ``rounds`` of them (at least ``minimum``)."""
    return max(minimum, concurrency * rounds)


async def sweep(config: LoadConfig, levels: list[int], rounds: int = 2,
                progress: bool = True) -> list[LevelResult]:
    results = []
    for level in levels:
        results.append(await run_level(config, level, requests_for(level, rounds=rounds), progress))
    return results


def format_table(results: list[LevelResult]) -> str:
    header = (f"{'C':>4} {'tok/s':>8} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} "
              f"{'ITL p99':>8} {'cached %':>8} {'reqs':>5} {'err':>4}")
    rows = [f"{r.concurrency:>4} {r.output_tok_s:>8.1f} {r.requests_per_s:>7.2f} {r.ttft_p50_ms:>9.0f} "
            f"{r.ttft_p99_ms:>9.0f} {r.itl_p50_ms:>8.1f} {r.itl_p99_ms:>8.1f} {100 * r.cached_share:>8.1f} "
            f"{r.requests:>5} {r.errors:>4}" for r in results]
    errors = [f"  C={r.concurrency} errors: {'; '.join(r.error_samples)}" for r in results if r.errors]
    return "\n".join([header, *rows, *errors])


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be positive integers, e.g. 1,8,32")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", required=True, help="the request's model field (engine id)")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="short")
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                        help="for short, mixed and echo (chat always uses chat completions)")
    parser.add_argument("--levels", type=parse_levels, default=parse_levels("1,4,8,16,32,64"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--long-fraction", type=float, default=0.0,
                        help="share of ~1k-token prompts (short/mixed; mixed defaults to 0.1)")
    parser.add_argument("--logprobs", type=int, default=0, help="top log-probabilities on every request")
    parser.add_argument("--n", type=int, default=1, help="choices per request")
    parser.add_argument("--sampling", choices=list(SAMPLINGS), default="greedy",
                        help="greedy (temperature 0) or chat (temperature 0.8, top_p 0.95)")
    parser.add_argument("--rounds", type=int, default=2, help="sessions per client per level")
    parser.add_argument("--max-level-s", type=float, default=600.0, help="time limit of one level")
    parser.add_argument("--no-ignore-eos", action="store_true", help="let outputs stop at EOS")
    parser.add_argument("--api-key")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    config = LoadConfig(url=args.url, model=args.model, endpoint=args.endpoint, max_tokens=args.max_tokens,
                        long_fraction=args.long_fraction, ignore_eos=not args.no_ignore_eos,
                        api_key=args.api_key, max_level_s=args.max_level_s, allow_remote=args.allow_remote,
                        workload=args.workload, logprobs=args.logprobs, n=args.n, sampling=args.sampling)
    results = asyncio.run(sweep(config, args.levels, args.rounds, progress=not args.no_progress))
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": asdict(config), "results": [asdict(r) for r in results]}, handle, indent=2)


if __name__ == "__main__":
    main()
