"""A real kolosal-server process on loopback, serving the real default model (fixtures in
tests/conftest.py)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ENGINE = "gemma"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model_path: Path, log_path: Path, *extra: str) -> ServerProcess:
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "kolosal", "--port", str(port), "--model", str(model_path),
         "--engine-id", ENGINE, "--n-ctx", "4096", "--parallel", "8", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return ServerProcess(base_url, process, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start in time")


def stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


def wait_idle(base_url: str, engine_id: str = ENGINE, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{base_url}/engines/{engine_id}/status").json()
        if status["stats"]["slots_busy"] == 0 and status["stats"]["queue_depth"] == 0:
            return status
        time.sleep(0.05)
    return status
