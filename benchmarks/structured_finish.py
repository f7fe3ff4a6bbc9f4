"""Structured output that finishes: how many of 20 Pydantic-schema requests end with
``finish_reason: "stop"`` and valid JSON, on our server and on llama-server (built from the
same pinned source), with the same model and the same sampling.

Each request is a chat completion with ``response_format: {"type": "json_schema",
"json_schema": {"name": ..., "schema": Model.model_json_schema()}}`` (what the openai SDK's
``.parse(response_format=Model)`` sends; llama-server takes the same field). A request
counts as finished when it stopped on its own (not at ``max_tokens``) and its content parses
as JSON; ``schema_ok`` also validates it with the Pydantic model.

Sampling (``--sampling``): ``same`` sends llama-server's default sampler settings spelled
out (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05) and one seed per request to both;
``greedy`` sends temperature 0; ``own`` sends none, so each server uses its own defaults.
``--repeats`` runs the set again with other seeds; the report gives each run and the median.

    python build_llama.py --with-server          # once: the peer
    python benchmarks/structured_finish.py --sampling same --repeats 3
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
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.pydantic_schemas import CASES, schemas  # noqa: E402
from benchmarks.servers import (  # noqa: E402
    ServerSettings,
    ServerSpec,
    find_llama_server,
    kolosal_spec,
    llama_server_spec,
    running,
)
from kolosal.default_model import models_cache_dir  # noqa: E402

SAMPLING: dict[str, dict[str, Any]] = {
    "same": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05},
    "greedy": {"temperature": 0.0},
    "own": {},
}
SYSTEM = "You answer with one JSON object that follows the requested schema."


@dataclass(frozen=True, slots=True)
class Outcome:
    case: str
    finish_reason: str
    json_ok: bool
    schema_ok: bool
    completion_tokens: int
    content: str

    @property
    def finished(self) -> bool:
        return self.finish_reason == "stop" and self.json_ok


def request_body(model: str, name: str, schema: dict[str, Any], prompt: str, sampling: str,
                 seed: int, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": name, "schema": schema, "strict": True}},
        **SAMPLING[sampling]}
    if sampling != "own":
        body["seed"] = seed
    return body


def judge(index: int, response: dict[str, Any]) -> Outcome:
    model = CASES[index][0]
    choice = response["choices"][0]
    content = choice["message"].get("content") or ""
    try:
        json.loads(content)
        json_ok = True
    except ValueError:
        json_ok = False
    try:
        model.model_validate_json(content)
        schema_ok = True
    except ValueError:
        schema_ok = False
    return Outcome(model.__name__, str(choice.get("finish_reason")), json_ok, schema_ok,
                   int(response.get("usage", {}).get("completion_tokens", 0)), content)


async def run_set(url: str, model: str, sampling: str, seed: int, max_tokens: int,
                  concurrency: int, x_guidance: dict[str, Any] | None = None) -> list[Outcome]:
    cases = [(name, {**schema, "x-guidance": x_guidance} if x_guidance else schema, prompt)
             for name, schema, prompt in schemas()]
    outcomes: list[Outcome | None] = [None] * len(cases)
    indices = iter(range(len(cases)))
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        async def worker() -> None:
            for index in indices:
                name, schema, prompt = cases[index]
                body = request_body(model, name, schema, prompt, sampling, seed + index, max_tokens)
                answer = await client.post("/v1/chat/completions", json=body)
                answer.raise_for_status()
                outcomes[index] = judge(index, answer.json())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [outcome for outcome in outcomes if outcome is not None]


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {"finished": sum(o.finished for o in outcomes),
            "schema_ok": sum(o.finished and o.schema_ok for o in outcomes),
            "length": sum(o.finish_reason == "length" for o in outcomes),
            "tokens": sum(o.completion_tokens for o in outcomes)}


def report(runs: dict[str, list[list[Outcome]]]) -> str:
    lines = [f"{'server':<14} {'finished (per run)':<22} {'median':>6} {'schema ok':>9} "
             f"{'length':>6} {'tokens':>7}"]
    for name, sets in runs.items():
        each = [counts(outcomes) for outcomes in sets]
        finished = [c["finished"] for c in each]
        lines.append(f"{name:<14} {','.join(map(str, finished)):<22} {statistics.median(finished):>6} "
                     f"{statistics.median(c['schema_ok'] for c in each):>9} "
                     f"{statistics.median(c['length'] for c in each):>6} "
                     f"{statistics.median(c['tokens'] for c in each):>7}")
    for name, sets in runs.items():
        for number, outcomes in enumerate(sets):
            for outcome in outcomes:
                if not outcome.finished:
                    lines.append(f"  {name} run {number + 1} {outcome.case}: {outcome.finish_reason}, "
                                 f"...{outcome.content[-60:]!r}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="GGUF file (default: the bundled SmolLM2 135M Instruct)")
    parser.add_argument("--sampling", choices=sorted(SAMPLING), default="same")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the 20 requests (other seeds)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--servers", default="kolosal,llama-server")
    parser.add_argument("--llama-server", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/structured_finish"))
    parser.add_argument("--x-guidance", type=json.loads, default=None,
                        help='llguidance JSON options added to every schema sent to our server, '
                             'e.g. \'{"whitespace_flexible": true}\'')
    return parser.parse_args(argv)


def specs(args: argparse.Namespace, model: Path) -> list[ServerSpec]:
    settings = ServerSettings(model=model, threads=args.threads, n_ctx=args.n_ctx,
                              parallel=args.concurrency)
    wanted = args.servers.split(",")
    found = [kolosal_spec(settings)] if "kolosal" in wanted else []
    binary = args.llama_server or find_llama_server()
    if "llama-server" in wanted:
        if binary is None or not binary.is_file():
            print("llama-server not built: run `python build_llama.py --with-server`", file=sys.stderr)
        else:
            found.append(llama_server_spec(settings, binary))
    return found


def main() -> None:
    args = parse_args()
    model = args.model or models_cache_dir() / "smollm2-135m-instruct-q4_1.gguf"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs: dict[str, list[list[Outcome]]] = {}
    for spec in specs(args, model):
        with running(spec, args.out / f"{spec.name}.log") as url:
            runs[spec.name] = [asyncio.run(run_set(url, spec.model_id, args.sampling,
                                                   args.seed + 100 * repeat, args.max_tokens,
                                                   args.concurrency,
                                                   args.x_guidance if spec.name == "kolosal" else None))
                               for repeat in range(args.repeats)]
    text = report(runs)
    print(text)
    (args.out / f"structured_finish_{args.sampling}.txt").write_text(text + "\n")
    payload = {"runs": {name: [[asdict(o) for o in outcomes] for outcomes in sets]
                        for name, sets in runs.items()},
               "machine": asdict(machine_info()), "model": str(model), "started_at": started,
               "duration_s": round(time.time() - started, 1),
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    (args.out / f"structured_finish_{args.sampling}.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
