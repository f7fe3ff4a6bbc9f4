"""Which libllama/ggml CPU paths make a sequence's logits depend on its batch and on the KV
cache state, and which settings make them bitwise invariant.

One target sequence (a prompt, then a fixed continuation fed back token by token, so every
run sees the same tokens) is decoded alone as the reference: the prompt in one batch, then
one row per step. Each case decodes the same tokens under another batch composition or
cache state and compares every logits row of the target with the reference: bitwise equal,
the largest absolute difference, and whether the greedy token ever changes. Each setting
runs in its own process, since ggml reads its environment switches (GGML_CPU_TILED_MM) once.

    python benchmarks/determinism.py                       # every setting, a table
    python benchmarks/determinism.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes "
          "Gutenberg combined movable metal type, oil-based ink and a screw press into a system "
          "that could produce pages far faster than any scribe. Within fifty years")
OTHER_PROMPTS = ("Describe a busy market in the morning, with its sounds and smells.",
                 "Explain how rainbows form after a summer storm.",
                 "Tell me about the history of bicycles in Europe.",
                 "Write a short story about a lighthouse keeper and a lost ship.",
                 "List some facts about the ocean and the creatures living in it.",
                 "What makes a good cup of coffee? Explain step by step.",
                 "A recipe for bread: flour, water, salt and yeast, then")
CONTINUATION = 12   # tokens decoded after the prompt (fixed: the reference run's greedy tokens)
LONG_FILL = 600     # cells another sequence holds, so n_kv >= 512 (ggml's split-KV attention)


@dataclass(frozen=True, slots=True)
class Setting:
    """One way to configure libllama for the run."""
    name: str
    flash_attn: str = "auto"
    extra_bufts: bool = True       # repacked weights (CPU_REPACK)
    tiled_mm: bool = True          # ggml's tiled K-quant matmul for >= 8 rows (GGML_CPU_TILED_MM)
    n_ubatch: int = 512
    type_k: str = "f16"
    type_v: str = "f16"


SETTINGS = (
    Setting("default (FA auto, repack on)"),
    Setting("FA on, repack off", flash_attn="on", extra_bufts=False),
    Setting("FA on, repack off, tiled mm off", flash_attn="on", extra_bufts=False, tiled_mm=False),
    Setting("FA on, repack off, tiled mm off, ubatch 32", flash_attn="on", extra_bufts=False,
            tiled_mm=False, n_ubatch=32),
    Setting("FA on, repack off, tiled mm off, V f32", flash_attn="on", extra_bufts=False,
            tiled_mm=False, type_v="f32"),
    Setting("FA on, repack off, tiled mm off, V q8_0 (--deterministic)", flash_attn="on",
            extra_bufts=False, tiled_mm=False, type_v="q8_0"),
    Setting("FA on, repack on, tiled mm off, V q8_0", flash_attn="on", tiled_mm=False, type_v="q8_0"),
    Setting("FA on, repack off, tiled mm on, V q8_0", flash_attn="on", extra_bufts=False, type_v="q8_0"),
    Setting("FA off, repack off, tiled mm off", flash_attn="off", extra_bufts=False, tiled_mm=False),
)


@dataclass(slots=True)
class CaseResult:
    case: str
    rows: int = 0
    bitwise_equal: bool = True
    max_abs_diff: float = 0.0
    argmax_changes: int = 0
    note: str = ""


@dataclass(slots=True)
class SettingResult:
    setting: Setting
    cases: list[CaseResult] = field(default_factory=list)
    error: str = ""


class Runner:
    """A context, a batch and sequence bookkeeping: decode rows, return the target's logits."""

    def __init__(self, model: object, setting: Setting, n_seq: int = 9) -> None:
        from kolosal.llama import Batch, Context, ContextParams

        self.context = Context(model, ContextParams(  # type: ignore[arg-type]
            n_ctx=2048, n_batch=1024, n_ubatch=setting.n_ubatch, n_seq_max=n_seq, n_threads=2,
            flash_attn=setting.flash_attn, type_k=setting.type_k, type_v=setting.type_v))
        self.batch = Batch(1024)
        self.positions: dict[int, int] = {}

    def close(self) -> None:
        self.batch.close()
        self.context.close()

    def step(self, rows: list[tuple[int, list[int], bool]]) -> dict[int, list[np.ndarray]]:
        """One llama_decode of these (seq_id, tokens, want_logits) parts; returns each
        sequence's logits rows (copies) for the parts that want them."""
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        flags: list[int] = []
        for seq, ids, want in rows:
            start = self.positions.get(seq, 0)
            tokens += ids
            positions += range(start, start + len(ids))
            seqs += [seq] * len(ids)
            flags += [1 if want else 0] * len(ids)
            self.positions[seq] = start + len(ids)
        self.batch.fill(np.array(tokens), np.array(positions), np.array(seqs), np.array(flags))
        status = self.context.decode(self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status!r}")
        out: dict[int, list[np.ndarray]] = {}
        for row, (seq, flag) in enumerate(zip(seqs, flags, strict=True)):
            if flag:
                out.setdefault(seq, []).append(self.context.logits_row(row).copy())
        return out

    def remove(self, seq: int) -> None:
        self.context.seq_remove(seq)
        self.positions.pop(seq, None)


