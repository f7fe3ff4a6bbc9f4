"""benchmarks/structured.py's core on a tiny configuration (no timing assertions): the
example document is valid, the in-process mask profile and the HTTP load run and report."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from benchmarks.metrics import LevelResult
from benchmarks.structured import (
    SCHEMA,
    example_document,
    format_masks,
    load_table,
    matcher_costs,
    run_level,
    step_costs,
)

from ..server_process import ENGINE, ServerProcess


def test_example_document_is_valid() -> None:
    jsonschema.validate(json.loads(example_document()), SCHEMA)


@pytest.mark.model  # loads the default model itself
async def test_mask_costs_and_step_profile(model_path: Path) -> None:
    matcher = matcher_costs(model_path)
    assert matcher.vocab_size > 0 and matcher.tokens > 10 and matcher.mask_us_mean > 0
    free = await step_costs(model_path, concurrency=2, tokens=4, constrained=False)
    constrained = await step_costs(model_path, concurrency=2, tokens=4, constrained=True)
    assert free.generated == constrained.generated == 8
    assert free.fill_masks_s == 0 and constrained.fill_masks_s > 0 and constrained.apply_masks_s > 0
    assert 0 < constrained.mask_share_pct < 100
    assert "of a constrained step" in format_masks(matcher, free, constrained)


async def test_schema_load_against_our_server(server: ServerProcess) -> None:
    results: dict[str, list[LevelResult]] = {}
    for name, constrained in (("kolosal", False), ("kolosal+schema", True)):
        result = await run_level(server.base_url, ENGINE, constrained, concurrency=2, num_requests=2,
                                 max_tokens=4)
        assert result.requests == 2 and result.errors == 0, result.error_samples
        assert result.output_tokens == 8  # cut at max_tokens: the schema needs far more
        results[name] = [result]
    assert "schema/free" in load_table(results)
