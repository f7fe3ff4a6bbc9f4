"""The soak run (benchmarks/soak.py): a seconds-long smoke run in the default suite so the
script cannot rot, and the minutes-long run with its memory bound under ``-m soak``."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.servers import ServerSettings, kolosal_spec, running_process
from benchmarks.soak import SoakReport, soak

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def soak_once(model_path: Path, minutes: float, clients: int) -> SoakReport:
    import asyncio

    spec = kolosal_spec(ServerSettings(model=model_path, threads=0, n_ctx=4096, parallel=8))
    with running_process(spec) as process:
        return asyncio.run(soak(spec.url, process.pid, spec.model_id, model_path, minutes, clients))


def test_soak_smoke(model_path: Path) -> None:
    report = soak_once(model_path, minutes=0.25, clients=4)
    assert report.requests > 4 and report.reloads >= 1 and len(report.rss_mib) >= 2
    assert not report.problems, report.problems
    assert all(code < 500 for code in report.status_counts)
    assert "RSS start" in report.summary()


@pytest.mark.soak
def test_soak_memory_stays_bounded(model_path: Path) -> None:
    report = soak_once(model_path, minutes=5, clients=16)
    report.check_growth(max_growth_mib=64)
    print(report.summary())
    assert report.cancelled > 0 and report.reloads >= 10
    assert not report.problems, report.problems
