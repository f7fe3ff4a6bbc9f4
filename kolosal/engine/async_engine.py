"""The asyncio face of one engine: load, tokenize, generate(), stats, stop."""
from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import EngineConfig
from .errors import ContextLengthExceededError, EngineStoppedError
from .heap import trim_heap
from .loop import EngineLoop, EventSink
from .memory import MemoryEstimate
from .request import ErrorEvent, Event, FinishEvent, Request, SamplingParams
from .runner import ModelRunner

logger = logging.getLogger(__name__)
INLINE_TOKENIZE_CHARS = 2048
T = TypeVar("T")


class EngineState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"      # idle-unloaded or evicted: reloads on its next request


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: str
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    n_parallel: int
    architecture: str
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    description: str
    size_bytes: int
    n_params: int


class WorkerCalls:
    """Counts calls into a runner that run on worker threads. The count drops when the
    worker finishes, not when its awaiting task does (a cancelled ``to_thread`` keeps
    running), so closing the runner can wait for every such call first."""

    def __init__(self) -> None:
        self._count = 0
        self._done = threading.Condition()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        with self._done:
            self._count += 1

        def call() -> T:
            try:
                return function(*args)
            finally:
                with self._done:
                    self._count -= 1
                    self._done.notify_all()
        return await asyncio.to_thread(call)

    def wait_idle(self) -> None:
        with self._done:
            self._done.wait_for(lambda: self._count == 0)


class AsyncEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.engine_id = config.engine_id
        self.config = config
        self.created = int(time.time())
        self.state = EngineState.LOADING
        self.load_progress = 0.0
        self.load_seconds = 0.0
        self.error: str | None = None
        self.info: ModelInfo | None = None
        self._runner: ModelRunner | None = None
        self._loop: EngineLoop | None = None
        self.active = 0                       # requests holding the engine (see reserve())
        self.has_loaded = False               # a failed reload leaves it UNLOADED, not FAILED
        self._worker_calls = WorkerCalls()    # tokenize/detokenize on worker threads
        self.last_used = time.monotonic()     # for idle unload and LRU eviction
        self.memory: MemoryEstimate | None = None  # set by the registry before loading

    @property
    def idle(self) -> bool:
        return self.active == 0

    def reserve(self) -> None:
        """Hold the engine for a request from the moment it is resolved: an engine with a
        holder is never unloaded or evicted. Every reserve() needs one release()."""
        self.active += 1
        self.last_used = time.monotonic()

    def release(self) -> None:
        self.active -= 1
        self.last_used = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model off the event loop and start the engine thread (again, after an
        unload)."""
        started = time.monotonic()
        self.state, self.error, self.load_progress = EngineState.LOADING, None, 0.0
        try:
            self._runner = await asyncio.to_thread(ModelRunner, self.config, self._on_progress)
        except BaseException as error:
            self.state = EngineState.FAILED
            self.error = str(error)
            raise
        try:
            self._start_thread(self._runner)
        except BaseException as error:
            self._runner.close()
            self._runner = None
            self.state, self.error = EngineState.FAILED, str(error)
            raise
        self.load_progress = 1.0
        self.load_seconds = time.monotonic() - started
        self.last_used = time.monotonic()
        self.has_loaded = True
        self.state = EngineState.READY

    def _start_thread(self, runner: ModelRunner) -> None:
        model = runner.model
        self.info = ModelInfo(
            path=str(model.path), n_ctx=runner.context.n_ctx, n_ctx_train=model.n_ctx_train,
            n_vocab=runner.vocab.n_tokens, n_parallel=self.config.resolved_parallel,
            architecture=model.metadata.get("general.architecture", ""),
            chat_template=model.chat_template, bos_token=runner.vocab.token_text(runner.vocab.bos),
            eos_token=runner.vocab.token_text(runner.vocab.eos), add_bos=runner.vocab.add_bos,
            description=model.description, size_bytes=model.size_bytes, n_params=model.n_params)
        self._loop = EngineLoop(runner, self.config.resolved_parallel, runner.context.n_batch,
                                self.config.max_queue, self.engine_id)
        self._loop.start()

    def _on_progress(self, progress: float) -> bool:
        """libllama's load progress (called on the loading thread): shown in the engine
        status and, every 10%, on the console."""
        if int(progress * 10) > int(self.load_progress * 10) or progress >= 1.0 > self.load_progress:
            logger.info("loading engine '%s': %d%%", self.engine_id, round(progress * 100))
        self.load_progress = progress
        return True

    async def stop(self, reason: str = "the engine was removed",
                   final_state: EngineState = EngineState.UNLOADING) -> None:
        """End in-flight requests with an error event, stop the thread, free memory."""
        self.state = EngineState.UNLOADING
        loop, runner = self._loop, self._runner
        self._loop = self._runner = None
        try:
            if loop is not None:
                loop.shutdown(reason)
                await asyncio.to_thread(loop.join)
        finally:
            if runner is not None:
                await asyncio.to_thread(self._close_runner, runner)
            self.state = final_state

    def _close_runner(self, runner: ModelRunner) -> None:
        self._worker_calls.wait_idle()  # a tokenize still running would use freed memory
        runner.close()
        trim_heap()  # otherwise glibc keeps the freed model/KV memory in its arenas

    async def unload(self, reason: str) -> None:
        """Free the model and KV but stay listed: the next request reloads it."""
        logger.info("unloading engine '%s': %s", self.engine_id, reason)
        await self.stop(reason, final_state=EngineState.UNLOADED)
        self.load_progress = 0.0

    # -- requests -------------------------------------------------------------------------------
    def _require_ready(self) -> tuple[ModelRunner, EngineLoop]:
        if self.state != EngineState.READY or self._runner is None or self._loop is None:
            raise EngineStoppedError(f"engine '{self.engine_id}' is {self.state.value}")
        return self._runner, self._loop

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Short texts tokenize inline (microseconds: a thread hop would cost more);
        long ones off the event loop."""
        runner, _ = self._require_ready()
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return runner.vocab.tokenize(text, add_special, parse_special)
        return await self._worker_calls.run(runner.vocab.tokenize, text, add_special, parse_special)

    async def detokenize(self, token_ids: list[int]) -> str:
        runner, _ = self._require_ready()
        data = await self._worker_calls.run(runner.vocab.detokenize, token_ids)
        return data.decode("utf-8", "replace")

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        runner, _ = self._require_ready()
        n_ctx = runner.context.n_ctx
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {n_ctx} tokens. However, your prompt "
                f"has {len(prompt_ids)} tokens, leaving no room for the completion.")
        vocab_size = runner.vocab.n_tokens
        if any(not 0 <= token < vocab_size for token in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab_size})")

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
                       timeout_s: float | None = None) -> AsyncGenerator[Event, None]:
        """Yield TokenEvents, then one FinishEvent or ErrorEvent. Closing or cancelling the
        generator aborts the request in the engine (its slot is freed at the next step).
        ``timeout_s`` bounds queue + prefill + decode (ErrorEvent(DeadlineExceededError))."""
        _, engine_loop = self._require_ready()
        self.check_prompt(prompt_ids, params)
        events: asyncio.Queue[Event] = asyncio.Queue()
        request = Request(request_id=request_id, prompt_ids=list(prompt_ids), params=params,
                          arrival=time.monotonic())
        if timeout_s is not None:
            request.deadline = request.arrival + timeout_s
        engine_loop.submit(request, EventSink(asyncio.get_running_loop(), events))
        finished = False
        self.reserve()
        try:
            while True:
                event = await events.get()
                if isinstance(event, (FinishEvent, ErrorEvent)):
                    finished = True
                yield event
                if finished:
                    return
        finally:
            self.release()
            if not finished:
                engine_loop.abort(request)

    def stats(self) -> dict[str, Any]:
        if self._loop is None:
            return {}
        return self._loop.snapshot().as_dict()
