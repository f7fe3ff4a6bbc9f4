"""Sampling in C (kolosal_sample) against a reference implementation in numpy, on fixed
logits: no model, no clock (issue 24). The reference is the chain's definition: penalties ->
logit bias -> top-k -> top-p (over the whole remaining distribution) -> min-p ->
temperature -> a draw.

With u on a stratified grid (u_i = (i + 0.5) / N) the draw is the inverse of the survivors'
distribution, so each token's count must be N * p within rounding: an exact check of the
filters and weights. The seeded generator is then checked by chi-square over real draws."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from kolosal.llama import load
from kolosal.llama.sampler import Sampler, SamplerSettings, SampleScratch

VOCAB = 2_000
GRID = 20_000


def reference(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0, recent: list[int] | None = None, repeat: float = 1.0,
              frequency: float = 0.0, presence: float = 0.0,
              bias: dict[int, float] | None = None) -> dict[int, float]:
    """token -> probability, by the chain's definition (float64)."""
    values = logits.astype(np.float64)
    for token, count in Counter(recent or []).items():
        value = values[token]
        value = value * repeat if value <= 0 else value / repeat
        values[token] = value - count * frequency - presence
    for token, value in (bias or {}).items():
        values[token] += value
    if temperature <= 0:
        return {int(np.argmax(values)): 1.0}
    order = [t for t in np.lexsort((np.arange(len(values)), -values)) if np.isfinite(values[t])]
    if top_k > 0:
        order = order[:top_k]
    if top_p < 1.0:
        weights = np.exp(values[order] - values[order[0]])
        cumulative = np.cumsum(weights / weights.sum())
        order = order[:int(np.searchsorted(cumulative, top_p)) + 1]
    if min_p > 0.0:
        floor = values[order[0]] + math.log(min_p)
        order = [order[0]] + [t for t in order[1:] if values[t] >= floor]
    weights = np.exp((values[order] - values[order[0]]) / temperature)
    return {int(t): float(w) for t, w in zip(order, weights / weights.sum(), strict=True)}


def sample_c(logits: np.ndarray, u: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0, scratch: Any = None, allowed: np.ndarray | None = None) -> int:
    native = load()
    ffi, lib = native.ffi, native.lib
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    no_ids, no_values = ffi.from_buffer("int32_t[]", empty_i), ffi.from_buffer("float[]", empty_f)
    return int(lib.kolosal_sample(ffi.from_buffer("float[]", logits), len(logits), no_ids, no_ids, 0,
                                  1.0, 0.0, 0.0, no_ids, no_values, 0, temperature, top_k, top_p, min_p, u,
                                  scratch or SampleScratch(len(logits)).buffer,
                                  ffi.NULL if allowed is None else ffi.from_buffer("uint32_t[]", allowed)))


def fixed_logits(seed: int = 7, scale: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(VOCAB) * scale).astype(np.float32)
    logits[[5, 6]] = logits.max() + 1.0  # a tie at the top
    logits[100:110] = -np.inf           # masked by a grammar
    return logits


SETTINGS = [
    {"temperature": 1.0},
    {"temperature": 0.8, "top_p": 0.95},
    {"temperature": 0.7, "top_k": 40},
    {"temperature": 1.3, "top_k": 50, "top_p": 0.9},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 0.6, "top_p": 0.8, "min_p": 0.02},
    {"temperature": 2.0, "top_p": 0.999},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_stratified_draws_follow_the_reference_distribution(settings: dict[str, Any]) -> None:
    logits = fixed_logits()
    scratch = SampleScratch(VOCAB).buffer
    counts = Counter(sample_c(logits, (i + 0.5) / GRID, scratch=scratch, **settings) for i in range(GRID))
    expected = reference(logits, **settings)
    assert set(counts) <= set(expected), set(counts) - set(expected)
    for token, probability in expected.items():
        assert abs(counts[token] - GRID * probability) <= 2.0, (token, counts[token], GRID * probability)


def test_temperature_zero_is_the_argmax_and_ties_go_to_the_lowest_id() -> None:
    logits = fixed_logits()
    assert sample_c(logits, 0.99, temperature=0.0) == 5
    assert sample_c(logits, 0.5, temperature=0.0, top_p=0.5) == int(np.argmax(logits))


def test_masked_tokens_are_never_drawn_and_the_row_is_put_back() -> None:
    logits = np.full(VOCAB, -np.inf, dtype=np.float32)
    logits[[3, 900]] = [0.0, -200.0]  # a token 200 logits down: weight 0, never drawn
    before = logits.copy()
    assert {sample_c(logits, u) for u in (0.0, 0.5, 1 - 1e-12)} == {3}
    assert {sample_c(logits, u, top_p=0.5) for u in (0.0, 0.999)} == {3}
    np.testing.assert_array_equal(logits, before)


