"""Soak: minutes of mixed traffic against a fresh server, watching its memory.

C clients loop over a mix of streaming and non-streaming completions and chats, a share of
them hanging up mid-stream, plus periodic load/unload of a second engine. The server's RSS is
sampled throughout; after a warm-up, growth beyond --max-growth-mib fails the run (exit 1),
as do 5xx responses, or a server that is not idle and clean at the end.

    python benchmarks/soak.py --minutes 10 --clients 16
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ServerSettings, kolosal_spec, running_process  # noqa: E402
from kolosal.default_model import default_model_path  # noqa: E402


@dataclass
class SoakReport:
    requests: int = 0
    cancelled: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    rss_mib: list[tuple[float, float]] = field(default_factory=list)   # (seconds, MiB)
    reloads: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def growth_mib(self) -> float:
        """RSS at the end minus RSS after the warm-up third of the run."""
        if len(self.rss_mib) < 3:
            return 0.0
        settled = self.rss_mib[len(self.rss_mib) // 3][1]
        return self.rss_mib[-1][1] - settled

    def check_growth(self, max_growth_mib: float) -> None:
        if self.growth_mib > max_growth_mib:
            self.problems.append(f"RSS grew {self.growth_mib:.1f} MiB after the warm-up (> {max_growth_mib})")

    def summary(self) -> str:
        start = f"{self.rss_mib[0][1]:.0f}" if self.rss_mib else "?"
        peak = max((r for _, r in self.rss_mib), default=0.0)
        return (f"requests {self.requests} (hung up {self.cancelled}), statuses {self.status_counts}, "
                f"engine reloads {self.reloads}, RSS start {start} MiB, peak {peak:.0f} MiB, "
                f"growth after warm-up {self.growth_mib:+.1f} MiB")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


async def one_request(http: httpx.AsyncClient, model: str, rng: random.Random, report: SoakReport) -> None:
    chat = rng.random() < 0.5
    stream = rng.random() < 0.7
    hang_up_after = rng.randint(1, 20) if stream and rng.random() < 0.3 else None
    body: dict[str, object] = {"model": model, "max_tokens": rng.randint(4, 48), "stream": stream,
                               "temperature": rng.choice([0.0, 0.7, 1.0]), "seed": rng.randint(0, 999)}
    words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(1, 300)))
    if chat:
        body["messages"] = [{"role": "user", "content": words}]
    else:
        body["prompt"] = words
    path = "/v1/chat/completions" if chat else "/v1/completions"
    report.requests += 1
    async with http.stream("POST", path, json=body) as response:
        report.status_counts[response.status_code] = report.status_counts.get(response.status_code, 0) + 1
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if hang_up_after is not None and seen >= hang_up_after:
                report.cancelled += 1
                return


async def soak(base_url: str, pid: int, model: str, model_path: Path, minutes: float, clients: int,
               seed: int = 0) -> SoakReport:
    report = SoakReport()
    started = time.monotonic()
    stop_at = started + minutes * 60
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        async def client_loop(index: int) -> None:
            local = random.Random(rng.random())
            while time.monotonic() < stop_at:
                try:
                    await one_request(http, model, local, report)
                except httpx.HTTPError as error:
                    report.problems.append(f"client {index}: {type(error).__name__}: {error}")

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                report.rss_mib.append((round(time.monotonic() - started, 1), rss_mib(pid)))
                await asyncio.sleep(5)

        async def reloader() -> None:  # a second engine comes and goes
            while time.monotonic() < stop_at:
                created = await http.post("/engines", json={"engine_id": "soak-extra", "n_ctx": 1024,
                                                             "model_path": str(model_path)})
                if created.status_code == 201:
                    await http.post("/v1/completions", json={"model": "soak-extra", "prompt": "Hi",
                                                             "max_tokens": 4})
                    await http.delete("/engines/soak-extra")
                    report.reloads += 1
                await asyncio.sleep(10)

        await asyncio.gather(sampler(), reloader(), *(client_loop(i) for i in range(clients)))
        await asyncio.sleep(1.0)
        report.rss_mib.append((round(time.monotonic() - started, 1), rss_mib(pid)))
        status = (await http.get(f"/engines/{model}/status")).json()["stats"]
        busy = status["slots_busy"] or status["queue_depth"]
        if busy or status["kv_cells_used"] != status["kv_cells_cached"]:
            report.problems.append(f"not clean at the end: {status}")
    if any(code >= 500 for code in report.status_counts):
        report.problems.append(f"server errors: {report.status_counts}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-growth-mib", type=float, default=64.0)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or default_model_path()
    spec = kolosal_spec(ServerSettings(model=model, threads=0, n_ctx=8192, parallel=16))
    with running_process(spec) as process:
        report = asyncio.run(soak(spec.url, process.pid, spec.model_id, model, args.minutes, args.clients))
    print(report.summary())
    report.check_growth(args.max_growth_mib)
    for problem in report.problems[:20]:
        print("problem:", problem)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
