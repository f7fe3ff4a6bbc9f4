"""Structured output: what the grammar costs, in-process and under load.

``masks`` (in-process, no HTTP): llguidance's tokenizer build on the model's vocabulary, a
schema's compile time, the per-token mask time of one matcher, then the engine's step
profile at C constrained sequences vs C unconstrained ones (same prompts, same length), with
the mask work (computing the bitmasks, applying them to the logits rows) timed inside the
step. The issue's bar: masks < 5 % of a step at 8 constrained sequences.

``load`` (HTTP, fresh servers per level like compare.py): streaming /v1/completions at C
clients with llama-server's ``json_schema`` field (both servers take it) vs the same load
unconstrained on our server, and vs llama-server built from the same pinned source on the
same schema. The schema needs far more than ``--max-tokens`` tokens, so every constrained
output is cut at max_tokens like the unconstrained ones (``ignore_eos``): equal lengths,
every token decoded under the grammar.

    python benchmarks/structured.py masks --concurrency 8 --tokens 64
    python build_llama.py --with-server          # once: the peer
    python benchmarks/structured.py load --levels 1,8,32 --repeats 3 --out benchmarks/results/structured
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import format_table, parse_levels, requests_for, stream_request  # noqa: E402
from benchmarks.machine import busy_fraction, machine_info  # noqa: E402
from benchmarks.metrics import LevelResult, RequestRecord, median_result, summarize  # noqa: E402
from benchmarks.servers import (  # noqa: E402
    ServerSettings,
    ServerSpec,
    find_llama_server,
    kolosal_spec,
    llama_server_spec,
    running,
)
from kolosal.default_model import default_model_path  # noqa: E402

# Eight people, each with a bounded string, an integer range, an enum and another string:
# a typical extraction schema, and ~250 tokens at the least, so a 64-token output never ends
# it early.
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Tokyo", "Cairo", "Quito", "Seoul"]
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["people"],
    "properties": {"people": {"type": "array", "minItems": 8, "maxItems": 8, "items": {
        "type": "object", "additionalProperties": False, "required": ["name", "age", "city", "email"],
        "properties": {"name": {"type": "string", "maxLength": 24},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "city": {"enum": CITIES},
                       "email": {"type": "string", "maxLength": 32}}}}}}
PROMPT = "List eight people with their name, age, city and email address, as JSON.\n"


def example_document() -> str:
    """A valid output of SCHEMA in the style the grammar generates (compact, ", " and ": ")."""
    people = [{"name": f"Person {index}", "age": 20 + index, "city": CITIES[index],
               "email": f"person{index}@example.com"} for index in range(8)]
    return json.dumps({"people": people})


# -- in-process: mask costs ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MatcherCosts:
    tokenizer_build_s: float      # llguidance tokenizer from the GGUF vocabulary (once per model)
    compile_s: float              # one matcher for SCHEMA (once per request)
    tokens: int                   # tokens of the example document walked
    mask_us_mean: float           # one matcher's next-token mask, per token
    mask_us_p50: float
    mask_us_p99: float
    vocab_size: int


def matcher_costs(model_path: Path) -> MatcherCosts:
    """Build the tokenizer, compile SCHEMA, then walk a valid document token by token,
    timing each next-token mask (what the engine computes per constrained row per step)."""
    import llguidance
    import llguidance.numpy as llg_numpy

    from kolosal.llama import Model, ModelParams
    from kolosal.llama.grammar import build_lltokenizer
    from kolosal.toolcalls.grammar import json_schema_grammar

    with Model(model_path, ModelParams(n_gpu_layers=0)) as model:
        vocab = model.vocab
        eog = [t for t in range(vocab.n_tokens) if vocab.is_eog(t)]
        started = time.perf_counter()
        tokenizer = build_lltokenizer(vocab, eog)
        build_s = time.perf_counter() - started
        grammar = json_schema_grammar(SCHEMA)
        started = time.perf_counter()
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        compile_s = time.perf_counter() - started
        assert not matcher.is_error(), matcher.get_error()
        document = vocab.tokenize(example_document(), add_special=False)
        bitmask = llg_numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
        times = []
        for token in document:
            started = time.perf_counter()
            llg_numpy.fill_next_token_bitmask(matcher, bitmask, 0)
            times.append(time.perf_counter() - started)
            if not matcher.consume_token(token):
                raise RuntimeError(f"the example document broke the grammar: {matcher.get_error()}")
        micro = sorted(t * 1e6 for t in times)
        return MatcherCosts(round(build_s, 3), round(compile_s, 4), len(document),
                            round(statistics.fmean(micro), 1), round(micro[len(micro) // 2], 1),
                            round(micro[min(len(micro) - 1, int(0.99 * len(micro)))], 1),
                            tokenizer.vocab_size)


@dataclass(slots=True)
class StepCosts:
    constrained: bool
    concurrency: int
    steps: int = 0
    generated: int = 0
    wall_s: float = 0.0
    step_s: float = 0.0           # the whole step (schedule .. deliver)
    decode_s: float = 0.0         # llama_decode
    sample_s: float = 0.0         # the sampling phase, masks included
    fill_masks_s: float = 0.0     # llguidance: next-token masks of every constrained row
    apply_masks_s: float = 0.0    # masking the logits rows (-inf where a bit is 0)
    per_step_ms: dict[str, float] = field(default_factory=dict)

    @property
    def mask_share_pct(self) -> float:
        return 100 * (self.fill_masks_s + self.apply_masks_s) / self.step_s if self.step_s else 0.0


@contextmanager
def timed_masks(costs: StepCosts) -> Iterator[None]:
    """Count the time of GrammarEngine.fill_masks and Context.mask_row (instrumentation of
    this process only; restored afterwards)."""
    from kolosal.engine.constraint import GrammarEngine
    from kolosal.llama.context import Context

    fill, apply = GrammarEngine.fill_masks, Context.mask_row

    def timed(original: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args)
            finally:
                setattr(costs, name, getattr(costs, name) + time.perf_counter() - started)
        return wrapper

    GrammarEngine.fill_masks = timed(fill, "fill_masks_s")  # type: ignore[method-assign]
    Context.mask_row = timed(apply, "apply_masks_s")  # type: ignore[method-assign]
    try:
        yield
    finally:
        GrammarEngine.fill_masks = fill  # type: ignore[method-assign]
        Context.mask_row = apply  # type: ignore[method-assign]


async def step_costs(model_path: Path, concurrency: int, tokens: int, constrained: bool,
                     threads: int = 0) -> StepCosts:
    """C greedy requests of exactly ``tokens`` tokens at once, with or without SCHEMA's
    grammar; speculation off, so both runs decode one row per sequence per step."""
    from benchmarks.step_profile import phase_seconds
    from kolosal.engine import (
        AsyncEngine,
        EngineConfig,
        EngineRegistry,
        ErrorEvent,
        FinishEvent,
        SamplingParams,
    )
    from kolosal.toolcalls.grammar import json_schema_grammar

    grammar = json_schema_grammar(SCHEMA) if constrained else None
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, grammar=grammar,
                            speculative=0)
    registry = EngineRegistry()
    config = EngineConfig("structured", str(model_path), n_ctx=max(2048, concurrency * (tokens + 64)),
                          n_parallel=concurrency, n_threads=threads, spec_draft_max=0)
    costs = StepCosts(constrained, concurrency)

    async def one(engine: AsyncEngine, index: int, tag: str, run: SamplingParams) -> int:
        ids = await engine.tokenize(f"Request {tag}-{index}. {PROMPT}")
        async for _, event in engine.generate(ids, run, f"{tag}{index}"):
            if isinstance(event, ErrorEvent):
                raise event.error
            if isinstance(event, FinishEvent):
                return event.usage.completion_tokens
        return 0

    try:
        await registry.add(config)
        async with registry.lease("structured") as engine:
            warm = replace(params, max_tokens=2)  # page in the weights, build the grammar tokenizer
            await asyncio.gather(*(one(engine, i, "w", warm) for i in range(concurrency)))
            before = engine.stats()
            with timed_masks(costs):
                started = time.perf_counter()
                counts = await asyncio.gather(*(one(engine, i, "m", params) for i in range(concurrency)))
                costs.wall_s = time.perf_counter() - started
            after = engine.stats()
    finally:
        await registry.close_all()
    costs.generated = sum(counts)
    seconds = phase_seconds(before["profile"], after["profile"])
    costs.steps = after["steps"] - before["steps"]
    costs.step_s = sum(seconds.values())
    costs.decode_s, costs.sample_s = seconds["decode_s"], seconds["sample_s"]
    steps = max(costs.steps, 1)
    costs.per_step_ms = {name: round(1000 * value / steps, 3) for name, value in (
        ("step", costs.step_s), ("decode", costs.decode_s), ("sample", costs.sample_s),
        ("fill_masks", costs.fill_masks_s), ("apply_masks", costs.apply_masks_s))}
    return costs


def format_masks(matcher: MatcherCosts, free: StepCosts, constrained: StepCosts) -> str:
    extra = constrained.per_step_ms["step"] - free.per_step_ms["step"]
    lines = [
        f"llguidance tokenizer from the GGUF vocabulary ({matcher.vocab_size} tokens): "
        f"{matcher.tokenizer_build_s:.2f} s (once per model)",
        f"schema compile: {1000 * matcher.compile_s:.1f} ms (once per request)",
        f"one matcher's next-token mask over {matcher.tokens} tokens of a valid document: "
        f"mean {matcher.mask_us_mean:.0f} us, p50 {matcher.mask_us_p50:.0f} us, "
        f"p99 {matcher.mask_us_p99:.0f} us",
        f"\nstep profile at {free.concurrency} sequences "
        f"(ms per step, {free.steps} / {constrained.steps} steps):",
        f"{'':>14} {'step':>8} {'decode':>8} {'sample':>8} {'fill masks':>11} {'apply masks':>12}"]
    for costs in (free, constrained):
        ms = costs.per_step_ms
        name = "constrained" if costs.constrained else "unconstrained"
        lines.append(f"{name:>14} {ms['step']:>8.2f} {ms['decode']:>8.2f} {ms['sample']:>8.2f} "
                     f"{ms['fill_masks']:>11.3f} {ms['apply_masks']:>12.3f}")
    lines.append(f"masks: {constrained.mask_share_pct:.2f}% of a constrained step (step time "
                 f"+{extra:.2f} ms vs unconstrained, {100 * extra / free.per_step_ms['step']:.1f}%)")
    return "\n".join(lines)


# -- HTTP load: constrained vs unconstrained vs llama-server ---------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """One column of the table: a server and whether its requests carry the schema."""

    name: str
    spec: ServerSpec
    constrained: bool


def request_body(model: str, max_tokens: int, constrained: bool, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": f"Request {index}. {PROMPT}", "max_tokens": max_tokens,
                            "stream": True, "temperature": 0.0, "ignore_eos": True,
                            "stream_options": {"include_usage": True}}
    if constrained:
        body["json_schema"] = SCHEMA  # llama-server's field; ours takes it too
    return body


def check_constrained(url: str, model: str) -> None:
    """The server really applies the schema: a short output is the start of SCHEMA's JSON
    (whitespace aside: llama-server's grammar lets the model indent, ours is compact)."""
    body = {**request_body(model, 16, True, 0), "stream": False}
    body.pop("stream_options")
    text = httpx.post(url + "/v1/completions", json=body, timeout=300).json()["choices"][0]["text"]
    if not "".join(text.split()).startswith('{"people":[{'):
        raise RuntimeError(f"{url} did not follow the schema: {text!r}")


async def run_level(url: str, model: str, constrained: bool, concurrency: int, num_requests: int,
                    max_tokens: int) -> LevelResult:
    """A closed loop: ``concurrency`` clients share ``num_requests`` requests."""
    records: list[RequestRecord] = []
    indices = iter(range(num_requests))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        async def client_loop() -> None:
            for index in indices:
                records.append(await stream_request(client, "/v1/completions",
                                                    request_body(model, max_tokens, constrained, index)))

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return summarize(concurrency, records, time.perf_counter() - started)


def measure(target: Target, level: int, max_tokens: int, rounds: int, log_dir: Path) -> LevelResult:
    """One level on a freshly started server, after a warm-up request of the same kind."""
    with running(target.spec, log_dir / f"{target.name}.log") as url:
        asyncio.run(run_level(url, target.spec.model_id, target.constrained, 1, 1, 4))
        if target.constrained:
            check_constrained(url, target.spec.model_id)
        return asyncio.run(run_level(url, target.spec.model_id, target.constrained, level,
                                     requests_for(level, rounds=rounds), max_tokens))


def targets(settings: ServerSettings, llama_server: Path | None) -> list[Target]:
    ours = kolosal_spec(settings)
    found = [Target("kolosal", ours, False), Target("kolosal+schema", ours, True)]
    binary = llama_server or find_llama_server()
    if binary is not None and binary.is_file():
        found.append(Target("llama-server+schema", llama_server_spec(settings, binary), True))
    else:
        print("llama-server not built: run `python build_llama.py --with-server`", file=sys.stderr)
    return found


def load_table(results: dict[str, list[LevelResult]]) -> str:
    names = list(results)
    lines = [f"{'C':>4} " + " ".join(f"{name + ' tok/s':>26}" for name in names)
             + f" {'schema/free':>12} {'ours/llama (schema)':>20}"]
    for index, row in enumerate(results[names[0]]):
        values = {name: results[name][index].output_tok_s for name in names}
        free, ours = values.get("kolosal", 0.0), values.get("kolosal+schema", 0.0)
        peer = values.get("llama-server+schema", 0.0)
        lines.append(f"{row.concurrency:>4} " + " ".join(f"{values[n]:>26.1f}" for n in names)
                     + f" {ours / free if free else 0:>12.2f} {ours / peer if peer else 0:>20.2f}")
    details = [f"\n{name}\n{format_table(rows)}" for name, rows in results.items()]
    return "\n".join(lines + details)


# -- command line ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["masks", "load"])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--concurrency", type=int, default=8, help="masks: sequences decoded together")
    parser.add_argument("--tokens", type=int, default=64, help="masks: tokens per sequence")
    parser.add_argument("--levels", type=parse_levels, default=parse_levels("1,8,32"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="load: requests per client per level")
    parser.add_argument("--repeats", type=int, default=1, help="load: fresh-server runs per level and target")
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--llama-server", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/structured"))
    return parser.parse_args(argv)