class Row:
    """A logits buffer where a sampler reads batch rows (the Context interface it uses)."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits
        self.pointer = load().ffi.from_buffer("float[]", logits)

    def logits_pointer(self, row: int) -> Any:
        return self.pointer


def sample_adjusted(logits: np.ndarray, u: float, recent: list[int], repeat: float, frequency: float,
                    presence: float, bias: dict[int, float], **settings: Any) -> int:
    native = load()
    ffi, lib = native.ffi, native.lib
    counts = Counter(recent)
    ids = np.array(list(counts), dtype=np.int32)
    times = np.array(list(counts.values()), dtype=np.int32)
    bias_ids = np.array(list(bias), dtype=np.int32)
    bias_values = np.array(list(bias.values()), dtype=np.float32)
    return int(lib.kolosal_sample(ffi.from_buffer("float[]", logits), len(logits),
                                  ffi.from_buffer("int32_t[]", ids), ffi.from_buffer("int32_t[]", times),
                                  len(ids), repeat, frequency, presence,
                                  ffi.from_buffer("int32_t[]", bias_ids),
                                  ffi.from_buffer("float[]", bias_values), len(bias_ids),
                                  settings.get("temperature", 1.0), 0, settings.get("top_p", 1.0), 0.0, u,
                                  SampleScratch(len(logits)).buffer, ffi.NULL))


def test_penalties_and_bias_match_the_reference_and_leave_the_row_as_it_was() -> None:
    logits = fixed_logits(seed=3, scale=1.0)
    before = logits.copy()
    recent = [int(np.argmax(logits)), 7, 7, 1500]  # the best token, one twice, a negative one
    adjust = {"recent": recent, "repeat": 1.3, "frequency": 0.4, "presence": 0.6,
              "bias": {11: 5.0, 12: -100.0}}
    counts = Counter(sample_adjusted(logits, (i + 0.5) / GRID, top_p=0.9, **adjust)  # type: ignore[arg-type]
                     for i in range(GRID))
    np.testing.assert_array_equal(logits, before)
    expected = reference(logits, top_p=0.9, **adjust)  # type: ignore[arg-type]
    assert set(counts) <= set(expected)
    for token, probability in expected.items():
        assert abs(counts[token] - GRID * probability) <= 2.0, (token, counts[token], GRID * probability)
    # through a Sampler: greedy with a strong repeat penalty over its own window of 4 tokens
    row = Row(logits)
    sampler = Sampler(SamplerSettings(temperature=0.0, repeat_penalty=1e9, penalty_last_n=4), VOCAB)
    produced = [sampler.sample(row, 0) for _ in range(12)]  # type: ignore[arg-type]
    assert all(len(set(produced[i:i + 5])) == 5 for i in range(len(produced) - 4)), produced
    greedy = Sampler(SamplerSettings(temperature=0.0, logit_bias={11: 50.0}), VOCAB)
    assert greedy.sample(row, 0) == 11  # type: ignore[arg-type]
    np.testing.assert_array_equal(logits, before)


def chi_square_critical(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty: the chi-square value exceeded with probability ~0.001 (z = 3.09)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_seeded_draws_pass_chi_square_and_repeat_exactly() -> None:
    logits = fixed_logits(seed=11, scale=2.0)
    settings = SamplerSettings(temperature=0.8, top_p=0.95, seed=1234)
    expected = reference(logits, temperature=0.8, top_p=0.95)
    row = Row(logits)
    draws = 30_000
    first = Sampler(settings, VOCAB)
    tokens = [first.sample(row, 0) for _ in range(draws)]  # type: ignore[arg-type]
    counts = Counter(tokens)
    frequent = [t for t, p in expected.items() if p * draws >= 5]  # the rest pooled in one cell
    cells = [(counts[t], expected[t] * draws) for t in frequent]
    rest = sum(counts[t] for t in expected if t not in frequent)
    cells.append((rest, draws - sum(e for _, e in cells)))
    statistic = sum((o - e) ** 2 / e for o, e in cells if e > 0)
    assert statistic < chi_square_critical(len(cells) - 1), (statistic, len(cells))
    again = Sampler(settings, VOCAB)
    assert [again.sample(row, 0) for _ in range(200)] == tokens[:200]  # type: ignore[arg-type]


def test_a_steps_rows_sampled_on_several_threads_draw_what_one_thread_draws(model_path: Any) -> None:
    """The runner spreads a step's sampled rows over threads; every draw is its sampler's
    own, so the split changes no token (12 rows of one real decode, seeded samplers)."""
    from kolosal.engine.config import EngineConfig
    from kolosal.engine.runner import ModelRunner
    from kolosal.llama import Batch

    runner = ModelRunner(EngineConfig("threads", str(model_path), n_ctx=1024, n_parallel=12))
    try:
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        flags: list[int] = []
        for seq in range(12):
            ids = runner.vocab.tokenize(f"Story number {seq}: once upon a time")
            tokens += ids
            positions += range(len(ids))
            seqs += [seq] * len(ids)
            flags += [0] * (len(ids) - 1) + [1]
        with Batch(1024) as batch:
            batch.fill(np.array(tokens), np.array(positions), np.array(seqs), np.array(flags))
            runner.context.decode(batch)
        rows = np.flatnonzero(np.array(flags))
        settings = [SamplerSettings(temperature=0.9, top_p=0.95, seed=100 + seq) for seq in range(12)]
        alone = [Sampler(s, runner.context.n_vocab).sample(runner.context, int(row))
                 for s, row in zip(settings, rows, strict=True)]
        spread = np.zeros(12, dtype=np.int32)
        runner._sample_rows([(index, Sampler(s, runner.context.n_vocab), int(rows[index]), None)
                             for index, s in enumerate(settings)], spread)
        assert spread.tolist() == alone
    finally:
        runner.close()


def bitmask(allowed_ids: np.ndarray, vocab: int = VOCAB) -> np.ndarray:
    """A llguidance-style mask: bit t of word t // 32 set when token t is allowed."""
    bits = np.zeros((vocab + 31) // 32 * 32, dtype=np.uint8)
    bits[allowed_ids] = 1
    return np.packbits(bits, bitorder="little").view(np.uint32)


def grammar_reference(logits: np.ndarray, allowed_ids: np.ndarray, **settings: Any) -> dict[int, float]:
    """A grammar's draw: the filters' survivors on the whole row that it allows, in
    proportion; none of them allowed: the filters on the allowed tokens alone. Without a
    filter, or greedy: the allowed tokens' distribution."""
    masked = np.full_like(logits, -np.inf)
    masked[allowed_ids] = logits[allowed_ids]
    filtered = any(settings.get(k, d) != d for k, d in (("top_k", 0), ("top_p", 1.0), ("min_p", 0.0)))
    if not filtered:
        return reference(masked, **settings)
    kept = {t: p for t, p in reference(logits, **settings).items() if t in set(allowed_ids.tolist())}
    if not kept:
        return reference(masked, **settings)
    total = sum(kept.values())
    return {t: p / total for t, p in kept.items()}


def draws(logits: np.ndarray, allowed: np.ndarray, **settings: Any) -> Counter[int]:
    scratch = SampleScratch(VOCAB).buffer
    return Counter(sample_c(logits.copy(), (i + 0.5) / GRID, scratch=scratch, allowed=allowed, **settings)
                   for i in range(GRID))


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_a_grammar_restricts_the_filters_survivors(settings: dict[str, Any]) -> None:
    """The filters judge the model's distribution, the grammar restricts what survives:
    here it forbids the best tokens and every other one."""
    logits = fixed_logits()
    order = np.argsort(-logits, kind="stable")
    allowed_ids = np.concatenate([order[3:400:2], order[1500:]])
    counts = draws(logits, bitmask(allowed_ids), **settings)
    expected = grammar_reference(logits, allowed_ids, **settings)
    assert set(counts) <= set(expected), set(counts) - set(expected)
    for token, probability in expected.items():
        assert abs(counts[token] - GRID * probability) <= 2.0, (token, counts[token], GRID * probability)


@pytest.mark.parametrize("settings", SETTINGS[1:], ids=[str(s) for s in SETTINGS[1:]])
def test_a_grammar_that_allows_no_survivor_masks_the_row_first(settings: dict[str, Any]) -> None:
    logits = fixed_logits()
    order = np.argsort(-logits, kind="stable")
    allowed_ids = order[1200:1300]  # far below every filter's cut
    counts = draws(logits, bitmask(allowed_ids), **settings)
    expected = grammar_reference(logits, allowed_ids, **settings)
    assert set(counts) <= set(allowed_ids.tolist())
    for token, probability in expected.items():
        assert abs(counts[token] - GRID * probability) <= 2.0, (token, counts[token], GRID * probability)
    row = logits.copy()
    sample_c(row, 0.5, allowed=bitmask(allowed_ids), **settings)
    assert np.isneginf(np.delete(row, allowed_ids)).all()  # left masked
    np.testing.assert_array_equal(row[allowed_ids], logits[allowed_ids])


def test_a_grammar_with_greedy_takes_the_best_allowed_token() -> None:
    logits = fixed_logits()
    order = np.argsort(-logits, kind="stable")
    allowed = bitmask(order[7:])
    assert sample_c(logits.copy(), 0.3, temperature=0.0, allowed=allowed) == int(order[7])
    assert sample_c(logits.copy(), 0.3, temperature=0.0, top_k=5, allowed=allowed) == int(order[7])