TARGET = 0


def reference(runner: Runner, prompt: list[int], continuation: list[int]) -> list[np.ndarray]:
    """The prompt in one batch (its last row's logits), then one row per step."""
    rows = [runner.step([(TARGET, prompt, True)])[TARGET][-1]]
    for token in continuation:
        rows += runner.step([(TARGET, [token], True)])[TARGET]
    return rows


def case_split_prefill(runner: Runner, prompt: list[int], continuation: list[int],
                       others: list[list[int]]) -> list[np.ndarray]:
    """The prompt in chunks of 16 (chunked prefill, or a prefix cache hit)."""
    chunks = [prompt[i:i + 16] for i in range(0, len(prompt), 16)]
    rows: list[np.ndarray] = []
    for index, chunk in enumerate(chunks):
        got = runner.step([(TARGET, chunk, index == len(chunks) - 1)])
        rows += got.get(TARGET, [])[-1:]
    for token in continuation:
        rows += runner.step([(TARGET, [token], True)])[TARGET]
    return rows


def case_beside_seven(runner: Runner, prompt: list[int], continuation: list[int],
                      others: list[list[int]]) -> list[np.ndarray]:
    """Seven other sequences decode in the same batches (8 rows a step)."""
    runner.step([(seq, ids, True) for seq, ids in enumerate(others[:7], start=1)])
    rows = runner.step([(TARGET, prompt, True)])[TARGET][-1:]
    for step, token in enumerate(continuation):
        parts = [(TARGET, [token], True)] + [(seq, [100 + step + seq], True) for seq in range(1, 8)]
        rows += runner.step(parts)[TARGET]
    return rows


def case_prefill_together(runner: Runner, prompt: list[int], continuation: list[int],
                          others: list[list[int]]) -> list[np.ndarray]:
    """The prompt prefilled in one batch with four other prompts (over 64 rows), then
    decoded beside them."""
    parts = [(TARGET, prompt, True)] + [(seq, ids, True) for seq, ids in enumerate(others[:4], start=1)]
    rows = runner.step(parts)[TARGET][-1:]
    for step, token in enumerate(continuation):
        parts = [(TARGET, [token], True)] + [(seq, [200 + step], True) for seq in range(1, 5)]
        rows += runner.step(parts)[TARGET]
    return rows


def case_decode_beside_prefill(runner: Runner, prompt: list[int], continuation: list[int],
                               others: list[list[int]]) -> list[np.ndarray]:
    """Each decode row shares its batch with 80 more prompt tokens of another sequence."""
    rows = runner.step([(TARGET, prompt, True)])[TARGET][-1:]
    filler = [tok for ids in others for tok in ids] * 20
    for step, token in enumerate(continuation):
        parts = [(TARGET, [token], True), (1, filler[80 * step:80 * (step + 1)], False)]
        rows += runner.step(parts)[TARGET]
    return rows


def case_long_cache(runner: Runner, prompt: list[int], continuation: list[int],
                    others: list[list[int]]) -> list[np.ndarray]:
    """Alone in its batches, but another sequence holds 600 cells between the prompt's and
    the continuation's, so n_kv >= 512 (one-row steps take ggml's split-KV attention)."""
    rows = runner.step([(TARGET, prompt, True)])[TARGET][-1:]
    filler = ([tok for ids in others for tok in ids] * 40)[:LONG_FILL]
    for start in range(0, LONG_FILL, 200):
        runner.step([(1, filler[start:start + 200], False)])
    for token in continuation:
        rows += runner.step([(TARGET, [token], True)])[TARGET]
    return rows


def case_cells_reordered(runner: Runner, prompt: list[int], continuation: list[int],
                         others: list[list[int]]) -> list[np.ndarray]:
    """The prompt's cells follow another sequence's, which is then removed: the
    continuation lands in the freed cells before the prompt's (cells out of position order)."""
    runner.step([(1, (others[0] * 4)[:40], False)])  # a batch of its own: only the cells differ
    rows = runner.step([(TARGET, prompt, True)])[TARGET][-1:]
    runner.remove(1)
    for token in continuation:
        rows += runner.step([(TARGET, [token], True)])[TARGET]
    return rows


def case_twin(runner: Runner, prompt: list[int], continuation: list[int],
              others: list[list[int]]) -> list[np.ndarray]:
    """The same prompt twice in one batch (n=2): the second copy's rows."""
    rows = runner.step([(TARGET, prompt, False), (1, prompt, True)])[1][-1:]
    for token in continuation:
        rows += runner.step([(TARGET, [token], False), (1, [token], True)])[1]
    return rows


CASES: dict[str, Callable[..., list[np.ndarray]]] = {
    "prompt in chunks of 16": case_split_prefill,
    "beside 7 decoding sequences": case_beside_seven,
    "prefilled with 4 other prompts": case_prefill_together,
    "each step beside an 80-token prompt chunk": case_decode_beside_prefill,
    "alone, 600 other cells in the cache": case_long_cache,
    "continuation in cells before the prompt's": case_cells_reordered,
    "the same prompt twice in one batch": case_twin,
}


