"""The asyncio face of one loaded engine: load, tokenize, generate() or embed(), stats,
close. ``AsyncEngine.load`` gives a ``GenerationEngine`` (the scheduler thread) or an
``EmbeddingEngine`` (the embedding batcher), decided once by the runner the config makes;
each refuses the other's requests with a 400. Its lifecycle (state, error, holders,
reloads) is the registry's EngineEntry."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..llama import AdapterLoadError, BatchInvariantUnavailableError, ModelLoadError
from .config import EngineConfig
from .constraint import Constraint
from .embedding import (
    EmbeddingLoop,
    EmbeddingOnlyError,
    EmbeddingRunner,
    EmbeddingSpec,
    NotAnEmbeddingEngineError,
    make_runner,
)
from .engine_thread import EngineThread
from .errors import ContextLengthExceededError, EngineStoppedError, InvalidRequestError, ModelLoadFailedError
from .heap import trim_heap
from .holders import Holders
from .interrupts import TenantsInFlight
from .request import (
    ANONYMOUS,
    ErrorEvent,
    Event,
    EventSink,
    FinishEvent,
    Request,
    SamplingParams,
    Tenancy,
    new_group,
)
from .runner import ModelRunner
from .sampling_defaults import NO_DEFAULTS, SamplingDefaults

logger = logging.getLogger(__name__)
INLINE_TOKENIZE_CHARS = 2048
T = TypeVar("T")


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
    kind: str = "generation"      # or "embedding": which endpoints the engine serves
    pooling: str | None = None    # an embedding engine's pooling
    sampling_defaults: SamplingDefaults = NO_DEFAULTS  # the GGUF's general.sampling.* keys


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
    """One loaded model: its runner (model, context, vocab) and its thread, from ``load()``
    until ``close()``. Nothing here is ever missing; a closed engine refuses work. The
    requests of the other kind of engine are refused here (400)."""

    embedding: EmbeddingSpec | None = None  # what an embedding engine serves

    def __init__(self, config: EngineConfig, runner: ModelRunner | EmbeddingRunner,
                 thread: EngineThread | EmbeddingLoop, holders: Holders, kind: str,
                 pooling: str | None = None) -> None:
        self.engine_id = config.engine_id
        self.config = config
        self.holders = holders                # the registry entry's: streams hold it too
        self._runner = runner
        self._thread = thread
        self._worker_calls = WorkerCalls()    # tokenize calls on worker threads
        self._closed = False
        model = runner.model
        self.info = ModelInfo(
            path=str(model.path), n_ctx=runner.context.n_ctx, n_ctx_train=model.n_ctx_train,
            n_vocab=runner.vocab.n_tokens, n_parallel=config.resolved_parallel,
            architecture=model.metadata.get("general.architecture", ""),
            chat_template=model.chat_template, bos_token=runner.vocab.token_text(runner.vocab.bos),
            eos_token=runner.vocab.token_text(runner.vocab.eos), add_bos=runner.vocab.add_bos,
            description=model.description, size_bytes=model.size_bytes, n_params=model.n_params,
            kind=kind, pooling=pooling, sampling_defaults=SamplingDefaults.from_gguf(model.metadata))
        thread.start()

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """What a request that omits a sampling field gets: the engine's own defaults over
        the GGUF's (a field neither sets: the request body's default)."""
        return self.info.sampling_defaults.overridden_by(self.config.sampling_defaults)

    @staticmethod
    async def load(config: EngineConfig, holders: Holders,
                   on_progress: Callable[[float], bool]) -> AsyncEngine:
        """Load the model off the event loop and start the engine thread. A failure after
        the model loaded frees it again."""
        try:
            runner = await asyncio.to_thread(make_runner, config, on_progress)
        except AdapterLoadError as error:  # the model loaded; an adapter did not fit it
            raise InvalidRequestError(str(error), param="lora") from error
        except ModelLoadError as error:
            raise ModelLoadFailedError(str(error)) from error
        except BatchInvariantUnavailableError as error:  # a setting this process cannot apply
            raise InvalidRequestError(str(error), param="deterministic") from error
        try:
            if isinstance(runner, EmbeddingRunner):
                return EmbeddingEngine(config, runner, holders)
            return GenerationEngine(config, runner, holders)
        except BaseException:
            runner.close()
            raise

    async def close(self, reason: str) -> None:
        """End in-flight requests with an error event, stop the thread, free memory."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.shutdown(reason)
            await asyncio.to_thread(self._thread.join)
        finally:
            await asyncio.to_thread(self._close_runner)

    def _close_runner(self) -> None:
        self._worker_calls.wait_idle()  # a tokenize still running would use freed memory
        self._runner.close()
        trim_heap()  # otherwise glibc keeps the freed model/KV memory in its arenas

    # -- requests -------------------------------------------------------------------------------
    def _open_runner(self) -> ModelRunner | EmbeddingRunner:
        if self._closed:
            raise EngineStoppedError(f"engine '{self.engine_id}' was stopped")
        return self._runner

    async def embed(self, inputs: list[list[int]], tenancy: Tenancy = ANONYMOUS) -> np.ndarray:
        """One unit vector per input; an embedding engine's (400 here)."""
        raise NotAnEmbeddingEngineError(self.engine_id)

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes with control tokens rendered (llama-server's /tokenize
        pieces and /detokenize); long lists off the event loop."""
        vocab = self._open_runner().vocab
        n_vocab = self.info.n_vocab
        if any(not 0 <= token < n_vocab for token in tokens):
            raise InvalidRequestError(f"token ids must be in [0, {n_vocab})", param="tokens")

        def pieces() -> list[bytes]:
            return [vocab.token_to_piece(token, special=True) for token in tokens]
        if len(tokens) <= INLINE_TOKENIZE_CHARS:
            return pieces()
        return await self._worker_calls.run(pieces)

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Short texts tokenize inline (microseconds: a thread hop would cost more);
        long ones off the event loop."""
        runner = self._open_runner()
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return runner.vocab.tokenize(text, add_special, parse_special)
        return await self._worker_calls.run(runner.vocab.tokenize, text, add_special, parse_special)

    # -- a generation engine's requests (400 here) -------------------------------------------
    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        raise EmbeddingOnlyError(self.engine_id)

    async def compile_grammar(self, grammar: str) -> Constraint:
        raise EmbeddingOnlyError(self.engine_id)

    def special_tokens(self, texts: Iterable[str]) -> dict[str, int]:
        """Which of ``texts`` are one special token of the vocabulary: none here (an
        embedding engine's generation requests are refused at submission)."""
        return {}

    def lora_adapters(self) -> list[dict[str, Any]]:
        raise EmbeddingOnlyError(self.engine_id)

    def set_lora_scales(self, scales: list[tuple[int, float]]) -> None:
        raise EmbeddingOnlyError(self.engine_id)

    def token_piece(self, token: int) -> bytes:
        raise EmbeddingOnlyError(self.engine_id)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
                       timeout_s: float | None = None, n: int = 1, tenancy: Tenancy = ANONYMOUS,
                       group: str | None = None) -> AsyncGenerator[tuple[int, Event], None]:
        raise EmbeddingOnlyError(self.engine_id)
        yield  # an async generator, like the real one

    def stats(self) -> dict[str, Any]:
        return self._thread.snapshot().as_dict()


