"""A libllama that cannot decode on this CPU is refused before anything serves (issue 23).

On AMX Xeons ggml's AMX kernels died with SIGILL on the server's first request, and a native
build copied to an older CPU dies the same way. The isolated model check now decodes a few
tokens in its child; a child killed by SIGILL there fails the engine with an error naming
the signal, the CPU and the remedy, while the server (and any other engine) carries on.

The dying library is real: ``native/sigill_on_decode.c``, preloaded into the processes,
replaces ``llama_decode`` with one that raises SIGILL inside the isolated check of a file
whose name holds ``dies-on-decode`` (and forwards to libllama everywhere else)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kolosal.engine import EngineConfig, EngineRegistry
from kolosal.engine.model_check import LibraryCannotRunError, check_model_file

from ..engine.helpers import greedy, loaded, run
from ..server_process import ENGINE, start_server, stop_server

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

SHIM_SOURCE = Path(__file__).parent / "native" / "sigill_on_decode.c"
REMEDY = "python build_llama.py --portable"


@pytest.fixture(scope="module")
def dying_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kolosal.llama.loader import find_include_dir, find_library_dir

    include = find_include_dir(find_library_dir())
    out = tmp_path_factory.mktemp("shim") / "sigill_on_decode.so"
    subprocess.run([os.environ.get("CC") or "cc", "-shared", "-fPIC", "-O1", f"-I{include}",
                    str(SHIM_SOURCE), "-o", str(out), "-ldl"], check=True)
    return out


@pytest.fixture(scope="module")
def dying_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model under a name that makes the preloaded library die decoding it (a hard
    link where possible: the server resolves symlinks)."""
    path = tmp_path_factory.mktemp("dying") / "dies-on-decode.gguf"
    try:
        os.link(model_path, path)
    except OSError:
        shutil.copyfile(model_path, path)
    return path


@pytest.fixture
def preloaded(dying_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process started from here on (check children, servers) gets the dying library."""
    monkeypatch.setenv("LD_PRELOAD", str(dying_library))


def assert_names_signal_cpu_and_remedy(message: str) -> None:
    assert "SIGILL" in message and "illegal instruction" in message, message
    assert "this CPU: " in message and REMEDY in message, message


async def test_the_check_refuses_a_library_that_dies_decoding(preloaded: None, dying_model: Path,
                                                              model_path: Path) -> None:
    with pytest.raises(LibraryCannotRunError) as refused:
        await check_model_file(str(dying_model))
    assert_names_signal_cpu_and_remedy(str(refused.value))
    with pytest.raises(LibraryCannotRunError):  # remembered: the same verdict, no second child
        await check_model_file(str(dying_model))
    await check_model_file(str(model_path))  # the same library decodes another file: it passes


async def test_the_engine_fails_and_another_engine_still_loads(preloaded: None, dying_model: Path,
                                                               model_path: Path) -> None:
    registry = EngineRegistry()
    try:
        with pytest.raises(LibraryCannotRunError):
            await registry.add(EngineConfig("dying", str(dying_model), n_ctx=256, n_parallel=1))
        [failed] = [e for e in registry.list() if e.engine_id == "dying"]
        assert "SIGILL" in (failed.error or "")
        async with loaded(registry, EngineConfig("healthy", str(model_path), n_ctx=256,
                                                 n_parallel=1)) as healthy:
            result = await run(healthy, [2, 651, 6037], greedy(4, ignore_eos=True))
            assert result.error is None and result.finish is not None
    finally:
        await registry.close_all()


def test_the_server_answers_500_and_keeps_serving(preloaded: None, dying_model: Path, model_path: Path,
                                                  tmp_path: Path) -> None:
    server = start_server(model_path, tmp_path / "server.log")
    try:
        refused = httpx.post(f"{server.base_url}/v1/engines", timeout=180,
                             json={"engine_id": "dying", "model_path": str(dying_model)})
        assert refused.status_code == 500, refused.text
        error = refused.json()["error"]
        assert error["code"] == "library_cannot_run" and error["type"] == "server_error"
        assert_names_signal_cpu_and_remedy(error["message"])
        answer = httpx.post(f"{server.base_url}/v1/completions", timeout=120,
                            json={"model": ENGINE, "prompt": "Hello", "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        assert server.process.poll() is None
    finally:
        stop_server(server)


def test_the_cli_exits_non_zero_with_the_message(preloaded: None, dying_model: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "kolosal", "--port", "0", "--model", str(dying_model)],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.returncode != -signal.SIGILL  # the server process itself never decoded
    assert_names_signal_cpu_and_remedy(done.stderr)
