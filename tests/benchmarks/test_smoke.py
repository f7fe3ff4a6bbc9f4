"""Each benchmark script's core runs on a tiny configuration, so the scripts cannot rot.
No timing assertions: only that they run and return well-formed results."""
from __future__ import annotations

from benchmarks.compare import ratio_table
from benchmarks.loadgen import LoadConfig, format_table, run_level
from benchmarks.raw_decode import measure
from benchmarks.step_profile import profile

from ..server_process import ENGINE, ServerProcess


def test_raw_decode_probe(llama_model: object) -> None:
    result = measure(llama_model, batch_size=2, tokens=4)  # type: ignore[arg-type]
    assert result.batch_size == 2 and result.tokens == 8 and result.tok_s > 0


async def test_step_profile() -> None:
    result = await profile(concurrency=2, tokens=4)
    assert result.steps >= 4
    assert set(result.seconds) >= {"schedule_s", "decode_s", "sample_s", "update_s", "deliver_s"}
    assert 0 <= result.python_overhead_pct <= 100


async def test_loadgen_against_the_server(server: ServerProcess) -> None:
    for endpoint in ("completions", "chat"):
        config = LoadConfig(url=server.base_url, model=ENGINE, endpoint=endpoint, max_tokens=4,
                            long_fraction=0.5)
        result = await run_level(config, concurrency=2, num_requests=2, progress=False)
        assert result.requests == 2 and result.errors == 0
        assert result.output_tok_s > 0 and result.ttft_p50_ms > 0
        assert "C" in format_table([result])
        assert "ratio" in ratio_table({"kolosal": [result], "peer": [result]}, {2: 1.0})

