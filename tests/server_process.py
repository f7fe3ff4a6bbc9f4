"""A real kolosal-server process on loopback, serving the real default model (fixtures in
tests/conftest.py). Starting, health-checking and stopping are benchmarks/servers.py's, so
the tests and the benchmarks run servers the same way."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import ServerSpec, free_port, start_process, stop_process, wait_healthy

ENGINE = "gemma"
INSTRUCT_ENGINE = "smollm2-135m-instruct-q4_1"  # the bundled models' engine ids (file stems)
BASE_ENGINE = "gemma-3-270m-q4_k_m"
START_TIMEOUT_S = 120.0


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model_path: Path, log_path: Path, *extra: str) -> ServerProcess:
    """``--engine-id gemma --n-ctx 4096 --parallel 8`` unless ``extra`` overrides them."""
    return _start(log_path, "--model", str(model_path), "--engine-id", ENGINE, "--n-ctx", "4096",
                  "--parallel", "8", *extra)


def start_bundled_server(log_path: Path, *extra: str) -> ServerProcess:
    """The server as the quick start runs it: no engine named, so both bundled models
    (INSTRUCT_ENGINE, then the Gemma base model as BASE_ENGINE)."""
    return _start(log_path, "--n-ctx", "4096", "--parallel", "4", *extra)


def _start(log_path: Path, *arguments: str) -> ServerProcess:
    port = free_port()
    spec = ServerSpec("kolosal", (sys.executable, "-m", "kolosal", "--port", str(port), *arguments),
                      ENGINE, port)
    process = start_process(spec, log_path)
    try:
        wait_healthy(spec, process, START_TIMEOUT_S)
    except RuntimeError as error:
        stop_process(process)
        raise RuntimeError(f"{error}: {log_path.read_text(errors='replace')}") from None
    return ServerProcess(spec.url, process, log_path)


def stop_server(server: ServerProcess) -> None:
    stop_process(server.process)


def wait_idle(base_url: str, engine_id: str = ENGINE, timeout: float = 120.0) -> dict[str, Any]:
    """The engine's status once no slot is busy and nothing is queued, or the last one at
    ``timeout`` (generous: it returns as soon as the engine is idle, even on a loaded box)."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{base_url}/engines/{engine_id}/status").json()
        if status["stats"]["slots_busy"] == 0 and status["stats"]["queue_depth"] == 0:
            return status
        time.sleep(0.05)
    return status


def logged_prompt(server: ServerProcess, request_id: str) -> str:
    """The prompt a server started with ``--log-prompts --log-format json`` rendered for the
    request sent with ``X-Request-Id: request_id``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if line.startswith("{") and f'"{request_id}"' in line:
                entry = json.loads(line)
                if entry.get("request_id") == request_id and entry.get("prompt"):
                    return str(entry["prompt"])
        time.sleep(0.1)
    raise AssertionError(f"no prompt logged for {request_id}")