def compare(name: str, expected: list[np.ndarray], got: list[np.ndarray]) -> CaseResult:
    result = CaseResult(name, rows=len(got))
    if len(got) != len(expected):
        result.note = f"{len(got)} rows, expected {len(expected)}"
        result.bitwise_equal = False
        return result
    for want, have in zip(expected, got, strict=True):
        diff = float(np.max(np.abs(want - have)))
        result.max_abs_diff = max(result.max_abs_diff, diff)
        result.bitwise_equal &= bool(np.array_equal(want, have))
        result.argmax_changes += int(want.argmax() != have.argmax())
    return result


@contextmanager
def loaded_model(model_path: Path, setting: Setting) -> Iterator[object]:
    from kolosal.llama import Model, ModelParams

    with Model(model_path, ModelParams(n_gpu_layers=0, use_extra_bufts=setting.extra_bufts)) as model:
        yield model


def run_setting(model_path: Path, setting: Setting) -> SettingResult:
    """Every case under one setting (in this process: call from a worker)."""
    result = SettingResult(setting)
    with loaded_model(model_path, setting) as model:
        vocab = model.vocab  # type: ignore[attr-defined]
        prompt = vocab.tokenize(PROMPT)
        others = [vocab.tokenize(text) for text in OTHER_PROMPTS]
        runner = Runner(model, setting)
        try:
            first = runner.step([(TARGET, prompt, True)])[TARGET][-1]
            continuation = [int(first.argmax())]
            for _ in range(CONTINUATION - 1):
                row = runner.step([(TARGET, [continuation[-1]], True)])[TARGET][-1]
                continuation.append(int(row.argmax()))
        finally:
            runner.close()
        expected = fresh(model, setting, lambda r: reference(r, prompt, continuation))
        for name, case in CASES.items():
            started = time.monotonic()
            body = partial(case, prompt=prompt, continuation=continuation, others=others)
            got = fresh(model, setting, body)
            result.cases.append(compare(name, expected, got))
            print(f"  {name}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return result


def fresh(model: object, setting: Setting, body: Callable[[Runner], list[np.ndarray]]) -> list[np.ndarray]:
    runner = Runner(model, setting)
    try:
        return body(runner)
    finally:
        runner.close()


def worker_env(setting: Setting) -> dict[str, str]:
    return {**os.environ, "GGML_CPU_TILED_MM": "1" if setting.tiled_mm else "0"}


def run_in_child(model_path: Path, setting: Setting, timeout_s: float = 900.0) -> SettingResult:
    command = [sys.executable, str(Path(__file__).resolve()), "--model", str(model_path),
               "--worker", json.dumps(asdict(setting))]
    try:
        done = subprocess.run(command, env=worker_env(setting), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as expired:
        return SettingResult(setting, error=f"timed out after {timeout_s:.0f}s: {expired.stderr!r}"[-400:])
    if done.returncode != 0:
        return SettingResult(setting, error=(done.stderr or done.stdout)[-400:])
    return result_from_dict(json.loads(done.stdout.splitlines()[-1]))


def result_from_dict(data: dict) -> SettingResult:
    return SettingResult(Setting(**data["setting"]), [CaseResult(**row) for row in data["cases"]],
                         data.get("error", ""))


def format_results(results: list[SettingResult]) -> str:
    lines = []
    for result in results:
        lines.append(f"\n{result.setting.name}")
        if result.error:
            lines.append(f"  failed: {result.error}")
            continue
        for case in result.cases:
            verdict = "bitwise equal" if case.bitwise_equal else f"max |diff| {case.max_abs_diff:.4g}"
            flips = (f", greedy token changed in {case.argmax_changes}/{case.rows} rows"
                     if case.argmax_changes else "")
            lines.append(f"  {case.case:<44} {verdict}{flips}{' ' + case.note if case.note else ''}")
    return "\n".join(lines)


def markdown(results: list[SettingResult]) -> str:
    """The table for RESULTS.md: settings as rows, cases as columns (0 = bitwise equal)."""
    names = list(CASES)
    lines = ["| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for result in results:
        if result.error:
            lines.append(f"| {result.setting.name} | failed: {result.error[:80]} |")
            continue
        cells = ["0" if c.bitwise_equal else f"{c.max_abs_diff:.3g}" + (" (flip)" if c.argmax_changes else "")
                 for c in result.cases]
        lines.append(f"| {result.setting.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--settings", default="", help="comma-separated indices into SETTINGS (default: all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from kolosal.default_model import default_model_path

    model = args.model or default_model_path()
    if args.worker:
        result = run_setting(model, Setting(**json.loads(args.worker)))
        print(json.dumps(asdict(result)))
        return
    chosen = [SETTINGS[int(i)] for i in args.settings.split(",") if i.strip()] or list(SETTINGS)
    results = []
    for setting in chosen:
        print(f"[determinism] {setting.name}", file=sys.stderr)
        results.append(run_in_child(model, setting))
    print(format_results(results))
    print("\n" + markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
