"""benchmarks/kv_cache_types.py's core on a tiny configuration (no timing assertions)."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.kv_cache_types import markdown, measure_types, parse_types
from benchmarks.servers import ServerSettings

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def test_two_cache_types_on_fresh_servers(model_path: Path, tmp_path: Path) -> None:
    assert parse_types("f16/f16,q8_0") == [("f16", "f16"), ("q8_0", "q8_0")]
    settings = ServerSettings(model=model_path, threads=2, n_ctx=1024, parallel=2)
    pairs = (("f16", "f16"), ("q4_0", "q4_0"))
    results = [measure_types(settings, k, v, [1], 1, 2, tmp_path) for k, v in pairs]
    plain, quantized = results
    assert 0 < quantized.kv_estimate_bytes < plain.kv_estimate_bytes  # 18 bytes per 32 values vs 64
    for result in results:
        assert result.rss_loaded_bytes > 0 and result.rss_after_bytes > 0
        assert result.levels[0].errors == 0 and result.levels[0].output_tok_s > 0
    assert markdown(results).count("\n") == 3
