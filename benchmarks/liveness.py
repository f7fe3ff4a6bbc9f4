"""How long ``/health/live`` takes to answer while a fresh engine serves its first
constrained request (which builds the grammar tokenizer of the model's vocabulary): a probe
every 100 ms from before that request until after its answer, on a fresh server per
repeat. Kubernetes restarts a replica whose liveness probe takes over its timeout (1 s by
default). ``--ours-checkout NAME=DIR`` runs another copy of the code (e.g. a worktree of an
older commit) in the same run, alternating.

    python benchmarks/liveness.py --repeats 3 --ours-checkout before=/tmp/before
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import (  # noqa: E402
    ServerSettings,
    add_server_options,
    kolosal_spec,
    running,
    settings_from_args,
)

PROBE_EVERY_S = 0.1
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}


def probe_during_first_grammar(url: str) -> dict[str, float]:
    """Probe latencies (seconds) around the engine's first json_schema request."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{url}/health/live")
                latencies.append(time.perf_counter() - started)
                done.wait(PROBE_EVERY_S)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    time.sleep(3 * PROBE_EVERY_S)
    started = time.perf_counter()
    answer = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": "bench", "messages": [{"role": "user", "content": "Name a city."}], "max_tokens": 16,
        "temperature": 0, "response_format": {"type": "json_schema",
                                              "json_schema": {"name": "c", "schema": SCHEMA}}})
    request_s = time.perf_counter() - started
    answer.raise_for_status()
    time.sleep(3 * PROBE_EVERY_S)
    done.set()
    prober.join()
    ordered = sorted(latencies)
    return {"probes": len(ordered), "max_ms": 1000 * ordered[-1],
            "p50_ms": 1000 * ordered[len(ordered) // 2], "first_request_s": request_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(parser, n_ctx=1024)
    parser.set_defaults(parallel=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ours-checkout", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings: ServerSettings = settings_from_args(args)
    variants: list[tuple[str, Path | None]] = [("ours", None)]
    for item in args.ours_checkout:
        name, _, directory = item.partition("=")
        variants.append((name, Path(directory)))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    for repeat in range(args.repeats):
        for name, checkout in variants:
            with running(kolosal_spec(settings, name, checkout=checkout)) as url:
                results[name].append(probe_during_first_grammar(url))
            print(f"repeat {repeat + 1} {name}: {results[name][-1]}", flush=True)
    for name, runs in results.items():
        print(f"{name}: probe max {statistics.median(r['max_ms'] for r in runs):.0f} ms (median of "
              f"{len(runs)}), p50 {statistics.median(r['p50_ms'] for r in runs):.1f} ms, first request "
              f"{statistics.median(r['first_request_s'] for r in runs):.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
