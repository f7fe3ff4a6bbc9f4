"""Embedding engines: a batcher thread that packs whole inputs from many requests into one
llama_batch per step (one seq_id per input), reads each sequence's pooled vector after the
decode and L2-normalises it. Kept apart from the generation scheduler: an embedding step
has no slots to keep, no sampling and no KV that outlives it.

Batch invariance (an input's vector does not depend on what else is in the step) is kept
on CPU by two choices measured on libllama's kernels: flash attention is off (its tiled
path for larger batches keeps Q in f32, the one-row path rounds it to f16) and every batch
is padded to a multiple of ``ROW_GROUP`` rows with a padding sequence (the repacked
quantised matmuls compute rows in groups of four and the leftover rows by a different
kernel). With both, one input alone and the same input among others agree to ~1e-7.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..gguf_header import read_gguf_metadata
from ..llama import Batch, Context, ContextParams, DecodeStatus, Model
from ..llama.model import ProgressCallback
from .config import EngineConfig
from .embedding_queue import EmbeddingJob, EmbeddingQueue, StepPlan
from .errors import EngineStoppedError, InferenceError, InvalidRequestError
from .request import ANONYMOUS, Tenancy
from .runner import ModelRunner
from .stats import RateWindow
from .worker import WorkerThread, post

logger = logging.getLogger(__name__)

_GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}  # llama_pooling_type values in GGUF metadata
ROW_GROUP = 4                # pad every batch to a multiple of this many rows (see above)
DEFAULT_INPUTS_PER_STEP = 64
MAX_SEQUENCES = 256          # libllama's LLAMA_MAX_SEQ
MAX_REQUEST_TOKENS = 300_000  # tokens of one request's inputs together (OpenAI's bound)


class EmbeddingOnlyError(InvalidRequestError):
    """A generation request reached an engine that serves embeddings only (HTTP 400)."""

    code = "embedding_engine"

    def __init__(self, engine_id: str) -> None:
        super().__init__(f"engine '{engine_id}' serves embeddings only (POST /v1/embeddings); load "
                         "the model again without \"embedding\" for chat and completions", param="model")


class NotAnEmbeddingEngineError(InvalidRequestError):
    """An embeddings request reached a generation engine (HTTP 400)."""

    code = "embeddings_not_supported"

    def __init__(self, engine_id: str) -> None:
        super().__init__(f"engine '{engine_id}' does not serve embeddings; load an embedding engine "
                         "with POST /engines {\"engine_id\": ..., \"model_path\": ..., \"embedding\": "
                         "true} (optionally \"pooling\": mean, cls or last)", param="model")


def gguf_pooling(model_path: str) -> str | None:
    """The GGUF's own pooling (``<arch>.pooling_type``) when it is an embedding model; read
    once per file version (the memory estimate and the load both ask)."""
    stat = Path(model_path).stat()
    return _gguf_pooling(model_path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _gguf_pooling(model_path: str, size: int, mtime_ns: int) -> str | None:
    metadata = read_gguf_metadata(model_path)
    value = metadata.get(f"{metadata.get('general.architecture', '')}.pooling_type")
    return _GGUF_POOLING.get(value) if isinstance(value, int) else None


def resolve_pooling(config: EngineConfig) -> str | None:
    """How this engine pools, or None when it is a generation engine. ``embedding: true``
    or a ``pooling`` makes an embedding engine, an embedding GGUF is one unless
    ``embedding: false``; the pooling defaults to the GGUF's, else mean."""
    if config.embedding is False:
        return None
    native = gguf_pooling(config.model_path)
    if config.pooling is not None:
        return config.pooling
    if config.embedding:
        return native or "mean"
    return native


def step_shape(config: EngineConfig) -> tuple[int, int]:
    """(tokens per step, sequences per step including the padding one). Tokens: n_batch
    (at most n_ctx) rounded down to whole row groups. Sequences: the most that divide the
    token count, up to n_parallel + 1 (64 inputs by default): libllama reserves its
    pooling graph for n_ubatch / n_seq_max tokens per sequence and fails an assertion
    when that division is not exact."""
    budget = min(config.n_batch, config.n_ctx)
    budget = max(ROW_GROUP, budget - budget % ROW_GROUP)
    wanted = min(config.n_parallel or DEFAULT_INPUTS_PER_STEP, MAX_SEQUENCES - 1) + 1
    n_seq_max = max(d for d in range(2, min(wanted, budget) + 1) if budget % d == 0)
    return budget, n_seq_max


def make_runner(config: EngineConfig, progress: ProgressCallback | None = None
                ) -> ModelRunner | EmbeddingRunner:
    """The runner this config asks for: an embedding runner or a generation one."""
    pooling = resolve_pooling(config)
    if pooling is None:
        return ModelRunner(config, progress)
    if config.lora:
        raise InvalidRequestError("LoRA adapters are served by generation engines, not embedding ones",
                                  param="lora")
    return EmbeddingRunner(config, pooling, progress)


@dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    """What an embedding engine serves, for validation and the status page."""

    pooling: str
    dimensions: int          # length of every vector
    max_input_tokens: int    # one input must fit one step
    inputs_per_step: int

    def check(self, inputs: list[list[int]], n_vocab: int) -> None:
        """400s before anything is queued: an empty input, a token id outside the
        vocabulary, an input longer than one step (each named by its index), more than
        MAX_REQUEST_TOKENS in all."""
        if not inputs:
            raise InvalidRequestError("input must not be empty", param="input")
        for index, ids in enumerate(inputs):
            if not ids:
                raise InvalidRequestError(f"input[{index}] is empty", param="input")
            if len(ids) > self.max_input_tokens:
                raise InvalidRequestError(
                    f"input[{index}] has {len(ids)} tokens, more than the {self.max_input_tokens} "
                    "tokens this engine embeds in one step; shorten it or load the engine with a "
                    "larger n_batch (and n_ctx)", param="input")
            if min(ids) < 0 or max(ids) >= n_vocab:
                raise InvalidRequestError(f"input[{index}]: token ids must be in [0, {n_vocab})",
                                          param="input")
        total = sum(len(ids) for ids in inputs)
        if total > MAX_REQUEST_TOKENS:
            raise InvalidRequestError(
                f"input has {total} tokens in all, more than the {MAX_REQUEST_TOKENS} one request "
                "may embed; send its inputs in several requests", param="input")


class EmbeddingRunner:
    """The model and an embedding context. The only part of this module touching libllama
    objects; used by the batcher thread alone once loaded."""

    def __init__(self, config: EngineConfig, pooling: str,
                 progress: ProgressCallback | None = None) -> None:
        self.model = Model(config.model_path, config.model_params(), progress=progress)
        budget, n_seq_max = step_shape(config)
        try:
            # Pooling needs each sequence whole in one micro-batch: n_ubatch = n_batch.
            self.context = Context(self.model, ContextParams(
                n_ctx=config.n_ctx, n_batch=budget, n_ubatch=budget, n_seq_max=n_seq_max,
                n_threads=config.n_threads, flash_attn="off", embeddings=True, pooling=pooling))
        except Exception:
            self.model.close()
            raise
        self.vocab = self.model.vocab
        inputs_per_step = n_seq_max - 1
        self.spec = EmbeddingSpec(pooling=self.context.pooling, dimensions=self.model.n_embd_out,
                                  max_input_tokens=budget, inputs_per_step=inputs_per_step)
        self.pad_seq_id = inputs_per_step  # the padding rows' own sequence
        self.batch = Batch(budget)

    def close(self) -> None:
        self.batch.close()
        self.context.close()
        self.model.close()

    def run(self, inputs: list[list[int]]) -> np.ndarray:
        """Embed up to ``inputs_per_step`` inputs in one decode: a (len(inputs), dimensions)
        float32 array of unit vectors. Raises InferenceError when the decode fails."""
        lengths = np.fromiter((len(ids) for ids in inputs), dtype=np.int64, count=len(inputs))
        used = int(lengths.sum())
        pad = -used % ROW_GROUP
        tokens = np.empty(used + pad, dtype=np.int32)
        tokens[:used] = np.fromiter((t for ids in inputs for t in ids), dtype=np.int32, count=used)
        tokens[used:] = self.vocab.bos if self.vocab.bos >= 0 else 0
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = np.concatenate([np.arange(used, dtype=np.int64) - starts,
                                    np.arange(pad, dtype=np.int64)])
        seq_ids = np.concatenate([np.repeat(np.arange(len(inputs)), lengths),
                                  np.full(pad, self.pad_seq_id)])
        self.batch.fill(tokens, positions, seq_ids, np.ones(used + pad, dtype=np.int8))
        try:
            status = self.context.decode(self.batch)
            if status != DecodeStatus.OK:
                raise InferenceError(f"llama_decode returned {status.name} for an embedding batch")
            vectors = np.stack([self.context.sequence_embedding(seq_id, self.spec.dimensions)
                                for seq_id in range(len(inputs))])
        finally:
            self.context.clear_memory(data=False)  # nothing outlives a step
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0.0, norms, 1.0)


