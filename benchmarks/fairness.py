"""Fair scheduling between tenants: one engine, tenant A floods it with closed-loop streams
while tenant B sends one request at a time. In process (no HTTP, tenants named directly), or
with ``--http`` through the server, each tenant an API key of a ``--keys-file`` (equal
weights), as clients meet it.

Phases, each on a fresh engine (or server) so no cache carries over:
1. ``B alone``: B's sequential requests, TTFT p50.
2. ``A alone``: A's streams, A's tokens per second.
3. ``A + B, one tenant``: the same load with every request from one tenant (first come,
   first served: what the engine did before tenants): B's TTFT and A's tokens per second.
4. ``A + B, two tenants``: the same load with A and B as tenants of equal weight.
5. ``A + C, equal weights``: two flooding tenants; each one's share of the tokens.

    python benchmarks/fairness.py --streams 64 --seconds 30
    python benchmarks/fairness.py --http --b-tokens 4
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from benchmarks.servers import ServerSettings, kolosal_spec, running  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402
from kolosal.engine import (  # noqa: E402
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


# One request: (index, max_tokens, tenant name or "" for the shared one, tally to count into).
Send = Callable[[int, int, str, Tally], Awaitable[None]]
SAMPLING = {"temperature": 0.8, "top_p": 0.95}


@asynccontextmanager
async def in_process(config: EngineConfig) -> AsyncIterator[Send]:
    """A fresh engine; a tenant is a Tenancy of that name (equal weights)."""
    registry = EngineRegistry()
    try:
        await registry.add(config)
        async with registry.lease(config.engine_id) as engine:
            async def send(index: int, max_tokens: int, tenant: str, tally: Tally) -> None:
                ids = await engine.tokenize(PROMPT.format(index))
                params = SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                                        temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"])
                started = time.perf_counter()
                first = True
                async for _, event in engine.generate(ids, params, f"r{index}", tenancy=Tenancy(tenant)):
                    if isinstance(event, TokenEvent):
                        if first:
                            tally.ttfts.append(time.perf_counter() - started)
                            first = False
                        tally.tokens += 1

            await send(-1, 2, "", Tally())  # warm-up
            yield send
    finally:
        await registry.close_all()


@asynccontextmanager
async def over_http(config: EngineConfig, threads: int) -> AsyncIterator[Send]:
    """A fresh server whose --keys-file names one key per tenant (equal weights); the
    shared tenant "" is key a. TTFT: the request sent to its first streamed text; tokens:
    the completion tokens of the usage chunk."""
    keys = {tenant: f"sk-bench-{tenant}" for tenant in "abc"}
    with tempfile.TemporaryDirectory() as folder:
        keys_file = Path(folder) / "keys.json"
        keys_file.write_text(json.dumps({"keys": [{"name": t, "key": k} for t, k in keys.items()]}))
        settings = ServerSettings(model=Path(config.model_path), threads=threads, n_ctx=config.n_ctx,
                                  parallel=config.n_parallel)
        spec = kolosal_spec(settings, extra=("--keys-file", str(keys_file)))
        with running(spec, Path(folder) / "server.log") as url:
            limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
            async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
                async def send(index: int, max_tokens: int, tenant: str, tally: Tally) -> None:
                    body = {"model": spec.model_id, "prompt": PROMPT.format(index), "max_tokens": max_tokens,
                            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                            **SAMPLING}
                    headers = {"Authorization": f"Bearer {keys[tenant or 'a']}"}
                    started = time.perf_counter()
                    first = True
                    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as answer:
                        answer.raise_for_status()
                        async for line in answer.aiter_lines():
                            if not line.startswith("data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            if first and chunk.get("choices") and chunk["choices"][0].get("text"):
                                tally.ttfts.append(time.perf_counter() - started)
                                first = False
                            if chunk.get("usage"):
                                tally.tokens += chunk["usage"]["completion_tokens"]

                await send(-1, 2, "", Tally())  # warm-up
                yield send


async def closed_loop(send: Send, streams: int, seconds: float, max_tokens: int, tenant: str,
                      tally: Tally, offset: int) -> None:
    deadline = time.perf_counter() + seconds

    async def stream(number: int) -> None:
        count = 0
        while time.perf_counter() < deadline:
            await send(offset + number * 10_000 + count, max_tokens, tenant, tally)
            count += 1

    await asyncio.gather(*(stream(number) for number in range(streams)))


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    b_ttft_p50_ms: float | None
    a_tok_s: float | None
    c_tok_s: float | None = None


Target = Callable[[], contextlib.AbstractAsyncContextManager[Send]]


async def phase(name: str, target: Target, a_streams: int, b: bool, c_streams: int,
                seconds: float, tenants: bool, b_tokens: int = 64) -> Phase:
    a, b_tally, c = Tally(), Tally(), Tally()
    async with target() as send:
        started = time.perf_counter()
        jobs = []
        if a_streams:
            jobs.append(closed_loop(send, a_streams, seconds, 64, "a" if tenants else "", a, 0))
        if c_streams:
            jobs.append(closed_loop(send, c_streams, seconds, 64, "c" if tenants else "", c, 5_000_000))
        if b:
            jobs.append(closed_loop(send, 1, seconds, b_tokens, "b" if tenants else "", b_tally, 9_000_000))
        await asyncio.gather(*jobs)
        elapsed = time.perf_counter() - started  # the deadline, then the requests in flight
    return Phase(name, round(1000 * statistics.median(b_tally.ttfts), 1) if b_tally.ttfts else None,
                 round(a.tokens / elapsed, 1) if a_streams else None,
                 round(c.tokens / elapsed, 1) if c_streams else None)


async def run(streams: int, seconds: float, slots: int, model: str, b_tokens: int,
              http: bool, threads: int) -> list[Phase]:
    config = EngineConfig("fair", model, n_ctx=slots * 160, n_parallel=slots)

    def target() -> contextlib.AbstractAsyncContextManager[Send]:
        return over_http(config, threads) if http else in_process(config)

    return [await phase("B alone", target, 0, True, 0, seconds, True, b_tokens),
            await phase("A alone", target, streams, False, 0, seconds, True),
            await phase("A + B, one tenant (FCFS)", target, streams, True, 0, seconds, False, b_tokens),
            await phase("A + B, two tenants", target, streams, True, 0, seconds, True, b_tokens),
            await phase("A + C, equal weights", target, streams, False, streams, seconds, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--streams", type=int, default=64, help="A's (and C's) closed-loop streams")
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--b-tokens", type=int, default=64,
                        help="tokens of each of B's requests (fewer: more TTFT samples)")
    parser.add_argument("--http", action="store_true",
                        help="through a fresh server per phase, one API key per tenant")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the server's (--http)")
    parser.add_argument("--json", help="write the phases here")
    args = parser.parse_args()
    phases = asyncio.run(run(args.streams, args.seconds, args.slots, args.model, args.b_tokens,
                             args.http, args.threads))
    print("| phase | B TTFT p50 (ms) | A tok/s | C tok/s |\n|---|---|---|---|")
    for result in phases:
        print(f"| {result.name} | {result.b_ttft_p50_ms} | {result.a_tok_s} | {result.c_tok_s} |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in phases], indent=2))


if __name__ == "__main__":
    main()
