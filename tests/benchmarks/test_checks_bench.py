"""benchmarks/checks.py's two checks on a tiny configuration (no timing assertions): each
starts fresh servers, runs both arms and reports a ratio."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.checks import choices_check, format_ratios, logprobs_check
from benchmarks.servers import ServerSettings

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def test_both_checks_run_and_report(model_path: Path, tmp_path: Path) -> None:
    settings = ServerSettings(model=model_path, threads=2, n_ctx=2048, parallel=4)
    choices = choices_check(settings, requests=1, repeats=1, out=tmp_path, n=2, max_tokens=2)
    assert len(choices.with_feature) == len(choices.without) == 1 and choices.ratio > 0
    logprobs = logprobs_check(settings, levels=[2], repeats=1, rounds=1, out=tmp_path)
    assert [r.level for r in logprobs] == [2] and logprobs[0].ratio > 0
    report = format_ratios([choices, *logprobs])
    assert "TTFT n=2 vs n=1" in report and "logprobs" in report
