"""Several engines at once, by id, under one memory budget. Lives on the app, never as a
module global. The registry owns every engine's lifecycle: each is an EngineEntry (state,
error, memory, holders) with, while it is ready, a loaded AsyncEngine.

Loads, unloads and removals happen one at a time (``_load_lock``), so every budget decision
sees all engines. An engine that is unloaded (idle timeout or eviction) stays listed and
reloads on its next request through ``lease``, which holds it until the request has
submitted its work (its streams hold it after that): a held engine is never unloaded.

Loads and removals run as tasks of their own, shielded from the request that asked for them:
a client that hangs up mid-load neither leaves a half-loaded model behind nor fails the
engine for the next request."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .async_engine import AsyncEngine
from .config import EngineConfig
from .entry import EngineEntry, EngineState
from .errors import EngineReloadError, EngineStoppedError, InsufficientMemoryError
from .memory import MemoryEstimate, estimate_memory, format_size
from .model_check import model_file_error

logger = logging.getLogger(__name__)
IDLE_CHECK_INTERVAL_S = 1.0


class EngineExistsError(Exception):
    """An engine with this id is already loaded or loading."""


class EngineNotFoundError(KeyError):
    """No engine has this id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "engine not found"


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    max_memory: int = 0        # bytes for all engines together; 0 = no budget
    evict_idle: bool = False   # make room by unloading the least recently used idle engines