def main_masks(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    matcher = matcher_costs(model)
    free = asyncio.run(step_costs(model, args.concurrency, args.tokens, False, args.threads))
    constrained = asyncio.run(step_costs(model, args.concurrency, args.tokens, True, args.threads))
    print(format_masks(matcher, free, constrained))
    return {"matcher": asdict(matcher), "unconstrained": asdict(free), "constrained": asdict(constrained),
            "mask_share_pct": round(constrained.mask_share_pct, 3)}


def main_load(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    threads = args.threads or os.cpu_count() or 2
    settings = ServerSettings(model=model, threads=threads, n_ctx=args.n_ctx, parallel=args.parallel)
    found = targets(settings, args.llama_server)
    runs: dict[str, list[list[LevelResult]]] = {t.name: [] for t in found}
    noise: dict[str, list[float | None]] = {t.name: [] for t in found}
    for index, level in enumerate(args.levels):
        for target in found:
            runs[target.name].append([])
        for repeat in range(args.repeats):
            for target in found if (index + repeat) % 2 == 0 else list(reversed(found)):
                noise[target.name].append(busy_fraction(1.0))
                print(f"[{target.name}] C={level} run {repeat + 1}/{args.repeats} "
                      f"(background CPU busy {noise[target.name][-1]})", file=sys.stderr)
                runs[target.name][-1].append(measure(target, level, args.max_tokens, args.rounds, args.out))
    results = {name: [median_result(level) for level in levels] for name, levels in runs.items()}
    report = load_table(results)
    print(report)
    (args.out / "structured.txt").write_text(report + "\n")
    return {"results": {name: [asdict(r) for r in rows] for name, rows in results.items()},
            "runs": {name: [[asdict(r) for r in level] for level in levels] for name, levels in runs.items()},
            "background_busy": noise, "commands": {t.name: list(t.spec.command) for t in found}}


def main() -> None:
    args = parse_args()
    model = args.model or default_model_path()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    payload = main_masks(args, model) if args.mode == "masks" else main_load(args, model)
    payload.update(machine=asdict(machine_info()), model=str(model), schema=SCHEMA, started_at=started,
                   duration_s=round(time.time() - started, 1),
                   settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    (args.out / f"structured_{args.mode}.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
