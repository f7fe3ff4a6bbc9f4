"""Shared fixtures: the real default model and real libllama, loaded once per session.

Every test that needs them is marked ``model`` here, by the fixtures it uses (directly or
through other fixtures) or by living in tests/llama/; a test that reaches the model any
other way carries ``@pytest.mark.model`` itself. ``pytest -m "not model"`` is the pure lane:
no libllama, no model file, seconds."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

from kolosal import default_model as bundled
from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry

from . import lanes
from .server_process import ServerProcess, start_bundled_server, start_server, stop_server

MODEL_FIXTURES = frozenset({"model_path", "instruct_model_path", "llama_model", "registry", "engine",
                            "server", "keyed_server", "bundled_server"})
LIBLLAMA_DIR = Path(__file__).parent / "llama"  # every test there calls into libllama


def needs_model(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & MODEL_FIXTURES) or item.path.is_relative_to(LIBLLAMA_DIR)


MODEL_MODULE = "pytestmark = pytest.mark.model"  # a module whose every test needs the model


def in_pure_lane(config: pytest.Config) -> bool:
    """A run whose marker expression deselects the model tests (``-m "not model"``, also
    with more terms: ``-m "not model and not soak"``)."""
    markexpr = str(config.getoption("markexpr", "")).strip()
    if not markexpr:
        return False
    def only_model(name: str, /, **_: str | int | bool | None) -> bool:
        return name == "model"
    return not Expression.compile(markexpr).evaluate(only_model)


def pytest_configure(config: pytest.Config) -> None:
    lanes.pure_lane = in_pure_lane(config)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The pure lane (``-m "not model"``) does not even import a module that declares all its
    tests model tests: the clients they drive (openai, LangChain, LiteLLM, schemathesis,
    playwright) are most of the lane's collection time. Deselection gives the same set."""
    if not in_pure_lane(config) or collection_path.suffix != ".py":
        return None
    if collection_path.name.startswith("test_") and MODEL_MODULE in collection_path.read_text():
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_model(item):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled.default_model_path()


@pytest.fixture(scope="session")
def instruct_model_path() -> Path:
    """SmolLM2 135M Instruct: a real ChatML template in its GGUF (kolosal.default_model)."""
    return bundled.instruct_model_path()


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
async def engine(registry: EngineRegistry, model_path: Path) -> AsyncIterator[AsyncEngine]:
    """A general-purpose engine shared by the engine tests, leased for the whole session."""
    await registry.add(EngineConfig("shared", str(model_path), n_ctx=4096, n_parallel=8))
    async with registry.lease("shared") as loaded:
        yield loaded


@pytest.fixture(scope="session")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def bundled_server(instruct_model_path: Path, model_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The quick start's server: both bundled models, prompts logged (JSON lines)."""
    running = start_bundled_server(tmp_path_factory.mktemp("bundled") / "server.log",
                                   "--log-prompts", "--log-format", "json")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def keyed_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(model_path, tmp_path_factory.mktemp("keyed") / "server.log",
                           "--api-key", "sk-test-1", "--api-key", "sk-test-2", "--parallel", "2")
    yield running
    stop_server(running)