class GenerationEngine(AsyncEngine):
    """A generation model behind the continuous-batching scheduler thread, with its LoRA
    adapters: each request runs under its own adapter set, resolved when it is submitted
    (lora.py); the steps of different sets take turns (adapters.py)."""

    def __init__(self, config: EngineConfig, runner: ModelRunner, holders: Holders) -> None:
        self._generation_runner = runner
        self._lora = runner.lora
        self._engine_thread = EngineThread(runner, config.resolved_parallel, runner.context.n_batch,
                                           config.max_queue, config.engine_id)
        self._in_flight = TenantsInFlight()
        super().__init__(config, runner, self._engine_thread, holders, "generation")

    def _open_generation(self) -> ModelRunner:
        self._open_runner()
        return self._generation_runner

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        runner = self._open_generation()
        n_ctx = runner.context.n_ctx
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if len(prompt_ids) >= n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {n_ctx} tokens. However, your prompt "
                f"has {len(prompt_ids)} tokens, leaving no room for the completion.")
        vocab_size = runner.vocab.n_tokens
        if any(not 0 <= token < vocab_size for token in prompt_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab_size})", param="prompt")
        self._lora.resolve(params.lora)  # InvalidRequestError (param "lora") for a bad entry

    def lora_adapters(self) -> list[dict[str, Any]]:
        """The engine's adapters as llama-server's GET /lora-adapters lists them:
        ``[{"id", "path", "scale"}]``, scale the current default."""
        self._open_generation()
        return self._lora.describe()

    def set_lora_scales(self, scales: list[tuple[int, float]]) -> None:
        """New default scales, as llama-server's POST /lora-adapters: each (id, scale) given,
        every adapter not named off. Requests submitted afterwards run with them (those
        already submitted keep theirs). InvalidRequestError (param ``lora``) for an
        unknown or repeated id or a scale outside [0, MAX_LORA_SCALE]: nothing changes."""
        self._open_generation()
        self._lora.set_scales(scales)

    async def compile_grammar(self, grammar: str) -> Constraint:
        """A grammar state for one request; compiling runs off the event loop (the first
        call also builds the model's grammar tokenizer). InvalidGrammarError when it fails."""
        runner = self._open_generation()
        return await self._worker_calls.run(lambda: runner.grammar().compile(grammar))

    def special_tokens(self, texts: Iterable[str]) -> dict[str, int]:
        """Which of ``texts`` are one special token of the vocabulary (text -> token id): a
        generic lookup; which texts to ask about is the caller's knowledge."""
        return self._open_generation().special_tokens(texts)

    def token_piece(self, token: int) -> bytes:
        """The bytes of one token (for logprobs in responses)."""
        return self._open_generation().vocab.token_to_piece(token)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
                       timeout_s: float | None = None, n: int = 1, tenancy: Tenancy = ANONYMOUS,
                       group: str | None = None) -> AsyncGenerator[tuple[int, Event], None]:
        """Yield ``(choice index, event)``: TokenEvents, then one FinishEvent or ErrorEvent per
        choice. ``n`` choices share one prefill of the prompt (KV copied to each) and sample
        on their own (``params.for_choice(index)``: seed + index). Closing or cancelling the
        generator aborts what is unfinished (slots are freed at the next step).
        ``timeout_s`` bounds queue + prefill + decode (ErrorEvent(DeadlineExceededError)).
        ``tenancy`` (whose request: tenant, weight, priority) orders admission fairly;
        ``group`` (``new_group``) names the client request of several generate() calls (its
        prompts): together its sequences keep at most their share of the slots while others
        wait (choices.py); by default the n choices are a group of their own."""
        engine_thread = self._engine_thread
        self.check_prompt(prompt_ids, params)
        if n > self.info.n_parallel:
            raise InvalidRequestError(f"n={n} is more than this engine's {self.info.n_parallel} slots",
                                      param="n")
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        arrival = time.monotonic()
        group_id = group or new_group(request_id)
        members = [Request(request_id=f"{request_id}-{index}" if n > 1 else request_id,
                           prompt_ids=list(prompt_ids), params=params.for_choice(index),
                           arrival=arrival, sink=EventSink(loop, events, index), tenancy=tenancy,
                           group=group_id, deadline=None if timeout_s is None else arrival + timeout_s)
                   for index in range(n)]
        adapters = self._lora.resolve(params.lora)  # the engine's scales as they are now
        for request in members:
            request.adapters = adapters
        if params.grammar is not None:
            for request in members:
                request.constraint = await self.compile_grammar(params.grammar)
        leader = members[0]
        for fork in members[1:]:
            fork.fork_of = leader
            leader.forks.append(fork)
        engine_thread.submit(leader)
        if self._in_flight.arrive(tenancy.tenant):
            engine_thread.interrupt_step()  # its first request beside others' (interrupts.py)
        unfinished = set(range(n))
        self.holders.hold()
        try:
            while unfinished:
                index, event = await events.get()
                if isinstance(event, (FinishEvent, ErrorEvent)):
                    unfinished.discard(index)
                yield index, event
        finally:
            self._in_flight.leave(tenancy.tenant)
            self.holders.release()
            for index in unfinished:
                engine_thread.abort(members[index])


class EmbeddingEngine(AsyncEngine):
    """An embedding model behind the embedding batcher thread."""

    def __init__(self, config: EngineConfig, runner: EmbeddingRunner, holders: Holders) -> None:
        self.embedding = runner.spec
        self._loop = EmbeddingLoop(runner, config.max_queue, config.engine_id)
        super().__init__(config, runner, self._loop, holders, "embedding", runner.spec.pooling)

    async def embed(self, inputs: list[list[int]], tenancy: Tenancy = ANONYMOUS) -> np.ndarray:
        """One unit vector per input (rows of a float32 array), computed in steps shared
        fairly with other requests' inputs (``tenancy``: whose request). InvalidRequestError
        (400) for inputs that cannot be embedded."""
        self._open_runner()
        self._loop.spec.check(inputs, self.info.n_vocab)
        return await self._loop.embed(inputs, tenancy)
