"""Shared fixtures: the real default model and real libllama, loaded once per session."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kolosal.default_model import default_model_path
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry

from .server_process import ServerProcess, start_server, stop_server


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def llama_model(model_path: Path) -> Iterator[object]:
    from kolosal.llama import Model, ModelParams

    with Model(model_path, ModelParams(n_gpu_layers=0)) as model:
        yield model


@pytest.fixture(scope="session")
async def registry() -> AsyncIterator[EngineRegistry]:
    engines = EngineRegistry()
    yield engines
    await engines.close_all()


@pytest.fixture(scope="session")
async def engine(registry: EngineRegistry, model_path: Path) -> AsyncEngine:
    """A general-purpose engine shared by the engine tests."""
    return await registry.add(EngineConfig("shared", str(model_path), n_ctx=4096, n_parallel=8))


@pytest.fixture(scope="session")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def keyed_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("keyed") / "server.log",
                           "--api-key", "sk-test-1", "--api-key", "sk-test-2", "--parallel", "2")
    yield running
    stop_server(running)
