"""benchmarks/embeddings.py's core on a tiny configuration (no timing assertions): it starts
our server as an embedding engine (and llama-server --embeddings when it is built), runs one
level and reports."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.embeddings import (
    EmbedSettings,
    agreement,
    embedding_specs,
    format_table,
    input_text,
    measure_level,
    median_level,
)
from benchmarks.servers import find_llama_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def test_embeddings_level_on_fresh_servers(model_path: Path, tmp_path: Path) -> None:
    settings = EmbedSettings(model=model_path, threads=2, n_ctx=512, parallel=4, n_batch=128)
    peers = ("llama-server",) if find_llama_server() else ()
    specs = embedding_specs(settings, peers)
    assert "--embedding" in specs[0].command
    results = {spec.name: [median_level([measure_level(spec, 2, 1, 2, 4, tmp_path)])] for spec in specs}
    for rows in results.values():
        assert rows[0].errors == 0, rows[0].error_samples
        assert rows[0].inputs == 2 * rows[0].requests and rows[0].inputs_per_s > 0
    table = format_table(results)
    assert "kolosal in/s" in table
    if len(specs) > 1:
        cosine = agreement(specs, tmp_path, words=4)
        assert cosine is not None and cosine > 0.99  # same model, same pooling
    assert input_text(1, 4) != input_text(2, 4) and input_text(3, 4) == input_text(3, 4)