@dataclass(frozen=True, slots=True)
class EmbeddingStats:
    """Lock-free snapshot, replaced after every step (same contract as EngineStats)."""

    slots_total: int               # inputs one step can take
    queue_depth: int = 0           # inputs waiting
    slots_busy: int = 0
    steps: int = 0
    last_step_ms: float = 0.0
    last_batch_tokens: int = 0
    last_batch_inputs: int = 0
    prefill_tokens_per_s: float = 0.0
    inputs_per_s: float = 0.0
    prompt_tokens_total: int = 0
    inputs_total: int = 0
    padding_tokens_total: int = 0
    requests_finished: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve(items: list[tuple[asyncio.Future[np.ndarray], np.ndarray | BaseException]]) -> None:
    for future, outcome in items:
        if future.done():  # the awaiting request was cancelled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class EmbeddingLoop(WorkerThread[EmbeddingJob]):
    """The embedding engine's thread: owns the runner. The queue bound counts jobs
    submitted and not answered yet."""

    def __init__(self, runner: EmbeddingRunner, max_queue: int, name: str) -> None:
        super().__init__(f"embedding-{name}", max_queue)
        self.runner = runner
        self.spec = runner.spec
        self.stats = EmbeddingStats(slots_total=self.spec.inputs_per_step)
        self._queue = EmbeddingQueue()
        self._window = RateWindow()

    # -- called from the event loop -------------------------------------------------------
    def queued_locked(self) -> int:
        return self.submitted

    def submit(self, job: EmbeddingJob) -> None:
        self.enqueue(job, 1)

    def snapshot(self) -> EmbeddingStats:
        return self.stats

    async def embed(self, inputs: list[list[int]], tenancy: Tenancy = ANONYMOUS) -> np.ndarray:
        """Queue the inputs and wait for their unit vectors (one row each); steps take the
        inputs of waiting requests fairly (embedding_queue.py). Cancelling the caller drops
        its inputs that have not been computed yet."""
        loop = asyncio.get_running_loop()
        job = EmbeddingJob(inputs, loop.create_future(), loop, tenancy)
        self.submit(job)
        try:
            return await job.future
        finally:
            job.cancelled = True  # read by the thread; harmless once answered

    # -- the thread -------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self._queue)

    def take(self, command: EmbeddingJob) -> None:
        self._queue.push(command)

    def stop(self, reason: str) -> None:
        jobs = [job for job in self._queue.jobs() if not job.done]
        self._queue.clear()
        self._deliver([(job, EngineStoppedError(reason)) for job in jobs])

    def refuse(self, command: EmbeddingJob, reason: str) -> None:
        self._deliver([(command, EngineStoppedError(reason))])

    def step(self) -> None:
        """Plan a step from the waiting inputs (counting out cancelled jobs) and run it."""
        plan = self._queue.plan(self.spec.max_input_tokens, self.spec.inputs_per_step)
        if plan.cancelled:
            self.uncount(len(plan.cancelled))
            self.stats = replace(self.stats, requests_cancelled=self.stats.requests_cancelled
                                 + len(plan.cancelled), queue_depth=len(self._queue))
        if plan.entries:
            self._step(plan)

    def _step(self, plan: StepPlan) -> None:
        started = time.perf_counter()
        try:
            vectors = self.runner.run([job.inputs[index] for job, index in plan.entries])
        except Exception as error:  # never let one bad step kill the engine
            if not isinstance(error, InferenceError):
                logger.exception("embedding step failed")
                error = InferenceError(f"embedding failed: {error}")
            self._fail({job for job, _ in plan.entries}, error)
            return
        finished: list[EmbeddingJob] = []
        for row, (job, index) in enumerate(plan.entries):
            if job.vectors is None:
                job.vectors = np.empty((len(job.inputs), vectors.shape[1]), dtype=np.float32)
            job.vectors[index] = vectors[row]
            job.remaining -= 1
            if job.remaining == 0 and not job.done:
                finished.append(job)
        # the stats first: a client that has its vectors sees the queue without its inputs
        self._record(plan, time.perf_counter() - started, len(finished))
        self._deliver([(job, job.vectors) for job in finished if job.vectors is not None])

    def _fail(self, jobs: set[EmbeddingJob], error: Exception) -> None:
        jobs = {job for job in jobs if not job.done}
        self._deliver([(job, error) for job in jobs])
        self.stats = replace(self.stats, requests_failed=self.stats.requests_failed + len(jobs))

    def _deliver(self, outcomes: list[tuple[EmbeddingJob, np.ndarray | BaseException]]) -> None:
        if not outcomes:
            return
        self.uncount(len(outcomes))
        for job, _ in outcomes:
            job.done = True
        post(((job.loop, (job.future, outcome)) for job, outcome in outcomes), _resolve)

    def _record(self, plan: StepPlan, seconds: float, finished: int) -> None:
        tokens_per_s, inputs_per_s = self._window.add(time.monotonic(), plan.tokens, len(plan.entries))
        old = self.stats
        self.stats = replace(
            old, queue_depth=len(self._queue), steps=old.steps + 1,
            last_step_ms=seconds * 1000.0, last_batch_tokens=plan.tokens,
            last_batch_inputs=len(plan.entries),
            prefill_tokens_per_s=tokens_per_s, inputs_per_s=inputs_per_s,
            prompt_tokens_total=old.prompt_tokens_total + plan.tokens,
            inputs_total=old.inputs_total + len(plan.entries),
            padding_tokens_total=old.padding_tokens_total + (-plan.tokens % ROW_GROUP),
            requests_finished=old.requests_finished + finished)


__all__ = ["EmbeddingJob", "EmbeddingLoop", "EmbeddingOnlyError", "EmbeddingRunner",
           "EmbeddingSpec", "EmbeddingStats", "NotAnEmbeddingEngineError", "make_runner",
           "resolve_pooling"]
