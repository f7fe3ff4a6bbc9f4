"""The event loop never waits on the model's vocabulary (issue 27): the first constrained
request on a fresh engine builds the grammar tokenizer of Gemma's 262k tokens (about a
second of Rust work). It used to hold the GIL throughout, so ``/health/live`` answered in
1.7-5.3 s and a Kubernetes liveness probe (default timeout 1 s) restarted a healthy replica.
Here a probe runs every 100 ms from before that request until after its answer: every one
answers 200 within the probe's timeout. (That the build itself releases the GIL is proven
without a clock in tests/llama/test_guidance.py; this is the same fact seen by a client.)"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from ..server_process import ENGINE, start_server, stop_server

pytestmark = pytest.mark.model

PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 1.0  # Kubernetes' default timeoutSeconds for a liveness probe


def test_liveness_probes_answer_while_the_first_grammar_request_builds_the_tokenizer(
        model_path: Path, tmp_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log", "--parallel", "2", "--n-ctx", "1024")
    latencies: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    answer = client.get(f"{server.base_url}/health/live")
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text}")
                except httpx.TimeoutException:
                    failures.append(f"no answer within {PROBE_TIMEOUT_S} s")
                latencies.append(time.perf_counter() - started)
                done.wait(PROBE_EVERY_S)

    prober = threading.Thread(target=probe, daemon=True)
    try:
        prober.start()
        schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                  "required": ["city"]}
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120, json={
            "model": ENGINE, "messages": [{"role": "user", "content": "Name a city."}],
            "max_tokens": 24, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"].startswith("{")
        done.wait(3 * PROBE_EVERY_S)  # a few probes after the answer too
    finally:
        done.set()
        prober.join(timeout=10)
        stop_server(server)
    assert len(latencies) >= 3, latencies
    assert not failures, f"{failures} (slowest probe {max(latencies):.3f} s of {len(latencies)})"
