"""Per-sequence sampler chains built with libllama's sampler API (all work in C)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .context import Context
from .loader import load

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: libllama picks a random seed


@dataclass(frozen=True, slots=True)
class SamplerSettings:
    temperature: float = 1.0
    top_k: int = 0              # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = DEFAULT_SEED
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def is_greedy(self) -> bool:
        """Plain argmax suffices: no temperature and nothing that reshapes the logits."""
        return (self.temperature <= 0.0 and not self.logit_bias
                and self.repeat_penalty == 1.0 and self.presence_penalty == 0.0
                and self.frequency_penalty == 0.0)


class Sampler:
    """penalties -> logit bias -> top-k -> top-p -> min-p -> temperature -> dist
    (or greedy), the order llama-server uses by default."""

    def __init__(self, settings: SamplerSettings, n_vocab: int) -> None:
        native = load()
        self._ffi, self._lib = native.ffi, native.lib
        self.settings = settings
        self._close_lock = threading.Lock()
        lib, ffi = self._lib, self._ffi
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = lib.llama_sampler_chain_init(params)
        self._ptr = chain

        def add(sampler: Any) -> None:
            if sampler == ffi.NULL:
                raise ValueError("could not build sampler")
            lib.llama_sampler_chain_add(chain, sampler)

        try:
            s = settings
            if s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0:
                add(lib.llama_sampler_init_penalties(n_vocab, s.penalty_last_n, s.repeat_penalty,
                                                     s.frequency_penalty, s.presence_penalty))
            if s.logit_bias:
                items = ffi.new("llama_logit_bias[]", len(s.logit_bias))
                for index, (token, bias) in enumerate(s.logit_bias.items()):
                    items[index].token = token
                    items[index].bias = bias
                add(lib.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), items))
            if s.temperature <= 0.0:
                add(lib.llama_sampler_init_greedy())
            else:
                if s.top_k > 0:
                    add(lib.llama_sampler_init_top_k(s.top_k))
                if s.top_p < 1.0:
                    add(lib.llama_sampler_init_top_p(s.top_p, 1))
                if s.min_p > 0.0:
                    add(lib.llama_sampler_init_min_p(s.min_p, 1))
                add(lib.llama_sampler_init_temp(s.temperature))
                add(lib.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
        except Exception:
            self.close()
            raise

    def sample(self, context: Context, row: int) -> int:
        """Sample from batch row ``row`` of the last decode and accept the token."""
        return int(self._lib.llama_sampler_sample(self._ptr, context.ptr, row))

    def close(self) -> None:
        with self._close_lock:
            if self._ptr != self._ffi.NULL:
                self._lib.llama_sampler_free(self._ptr)
                self._ptr = self._ffi.NULL

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
