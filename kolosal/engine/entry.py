"""The registry's record of one engine: its config, lifecycle state, error, memory estimate,
holders and, while it is loaded, the loaded engine. Every state change is a method here and
the allowed changes are one table, so no other module writes ``state``."""
from __future__ import annotations

import enum
import logging
import time
from typing import TYPE_CHECKING, Any

from .config import EngineConfig
from .holders import Holders
from .memory import MemoryEstimate

if TYPE_CHECKING:
    from .async_engine import AsyncEngine, ModelInfo

logger = logging.getLogger(__name__)


class EngineState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"      # idle-unloaded or evicted: reloads on its next request


S = EngineState
TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    S.LOADING: frozenset({S.READY,
                          S.FAILED,       # a new engine that did not load
                          S.UNLOADED,     # a reload that failed: the next request tries again
                          S.UNLOADING}),  # removed or shut down before its load began
    S.READY: frozenset({S.UNLOADING}),
    S.FAILED: frozenset({S.UNLOADING}),   # removal (a replacement is a new entry)
    S.UNLOADING: frozenset({S.UNLOADED}),
    S.UNLOADED: frozenset({S.LOADING, S.UNLOADING}),
}


class IllegalTransitionError(RuntimeError):
    """A bug: some code moved an engine along an edge the table does not have."""


class EngineEntry:
    """One engine as the registry sees it. ``engine`` is set exactly while READY."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.created = int(time.time())
        self.state = EngineState.LOADING
        self.error: str | None = None
        self.memory: MemoryEstimate | None = None  # estimated before the first load
        self.holders = Holders()
        self.load_progress = 0.0
        self.load_seconds = 0.0
        self.has_loaded = False     # a failed reload leaves it UNLOADED, not FAILED
        self.engine: AsyncEngine | None = None
        self.info: ModelInfo | None = None  # facts of the last load (kept while unloaded)

    @property
    def engine_id(self) -> str:
        return self.config.engine_id

    @property
    def idle(self) -> bool:
        return self.holders.idle

    def stats(self) -> dict[str, Any]:
        return self.engine.stats() if self.engine is not None else {}

    def _move(self, target: EngineState) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransitionError(f"engine '{self.engine_id}': {self.state.value} -> {target.value}")
        self.state = target

    # -- transitions ------------------------------------------------------------------------
    def begin_load(self) -> None:
        if self.state != EngineState.LOADING:
            self._move(EngineState.LOADING)
        self.error, self.load_progress = None, 0.0

    def on_progress(self, progress: float) -> bool:
        """libllama's load progress (called on the loading thread): shown in the engine
        status and, every 10%, on the console."""
        if int(progress * 10) > int(self.load_progress * 10) or progress >= 1.0 > self.load_progress:
            logger.info("loading engine '%s': %d%%", self.engine_id, round(progress * 100))
        self.load_progress = progress
        return True

    def loaded(self, engine: AsyncEngine, seconds: float) -> None:
        self._move(EngineState.READY)
        self.engine, self.info = engine, engine.info
        self.load_progress, self.load_seconds = 1.0, seconds
        self.has_loaded = True
        self.holders.last_used = time.monotonic()

    def load_failed(self, error: BaseException) -> None:
        """A new engine is FAILED (listed with its error); one that served before is
        UNLOADED and stays reloadable (the cause may pass: a file being replaced, memory
        taken by another process)."""
        self.error = str(error)
        target = EngineState.UNLOADED if self.has_loaded else EngineState.FAILED
        if self.state != target:  # an unloaded engine whose estimate failed stays UNLOADED
            self._move(target)

    def begin_unload(self) -> AsyncEngine | None:
        """UNLOADING; returns the loaded engine (if any) for the caller to close."""
        self._move(EngineState.UNLOADING)
        engine, self.engine = self.engine, None
        return engine

    def unloaded(self) -> None:
        self._move(EngineState.UNLOADED)
        self.load_progress = 0.0