class EngineRegistry:
    def __init__(self, policy: MemoryPolicy | None = None) -> None:
        self.policy = policy or MemoryPolicy()
        self._engines: dict[str, EngineEntry] = {}
        self._lock = asyncio.Lock()       # the id -> engine map
        self._load_lock = asyncio.Lock()  # loads, unloads and budget decisions
        self._loads: dict[EngineEntry, asyncio.Task[None]] = {}  # one load task per engine

    async def add(self, config: EngineConfig) -> EngineEntry:
        """Load a model as a new engine; returns when it is ready (or raises why not).
        A failed engine stays listed with its error until replaced or removed."""
        async with self._lock:
            existing = self._engines.get(config.engine_id)
            if existing is not None and existing.state != EngineState.FAILED:
                raise EngineExistsError(f"engine '{config.engine_id}' already exists")
            entry = EngineEntry(config)
            self._engines[config.engine_id] = entry
        await self._load(entry)
        return entry

    @contextlib.asynccontextmanager
    async def lease(self, engine_id: str) -> AsyncIterator[AsyncEngine]:
        """The loaded engine, held until the block ends (its streams hold it themselves).
        An unloaded engine is reloaded first (or refused at once when the budget has no
        room), one being loaded is waited for."""
        entry = self.get(engine_id)
        entry.holders.hold()
        try:
            if entry.state != EngineState.READY:
                await self._load(entry)
            if entry.engine is None:  # removed between its load and this request
                raise EngineStoppedError(f"engine '{engine_id}' is {entry.state.value}")
            yield entry.engine
        finally:
            entry.holders.release()

    async def _load(self, engine: EngineEntry) -> None:
        """Wait for the engine's load task, starting it when none runs."""
        task = self._loads.get(engine)
        if task is None:
            task = asyncio.create_task(self._load_now(engine), name=f"load-{engine.engine_id}")
            self._loads[engine] = task
            task.add_done_callback(functools.partial(self._load_finished, engine))
        await asyncio.shield(task)

    def _load_finished(self, engine: EngineEntry, task: asyncio.Task[None]) -> None:
        if self._loads.get(engine) is task:
            del self._loads[engine]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    async def _load_now(self, engine: EngineEntry) -> None:
        # a file that would crash libllama is refused by a child process, before the lock:
        # a slow check never holds up other loads (cached: a reload costs one stat)
        file_error = await model_file_error(engine.config.model_path)
        async with self._load_lock:
            if not self._needs_load(engine):
                return
            try:
                if file_error is not None:
                    raise file_error
                loaded, seconds = await self._load_within_budget(engine)
            except InsufficientMemoryError:
                if not engine.has_loaded:  # a new engine: it never existed
                    self._forget(engine)
                raise  # an unloaded one stays unloaded: a later request may find room
            except Exception as error:
                engine.load_failed(error)
                logger.warning("engine '%s' failed to load: %s", engine.engine_id, engine.error)
                if not engine.has_loaded:  # FAILED: listed with its error
                    raise
                raise EngineReloadError(f"engine '{engine.engine_id}' could not be reloaded: "
                                        f"{engine.error}") from error
            engine.loaded(loaded, seconds)
        logger.info("engine '%s' ready (%s, %.1fs, ~%s)", engine.engine_id, engine.config.model_path,
                    engine.load_seconds, format_size(engine.memory.total if engine.memory else 0))

    def _needs_load(self, engine: EngineEntry) -> bool:
        """False when it is ready already; raises when it was removed or cannot be loaded."""
        if self._engines.get(engine.engine_id) is not engine:  # removed meanwhile
            raise EngineNotFoundError(f"engine '{engine.engine_id}' not found")
        if engine.state == EngineState.READY:
            return False
        if engine.state not in (EngineState.LOADING, EngineState.UNLOADED):
            raise EngineStoppedError(f"engine '{engine.engine_id}' is {engine.state.value}"
                                     + (f": {engine.error}" if engine.error else ""))
        return True

    async def _load_within_budget(self, engine: EngineEntry) -> tuple[AsyncEngine, float]:
        """Estimate, make room, load: the loaded engine and the seconds its load took."""
        if engine.memory is None:
            engine.memory = await asyncio.to_thread(estimate_memory, engine.config)
        await self._make_room(engine, engine.memory)
        engine.begin_load()
        started = time.monotonic()
        loaded = await AsyncEngine.load(engine.config, engine.holders, engine.on_progress)
        return loaded, time.monotonic() - started

    # -- memory budget ----------------------------------------------------------------------
    def memory_in_use(self, excluding: EngineEntry | None = None) -> int:
        return sum(e.memory.total for e in self._engines.values()
                   if e is not excluding and e.memory is not None
                   and e.state in (EngineState.READY, EngineState.LOADING))

    def _evictable(self, excluding: EngineEntry) -> list[EngineEntry]:
        """Loaded, unpinned engines nobody holds, least recently used first."""
        idle = [e for e in self._engines.values()
                if e is not excluding and e.state == EngineState.READY and not e.config.pinned
                and e.idle and e.memory is not None]
        return sorted(idle, key=lambda e: e.holders.last_used)

    async def _make_room(self, engine: EngineEntry, need: MemoryEstimate) -> None:
        """Return when ``need`` fits the budget beside the other engines, evicting idle ones
        if allowed; raise InsufficientMemoryError when it cannot fit."""
        budget = self.policy.max_memory
        if not budget:
            return
        if need.total > budget:
            raise InsufficientMemoryError(
                f"engine '{engine.engine_id}' needs about {format_size(need.total)} (weights "
                f"{format_size(need.weights)}, KV cache {format_size(need.kv_cache)}), more than "
                f"the whole memory budget of {format_size(budget)}; lower n_ctx or raise --max-memory",
                fits_alone=False)
        if self.policy.evict_idle:
            await self._evict_for(engine, need.total, budget)
        if self.memory_in_use(excluding=engine) + need.total > budget:
            raise self._no_room(engine, need.total, budget)

    async def _evict_for(self, engine: EngineEntry, need: int, budget: int) -> None:
        """Unload idle engines, least recently used first, until ``need`` fits; none at all
        when unloading every one of them would still not make enough room."""
        victims = self._evictable(engine)
        reclaimable = sum(v.memory.total for v in victims if v.memory is not None)
        in_use = self.memory_in_use(excluding=engine)
        if in_use + need <= budget or in_use - reclaimable + need > budget:
            return
        for victim in victims:
            if self.memory_in_use(excluding=engine) + need <= budget:
                break
            await self._unload(victim, f"evicted to make room for '{engine.engine_id}'")

    def _no_room(self, engine: EngineEntry, need: int, budget: int) -> InsufficientMemoryError:
        loaded = ", ".join(f"'{e.engine_id}' ({format_size(e.memory.total)})"
                           for e in self._engines.values() if e is not engine and e.memory
                           and e.state in (EngineState.READY, EngineState.LOADING))
        hint = ("unloading the idle, unpinned engines would not free enough" if self.policy.evict_idle
                else "start with --evict-idle to unload idle engines automatically")
        return InsufficientMemoryError(
            f"engine '{engine.engine_id}' needs about {format_size(need)} but only "
            f"{format_size(budget - self.memory_in_use(excluding=engine))} of the "
            f"{format_size(budget)} budget is free (loaded: {loaded}); {hint}")

    # -- unloading ---------------------------------------------------------------------------
    @staticmethod
    async def _stop(entry: EngineEntry, reason: str) -> None:
        """UNLOADING: in-flight requests end with an error event, the thread stops and the
        memory is freed. The entry stays UNLOADING (a removal) unless the caller moves it on."""
        engine = entry.begin_unload()
        if engine is not None:
            await engine.close(reason)

    async def _unload(self, entry: EngineEntry, reason: str) -> None:
        """Free the model and KV but stay listed: the next request reloads it. Call with the
        load lock held."""
        logger.info("unloading engine '%s': %s", entry.engine_id, reason)
        try:
            await self._stop(entry, reason)
        finally:
            entry.unloaded()

    async def unload_idle(self) -> list[str]:
        """Unload every engine idle for longer than its keep_alive_s (pinned ones never)."""
        unloaded = []
        for engine in list(self._engines.values()):
            if self._expired(engine):
                async with self._load_lock:
                    if self._expired(engine):  # it may have been used while we waited
                        await asyncio.shield(self._unload(
                            engine, f"idle for more than {engine.config.keep_alive_s:g}s"))
                        unloaded.append(engine.engine_id)
        return unloaded

    def _expired(self, engine: EngineEntry) -> bool:
        keep_alive = engine.config.keep_alive_s
        return (keep_alive > 0 and not engine.config.pinned and engine.state == EngineState.READY
                and engine.idle and self._engines.get(engine.engine_id) is engine
                and time.monotonic() - engine.holders.last_used > keep_alive)

    async def run_idle_unloader(self) -> None:
        """Background task of the server: check for idle engines every second."""
        while True:
            await asyncio.sleep(IDLE_CHECK_INTERVAL_S)
            try:
                await self.unload_idle()
            except Exception:  # never let one bad unload end the task
                logger.exception("idle unload failed")

    # -- lookup and removal -----------------------------------------------------------------
    def get(self, engine_id: str) -> EngineEntry:
        engine = self._engines.get(engine_id)
        if engine is None:
            raise EngineNotFoundError(f"engine '{engine_id}' not found")
        return engine

    def _forget(self, engine: EngineEntry) -> None:
        if self._engines.get(engine.engine_id) is engine:
            del self._engines[engine.engine_id]

    def list(self) -> list[EngineEntry]:
        return list(self._engines.values())

    async def unload(self, engine_id: str, reason: str = "unloaded on request") -> None:
        """Free a loaded engine's model and KV; it stays listed and reloads on its next
        request. Completes even if the caller goes away."""
        await asyncio.shield(self._unload_now(self.get(engine_id), reason))

    async def _unload_now(self, entry: EngineEntry, reason: str) -> None:
        async with self._load_lock:
            if entry.state == EngineState.READY and self._engines.get(entry.engine_id) is entry:
                await self._unload(entry, reason)

    async def remove(self, engine_id: str) -> None:
        """Stop the engine (its streams end with an error) and free its memory. A load in
        progress finishes first; the removal completes even if the caller goes away."""
        await asyncio.shield(self._remove_now(self.get(engine_id)))

    async def _remove_now(self, engine: EngineEntry) -> None:
        async with self._load_lock:
            if self._engines.get(engine.engine_id) is not engine:
                raise EngineNotFoundError(f"engine '{engine.engine_id}' not found")
            self._forget(engine)
            await self._stop(engine, "the engine was removed")

    async def close_all(self) -> None:
        async with self._load_lock:  # a load in progress finishes, then is stopped too
            engines = list(self._engines.values())
            self._engines.clear()
            await asyncio.gather(*(self._stop(entry, "the server is shutting down") for entry in engines))
