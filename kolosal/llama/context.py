"""An inference context: KV cache, decode, logits. Owns its llama_context."""
from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batch import Batch
from .model import Model


class DecodeStatus(enum.IntEnum):
    OK = 0
    NO_KV_SLOT = 1  # recoverable: shrink the batch or free cells and retry
    ABORTED = 2
    INVALID_BATCH = -1


class DecodeError(RuntimeError):
    """llama_decode failed fatally (code < -1)."""


FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


@dataclass(frozen=True, slots=True)
class ContextParams:
    n_ctx: int = 4096
    n_batch: int = 512       # most tokens one llama_decode call may take
    n_ubatch: int = 512      # physical micro-batch
    n_seq_max: int = 8       # KV slots (parallel sequences)
    n_threads: int = 0       # 0 = all cores
    n_threads_batch: int = 0
    flash_attn: str = "auto"
    kv_unified: bool = True  # one KV pool shared by all slots: any slot can use the whole context
    swa_full: bool = True    # full-size SWA cache, so cached prefixes stay reusable

    def resolved_threads(self) -> tuple[int, int]:
        cores = os.cpu_count() or 1
        n_threads = self.n_threads or cores
        return n_threads, self.n_threads_batch or n_threads


class Context:
    def __init__(self, model: Model, params: ContextParams | None = None) -> None:
        self.model = model
        self.params = params or ContextParams()
        self._ffi, self._lib = model._ffi, model._lib
        self._close_lock = threading.Lock()
        if self.params.flash_attn not in FLASH_ATTN:
            raise ValueError(f"flash_attn must be one of {sorted(FLASH_ATTN)}")
        c_params = self._lib.llama_context_default_params()
        n_threads, n_threads_batch = self.params.resolved_threads()
        c_params.n_ctx = self.params.n_ctx
        c_params.n_batch = self.params.n_batch
        c_params.n_ubatch = min(self.params.n_ubatch, self.params.n_batch)
        c_params.n_seq_max = self.params.n_seq_max
        c_params.n_threads = n_threads
        c_params.n_threads_batch = n_threads_batch
        c_params.flash_attn_type = FLASH_ATTN[self.params.flash_attn]
        c_params.kv_unified = self.params.kv_unified
        c_params.swa_full = self.params.swa_full
        c_params.no_perf = True
        ptr = self._lib.llama_init_from_model(model.ptr, c_params)
        if ptr == self._ffi.NULL:
            raise RuntimeError("llama_init_from_model failed (out of memory, or bad parameters)")
        self._ptr = ptr
        self._memory = self._lib.llama_get_memory(ptr)
        self.n_ctx = int(self._lib.llama_n_ctx(ptr))
        self.n_batch = int(self._lib.llama_n_batch(ptr))
        self.n_seq_max = int(self._lib.llama_n_seq_max(ptr))
        self.n_vocab = model.vocab.n_tokens

    @property
    def ptr(self) -> Any:
        if self._ptr == self._ffi.NULL:
            raise RuntimeError("context is closed")
        return self._ptr

    def close(self) -> None:
        with self._close_lock:
            if self._ptr != self._ffi.NULL:
                self._lib.llama_free(self._ptr)
                self._ptr = self._ffi.NULL

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- decode ---------------------------------------------------------------------------
    def decode(self, batch: Batch) -> DecodeStatus:
        """Run one batch. The GIL is released for the duration of the C call."""
        code = self._lib.llama_decode(self.ptr, batch.c_batch)
        if code < -1:
            raise DecodeError(f"llama_decode failed with code {code}")
        return DecodeStatus(code)

    def logits_row(self, row: int) -> np.ndarray:
        """A read-only numpy view of one output row's logits (valid until the next decode)."""
        pointer = self._lib.llama_get_logits_ith(self.ptr, row)
        if pointer == self._ffi.NULL:
            raise IndexError(f"batch row {row} has no logits")
        view = np.frombuffer(self._ffi.buffer(pointer, self.n_vocab * 4), dtype=np.float32)
        view.flags.writeable = False
        return view

    def argmax_rows(self, rows: np.ndarray) -> np.ndarray:
        """Greedy tokens for these batch rows: numpy's SIMD argmax over each logits row
        (ties go to the lowest token id, as in llama_sampler_init_greedy)."""
        return np.fromiter((self.logits_row(int(row)).argmax() for row in rows),
                           dtype=np.int32, count=len(rows))

    # -- KV memory ------------------------------------------------------------------------
    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool:
        """Drop positions [start, end) of a sequence; False if a partial removal is impossible."""
        return bool(self._lib.llama_memory_seq_rm(self._memory, seq_id, start, end))

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        self._lib.llama_memory_seq_cp(self._memory, src, dst, start, end)

    def seq_pos_max(self, seq_id: int) -> int:
        return int(self._lib.llama_memory_seq_pos_max(self._memory, seq_id))

    def seq_pos_min(self, seq_id: int) -> int:
        return int(self._lib.llama_memory_seq_pos_min(self._memory, seq_id))

    def clear_memory(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)
