"""The servers compare.py runs side by side: how to start each one on loopback with the same
model, threads, context and slots, and a context manager that starts, health-checks and
stops one. llama-server is a benchmark peer built from the same pinned llama.cpp source
(``python build_llama.py --with-server``), never a runtime dependency."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from kolosal.llama.loader import cache_dir

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every server gets, so the comparison is like for like."""

    model: Path
    threads: int
    n_ctx: int          # total KV cells: ours is one shared pool, llama-server splits it per slot
    parallel: int
    peer_kv_unified: bool = False  # give llama-server one shared pool too (-kvu)
    peer_chat_template: str | None = None  # llama-server's built-in chat template (e.g. "gemma")


def add_server_options(parser: argparse.ArgumentParser, n_ctx: int, n_ctx_help: str | None = None) -> None:
    """--model, --threads, --n-ctx, --parallel: what every server of a run gets."""
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=n_ctx, help=n_ctx_help)
    parser.add_argument("--parallel", type=int, default=32)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    from kolosal.default_model import default_model_path

    return ServerSettings(model=args.model or default_model_path(), threads=args.threads,
                          n_ctx=args.n_ctx, parallel=args.parallel)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    command: tuple[str, ...]
    model_id: str
    port: int
    health_path: str = "/health"
    env: tuple[tuple[str, str], ...] = ()  # added to the environment (e.g. KOLOSAL_LIBLLAMA)
    cwd: Path | None = None  # where it starts (``python -m`` imports from there first)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_llama_server() -> Path | None:
    """llama-server from the build cache of the libllama we load (see build_llama.py)."""
    latest = cache_dir() / "builds" / "latest.json"
    if not latest.is_file():
        return None
    lib_dir = Path(json.loads(latest.read_text())["lib_dir"])
    binary = lib_dir.parent / "server" / "bin" / "llama-server"
    return binary if binary.is_file() else None


def kolosal_spec(settings: ServerSettings, name: str = "kolosal", extra: tuple[str, ...] = (),
                 libllama: Path | None = None, checkout: Path | None = None) -> ServerSpec:
    """Our server; ``extra`` flags (e.g. ``--spec-draft-max 0``) make a variant of it,
    ``libllama`` (a build's lib directory) runs it on another build, and ``checkout`` (another
    copy of this repository, e.g. a git worktree of an older commit) runs that copy's code."""
    script = Path(sys.executable).parent / "kolosal-server"
    launcher = (str(script),) if script.is_file() and checkout is None else (sys.executable, "-m", "kolosal")
    env: tuple[tuple[str, str], ...] = (("KOLOSAL_LIBLLAMA", str(libllama)),) if libllama else ()
    if checkout is not None:
        env += (("PYTHONPATH", str(checkout)),)
    port = free_port()
    # ``python -m kolosal`` imports the package from its working directory before PYTHONPATH:
    # a checkout's server starts there, or it would run this copy's code.
    return ServerSpec(name, (*launcher, "--model", str(settings.model), "--host", HOST,
                             "--port", str(port), "--threads", str(settings.threads),
                             "--n-ctx", str(settings.n_ctx), "--parallel", str(settings.parallel),
                             "--engine-id", "bench", "--log-level", "warning", *extra), "bench", port,
                      env=env, cwd=checkout)


def llama_server_spec(settings: ServerSettings, binary: Path, spec_type: str | None = None) -> ServerSpec:
    """llama-server; with ``spec_type`` (an n-gram type of its ``--spec-type``, e.g.
    ``ngram-mod``) its speculative decoding drafts from the context, named
    ``llama-server+<type>``."""
    port = free_port()
    command: tuple[str, ...] = (str(binary), "-m", str(settings.model), "--host", HOST, "--port", str(port),
               "-t", str(settings.threads), "-c", str(settings.n_ctx), "-np", str(settings.parallel))
    if settings.peer_kv_unified:
        command += ("--kv-unified",)
    if settings.peer_chat_template:  # a built-in template's name: with jinja on it would be the template text
        command += ("--no-jinja", "--chat-template", settings.peer_chat_template)
    if spec_type:
        command += ("--spec-type", spec_type)
    return ServerSpec(f"llama-server+{spec_type}" if spec_type else "llama-server", command, "bench", port)


def llama_cpp_python_spec(settings: ServerSettings) -> ServerSpec | None:
    """llama-cpp-python's server when it is installed. It serves one request at a time, and by
    default a new request interrupts the one streaming (its client sees a cut-off stream):
    ``--interrupt_requests False`` makes it queue them instead, the fair setting for a load test."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    port = free_port()
    return ServerSpec("llama-cpp-python", (sys.executable, "-m", "llama_cpp.server", "--model",
                                           str(settings.model), "--host", HOST, "--port", str(port),
                                           "--n_threads", str(settings.threads),
                                           "--n_ctx", str(settings.n_ctx),
                                           "--interrupt_requests", "False"),
                      "bench", port, health_path="/v1/models")


def server_specs(settings: ServerSettings, peers: tuple[str, ...] = ("llama-server",),
                 llama_server: Path | None = None, ours: dict[str, tuple[str, ...]] | None = None,
                 peer_spec_types: tuple[str, ...] = (),
                 libllama: dict[str, Path] | None = None,
                 checkouts: dict[str, Path] | None = None) -> list[ServerSpec]:
    """Ours first (``ours``: name -> extra flags, default one plain "kolosal"; ``libllama``:
    name -> the build it runs on; ``checkouts``: name -> the copy of the code it runs), then
    each peer that is available (a missing one is reported, not fatal); every entry of
    ``peer_spec_types`` adds llama-server with that speculative type."""
    builds, copies = libllama or {}, checkouts or {}
    specs = [kolosal_spec(settings, name, extra, builds.get(name), copies.get(name))
             for name, extra in (ours or {"kolosal": ()}).items()]
    if "llama-server" in peers or peer_spec_types:
        binary = llama_server or find_llama_server()
        if binary is not None and binary.is_file():
            if "llama-server" in peers:
                specs.append(llama_server_spec(settings, binary))
            specs += [llama_server_spec(settings, binary, kind) for kind in peer_spec_types]
        else:
            print("llama-server not built: run `python build_llama.py --with-server`", file=sys.stderr)
    if "llama-cpp-python" in peers:
        spec = llama_cpp_python_spec(settings)
        if spec is not None:
            specs.append(spec)
        else:
            print("llama-cpp-python is not installed: skipped", file=sys.stderr)
    return specs


def wait_healthy(spec: ServerSpec, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with code {process.returncode}")
        try:
            if httpx.get(spec.url + spec.health_path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{spec.name} did not become healthy in {timeout_s:.0f}s")


def start_process(spec: ServerSpec, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the server with its output (stdout and stderr) appended to ``log_path``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(spec.env)}
    if log_path is None:
        return subprocess.Popen(spec.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                env=env, cwd=spec.cwd)
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(spec.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=spec.cwd)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it has not exited in ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_process(spec: ServerSpec, log_path: Path | None = None,
                    timeout_s: float = 180.0) -> Iterator[subprocess.Popen[bytes]]:
    """Start the server, wait for its health endpoint, yield the process, stop it."""
    process = start_process(spec, log_path)
    try:
        wait_healthy(spec, process, timeout_s)
        yield process
    finally:
        stop_process(process)


@contextmanager
def running(spec: ServerSpec, log_path: Path | None = None, timeout_s: float = 180.0) -> Iterator[str]:
    """Like running_process, yielding the server's base URL."""
    with running_process(spec, log_path, timeout_s):
        yield spec.url
