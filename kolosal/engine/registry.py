"""Several engines at once, by id. Lives on the app, never as a module global."""
from __future__ import annotations

import asyncio
import logging

from .async_engine import AsyncEngine, EngineState
from .config import EngineConfig

logger = logging.getLogger(__name__)


class EngineExistsError(Exception):
    """An engine with this id is already loaded or loading."""


class EngineNotFoundError(KeyError):
    """No engine has this id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "engine not found"


class EngineRegistry:
    def __init__(self) -> None:
        self._engines: dict[str, AsyncEngine] = {}
        self._lock = asyncio.Lock()

    async def add(self, config: EngineConfig) -> AsyncEngine:
        """Load a model as a new engine; returns when it is ready (or raises why not).
        A failed engine stays listed with its error until replaced or removed."""
        async with self._lock:
            existing = self._engines.get(config.engine_id)
            if existing is not None and existing.state != EngineState.FAILED:
                raise EngineExistsError(f"engine '{config.engine_id}' already exists")
            engine = AsyncEngine(config)
            self._engines[config.engine_id] = engine
        try:
            await engine.start()
        except BaseException:
            logger.warning("engine '%s' failed to load: %s", config.engine_id, engine.error)
            raise
        logger.info("engine '%s' ready (%s, %.1fs)", config.engine_id, config.model_path,
                    engine.load_seconds)
        return engine

    def get(self, engine_id: str) -> AsyncEngine:
        engine = self._engines.get(engine_id)
        if engine is None:
            raise EngineNotFoundError(f"engine '{engine_id}' not found")
        return engine

    def list(self) -> list[AsyncEngine]:
        return list(self._engines.values())

    async def remove(self, engine_id: str) -> None:
        async with self._lock:
            engine = self._engines.pop(engine_id, None)
        if engine is None:
            raise EngineNotFoundError(f"engine '{engine_id}' not found")
        await engine.stop()

    async def close_all(self) -> None:
        async with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        await asyncio.gather(*(engine.stop("the server is shutting down") for engine in engines))
