"""Each benchmark script's core runs on a tiny configuration, so the scripts cannot rot.
No timing assertions: only that they run and return well-formed results."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.compare import SweepOptions, load_results, measure_level
from benchmarks.draft_replay import replay, step_times
from benchmarks.loadgen import LoadConfig, format_table, run_level
from benchmarks.machine import busy_fraction, machine_info
from benchmarks.match_odds import tally
from benchmarks.metrics import LevelResult, RequestRecord, median_result, percentile, summarize
from benchmarks.plots import plot_comparison
from benchmarks.prompts import long_prompt, pick_prompt
from benchmarks.raw_decode import measure
from benchmarks.report import markdown_summary, ratio_table, raw_share_table
from benchmarks.row_cost import measure as measure_rows
from benchmarks.servers import ServerSettings, find_llama_server, server_specs
from benchmarks.step_profile import format_profile, profile

from ..server_process import ENGINE, ServerProcess


def test_raw_decode_probe(llama_model: object) -> None:
    for size in (1, 2):
        result = measure(llama_model, batch_size=size, tokens=4)  # type: ignore[arg-type]
        assert result.batch_size == size and result.tokens == 4 * size
        assert result.tok_s > 0 and 0 < result.decode_s <= result.elapsed_s


def test_row_cost_probe(llama_model: object) -> None:
    results = measure_rows(llama_model, [1, 3], repeats=1, n_threads=0)  # type: ignore[arg-type]
    assert [r.rows for r in results] == [1, 3]
    assert all(r.all_logits_ms > 0 and r.last_logits_ms > 0 and r.ceiling > 0 for r in results)
    assert results[0].ceiling == 1.0


@pytest.mark.model  # the profile loads the default model itself
async def test_step_profile() -> None:
    result = await profile(concurrency=2, tokens=4)
    assert result.steps >= 4 and result.tok_s > 0
    assert set(result.seconds) == {"schedule_s", "fill_s", "decode_s", "sample_s", "update_s", "deliver_s"}
    assert 0 <= result.python_overhead_pct <= 100
    assert "python overhead" in format_profile(result)


async def test_loadgen_against_our_server(server: ServerProcess) -> None:
    for endpoint in ("completions", "chat"):
        config = LoadConfig(url=server.base_url, model=ENGINE, endpoint=endpoint, max_tokens=4,
                            long_fraction=0.5)
        result = await run_level(config, concurrency=2, num_sessions=2, progress=False)
        assert result.requests == 2 and result.errors == 0, result.error_samples
        assert result.output_tokens == 8  # ignore_eos: exactly max_tokens each, counted from usage
        assert result.output_tok_s > 0 and result.ttft_p50_ms > 0
        assert result.mean_prompt_tokens > 0
        assert "TTFT p50" in format_table([result])


async def test_loadgen_reports_errors(server: ServerProcess) -> None:
    config = LoadConfig(url=server.base_url, model="no-such-engine", max_tokens=4)
    result = await run_level(config, concurrency=1, num_sessions=1, progress=False)
    assert result.errors == 1 and result.error_samples[0].startswith("HTTP 404")


def test_loadgen_refuses_remote_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoadConfig(url="http://example.com:8080", model="m")


def test_compare_level_on_fresh_servers(model_path: Path, tmp_path: Path) -> None:
    """compare.py's core: start each server, warm up, one tiny level, stop; then report."""
    settings = ServerSettings(model=model_path, threads=2, n_ctx=512, parallel=2)
    peers = ("llama-server",) if find_llama_server() else ()
    options = SweepOptions(max_tokens=2, rounds=1, progress=False)
    results = {spec.name: [measure_level(spec, 1, options, tmp_path)]
               for spec in server_specs(settings, peers)}
    assert all(rows[0].errors == 0 and rows[0].output_tok_s > 0 for rows in results.values())
    raw = {1: 50.0}
    text = ratio_table(results) + raw_share_table(results["kolosal"], raw, parallel=2)
    assert "output tok/s" in text and "% of the raw" in text
    if "llama-server" in results:
        assert "ratio kolosal/llama-server" in text
        assert markdown_summary(results, raw, parallel=2).count("\n") == 2
    written = plot_comparison(results, raw, tmp_path / "plots")
    assert all(path.stat().st_size > 0 for path in written)
    saved = tmp_path / "compare.json"
    saved.write_text(json.dumps({"results": {k: [asdict(r) for r in v] for k, v in results.items()},
                                 "raw_tok_s": raw}))
    assert load_results(saved) == (results, raw)


def test_metrics_and_prompts() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([float(x) for x in range(1, 101)], 99) == 99.0
    records = [RequestRecord(ok=True, ttft_s=0.1, latency_s=1.1, completion_tokens=11,
                             inter_token_s=[0.1] * 10), RequestRecord(error="HTTP 503")]
    result = summarize(4, records, wall_s=2.0)
    assert isinstance(result, LevelResult)
    assert (result.errors, result.output_tok_s, result.tpot_p50_ms) == (1, 5.5, 100.0)
    assert result.error_samples == ("HTTP 503",)
    faster = summarize(4, [RequestRecord(ok=True, ttft_s=0.1, latency_s=0.6, completion_tokens=11)], 1.0)
    folded = median_result([result, faster, result])
    assert (folded.output_tok_s, folded.errors, folded.requests) == (5.5, 2, 5)
    assert pick_prompt(3, 0.0) != pick_prompt(4, 0.0)
    assert pick_prompt(3, 1.0) == long_prompt(3) and len(long_prompt(3).split()) > 800
    assert machine_info().cores >= 1
    busy = busy_fraction(0.05)
    assert busy is None or 0.0 <= busy <= 1.0


def test_match_odds_tally() -> None:
    drafted: Counter[int] = Counter()
    right: Counter[int] = Counter()
    prompt = list(range(100, 120))
    tally(prompt, prompt[:10] + [7, 8], drafted, right)  # a copy of the prompt, then off it
    # Positions 1..11: at 1 no 2-gram has occurred yet; at 2..10 the copy matches 2..10
    # tokens, its draft right until 10 (7, not 110); at 11 (109, 7) nothing matches.
    assert sum(drafted.values()) == 9 and sum(right.values()) == 8
    assert [drafted[b] for b in (2, 3, 4, 5, 6, 7)] == [1, 1, 1, 1, 1, 4] and right[7] == 3


def test_draft_replay() -> None:
    # A made-up row_cost table (no clock): 10 plus 2 a row, interpolated between its rows and
    # extended past the last. A copy of the prompt then pays for long drafts.
    fake_table = step_times({"results": [{"rows": r, "all_logits_ms": 10.0 + 2.0 * r} for r in (1, 2, 8)]})
    assert fake_table(5) == pytest.approx(0.020) and fake_table(10) == pytest.approx(0.030)
    prompt = list(range(100, 160))
    copy = replay([(prompt, prompt[:50])], fake_table, draft_max=8)
    assert copy.oracle_speedup > 2.0 and 1.0 < copy.rule_speedup <= copy.oracle_speedup
    assert copy.rule_tokens_per_step > 1.0
    # An output that never repeats anything: no drafts, the same steps either way.
    fresh = replay([(prompt, list(range(500, 540)))], fake_table, draft_max=8)
    assert (fresh.rule_speedup, fresh.oracle_speedup, fresh.oracle_tokens_per_step) == (1.0, 1.0, 1.0)
