"""Runs a StepPlan on libllama: fill the batch, decode, sample. The only engine module
that imports kolosal.llama."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from ..llama import Batch, Context, ContextParams, DecodeStatus, Model, ModelParams, Sampler, SamplerSettings
from ..llama.model import ProgressCallback
from .config import EngineConfig
from .request import Request, SamplingParams
from .scheduler import StepPlan


@dataclass(slots=True)
class StepResult:
    status: DecodeStatus
    tokens: np.ndarray  # one sampled token per plan.sampled request (empty unless OK)
    decode_s: float = 0.0
    sample_s: float = 0.0


class ModelRunner:
    def __init__(self, config: EngineConfig, progress: ProgressCallback | None = None) -> None:
        self.model = Model(config.model_path,
                           ModelParams(n_gpu_layers=config.n_gpu_layers, main_gpu=config.main_gpu_id,
                                       use_mmap=config.use_mmap), progress=progress)
        try:
            self.context = Context(self.model, ContextParams(
                n_ctx=config.n_ctx, n_batch=config.n_batch, n_ubatch=config.n_batch,
                n_seq_max=config.resolved_parallel, n_threads=config.n_threads,
                flash_attn=config.flash_attn))
        except Exception:
            self.model.close()
            raise
        self.batch = Batch(self.context.n_batch)
        self.vocab = self.model.vocab

    def close(self) -> None:
        self.batch.close()
        self.context.close()
        self.model.close()

    def make_sampler(self, params: SamplingParams) -> Sampler | None:
        """None means greedy: argmax in C over all greedy rows, no sampler chain."""
        settings = SamplerSettings(
            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
            min_p=params.min_p,
            seed=params.seed if params.seed is not None else random.getrandbits(32),
            repeat_penalty=params.repeat_penalty, presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, logit_bias=dict(params.logit_bias))
        if settings.is_greedy:
            return None
        return Sampler(settings, self.context.n_vocab)

    def run(self, plan: StepPlan) -> StepResult:
        self.batch.fill(plan.tokens, plan.positions, plan.seq_ids, plan.logits)
        started = time.perf_counter()
        status = self.context.decode(self.batch)
        decoded = time.perf_counter()
        if status != DecodeStatus.OK:
            return StepResult(status, np.empty(0, dtype=np.int32), decoded - started)
        tokens = self._sample(plan.sampled, plan.output_rows)
        return StepResult(status, tokens, decoded - started, time.perf_counter() - decoded)

    def _sample(self, requests: list[Request], rows: np.ndarray) -> np.ndarray:
        tokens = np.empty(len(requests), dtype=np.int32)
        greedy = [index for index, r in enumerate(requests) if r.sampler is None]
        if greedy:
            tokens[greedy] = self.context.argmax_rows(rows[greedy])
        for index, request in enumerate(requests):
            sampler = request.sampler
            if sampler is not None:
                assert isinstance(sampler, Sampler)
                tokens[index] = sampler.sample(self.context, int(rows[index]))
        return tokens
