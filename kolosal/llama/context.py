"""An inference context: KV cache, decode, logits. Owns its llama_context."""
from __future__ import annotations

import enum
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .batch import Batch
from .model import Model

if TYPE_CHECKING:
    from .adapter import LoraAdapter


class DecodeStatus(enum.IntEnum):
    OK = 0
    NO_KV_SLOT = 1  # recoverable: shrink the batch or free cells and retry
    ABORTED = 2
    INVALID_BATCH = -1


class DecodeError(RuntimeError):
    """llama_decode failed fatally (code < -1)."""


FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
# llama_pooling_type values: how an embedding context reduces a sequence's token vectors.
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
# KV cache element types are ggml_type names ("f32", "f16", "q8_0", "q4_0": those the cdef declares)
KV_UNQUANTIZED = frozenset({"f32", "f16"})
# ggml-cpu's tiled K-quant matmul takes batches of 8+ rows, the vec_dot kernel fewer, with
# other rounding. ggml reads this switch once per process, when it first plans a matmul.
TILED_MATMUL_ENV = "GGML_CPU_TILED_MM"
_first_decode_done = False


class BatchInvariantUnavailableError(RuntimeError):
    """Batch-invariant kernels asked for after this process's first decode."""


def untiled_matmul() -> None:
    """Turn ggml-cpu's tiled matmul off for this process (every context), so a row's result
    does not depend on how many rows share its matmul. Only possible before the process's
    first decode: ggml has latched the switch by then."""
    if os.environ.get(TILED_MATMUL_ENV) == "0":
        return
    if _first_decode_done:
        raise BatchInvariantUnavailableError(
            f"batch-invariant kernels need {TILED_MATMUL_ENV}=0 before the first decode in this "
            "process: set it in the environment (or start the server with the deterministic "
            "engine) before any other engine runs")
    os.environ[TILED_MATMUL_ENV] = "0"


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
    embeddings: bool = False  # output pooled sequence vectors (every token is an output row)
    pooling: str | None = None  # a POOLING key; None = the model's own (none if it has none)
    type_k: str = "f16"      # KV cache element types; a quantized V cache needs flash
    type_v: str = "f16"      # attention: libllama turns "auto" on and refuses "off"
    # ggml-cpu's tiled matmul off (process-wide, see untiled_matmul): with flash attention
    # on, weights not repacked and K/V types that keep attention on its per-row kernel, a
    # row's logits are then bitwise independent of the rest of its batch
    batch_invariant: bool = False

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
        if self.params.pooling is not None and self.params.pooling not in POOLING:
            raise ValueError(f"pooling must be one of {sorted(POOLING)}")
        if self.params.type_v not in KV_UNQUANTIZED and self.params.flash_attn == "off":
            raise ValueError(f"a {self.params.type_v} V cache needs flash attention (not 'off')")
        if self.params.batch_invariant:
            untiled_matmul()
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
        c_params.type_k = self._ggml_type(self.params.type_k)
        c_params.type_v = self._ggml_type(self.params.type_v)
        c_params.no_perf = True
        self._interrupt = self._ffi.new("int32_t *")  # read by kolosal_interrupt_requested
        c_params.abort_callback = self._ffi.addressof(self._lib, "kolosal_interrupt_requested")
        c_params.abort_callback_data = self._interrupt
        c_params.embeddings = self.params.embeddings
        if self.params.pooling is not None:
            c_params.pooling_type = POOLING[self.params.pooling]
        ptr = self._lib.llama_init_from_model(model.ptr, c_params)
        if ptr == self._ffi.NULL:
            raise RuntimeError("llama_init_from_model failed (out of memory, or bad parameters)")
        self._ptr = ptr
        self._memory = self._lib.llama_get_memory(ptr)
        self.n_ctx = int(self._lib.llama_n_ctx(ptr))
        self.n_batch = int(self._lib.llama_n_batch(ptr))
        self.n_seq_max = int(self._lib.llama_n_seq_max(ptr))
        self.n_vocab = model.vocab.n_tokens

    def _ggml_type(self, name: str) -> Any:
        value = getattr(self._lib, f"GGML_TYPE_{name.upper()}", None)
        if value is None:
            raise ValueError(f"unknown KV cache type {name!r}")
        return value

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
        global _first_decode_done
        _first_decode_done = True
        code = self._lib.llama_decode(self.ptr, batch.c_batch)
        if code < -1:
            raise DecodeError(f"llama_decode failed with code {code}")
        return DecodeStatus(code)

    def interrupt(self) -> None:
        """Stop the decode in flight (or the next one) at its next graph node: it returns
        DecodeStatus.ABORTED and libllama removes that batch's new positions. Any thread;
        ggml's CPU backend honours it (a GPU graph runs to its end). ``resume`` clears it."""
        self._interrupt[0] = 1

    def resume(self) -> None:
        """Let decodes run to their end again (clears ``interrupt``)."""
        self._interrupt[0] = 0

    def set_adapters(self, adapters: Sequence[tuple[LoraAdapter, float]]) -> None:
        """Apply these LoRA adapters at these scales to every later decode of this context
        (libllama keeps one set per context; an empty list applies none)."""
        if not adapters:
            self._lib.llama_set_adapters_lora(self.ptr, self._ffi.NULL, 0, self._ffi.NULL)
            return
        pointers = self._ffi.new("struct llama_adapter_lora *[]", [adapter.ptr for adapter, _ in adapters])
        scales = self._ffi.new("float[]", [scale for _, scale in adapters])
        self._lib.llama_set_adapters_lora(self.ptr, pointers, len(adapters), scales)

    def logits_row(self, row: int) -> np.ndarray:
        """A read-only numpy view of one output row's logits (valid until the next decode)."""
        view = self._row_view(row)
        view.flags.writeable = False
        return view

    def _row_view(self, row: int) -> np.ndarray:
        return np.frombuffer(self._ffi.buffer(self.logits_pointer(row), self.n_vocab * 4), dtype=np.float32)

    def row_logprobs(self, row: int, top_k: int) -> tuple[float, np.ndarray, np.ndarray]:
        """log-softmax facts of one output row, computed in C before anything reshapes the
        row: (logsumexp, the top_k token ids best first, their log-probabilities)."""
        pointer = self.logits_pointer(row)
        ids = np.empty(top_k, dtype=np.int32)
        logprobs = np.empty(top_k, dtype=np.float32)
        lse = self._lib.kolosal_logprobs(pointer, self.n_vocab, top_k,
                                         self._ffi.from_buffer("int32_t[]", ids),
                                         self._ffi.from_buffer("float[]", logprobs))
        return float(lse), ids, logprobs

    def logit(self, row: int, token: int) -> float:
        return float(self.logits_pointer(row)[token])

    def mask_row(self, row: int, mask: np.ndarray) -> None:
        """Set every token whose bit is 0 in ``mask`` (a llguidance uint32 bitmask) to -inf
        in this output row, in place: samplers and argmax then only see allowed tokens."""
        self._lib.kolosal_apply_token_mask(self.logits_pointer(row), self.n_vocab,
                                           self._ffi.from_buffer("uint32_t[]", mask))

    def ban_tokens(self, row: int, tokens: np.ndarray) -> None:
        """Set these tokens' logits to -inf in this output row, in place: samplers and
        argmax then never pick them (``ignore_eos``: the end-of-generation tokens)."""
        self._row_view(row)[tokens] = -np.inf

    def logits_pointer(self, row: int) -> Any:
        """The C pointer to one output row's logits (valid until the next decode)."""
        pointer = self._lib.llama_get_logits_ith(self.ptr, row)
        if pointer == self._ffi.NULL:
            raise IndexError(f"batch row {row} has no logits")
        return pointer

    def argmax_rows(self, rows: np.ndarray) -> np.ndarray:
        """Greedy tokens for these batch rows, computed in C (``kolosal_argmax_rows``: two
        vectorized passes a row) with the GIL released; ties go to the lowest token id, as
        in llama_sampler_init_greedy."""
        wanted = np.ascontiguousarray(rows, dtype=np.int32)
        tokens = np.empty(len(wanted), dtype=np.int32)
        self._lib.kolosal_argmax_rows(self.ptr, self.n_vocab, self._ffi.from_buffer("int32_t[]", wanted),
                                      len(wanted), self._ffi.from_buffer("int32_t[]", tokens))
        if len(tokens) and tokens.min() < 0:
            raise IndexError(f"batch row {int(wanted[tokens.argmin()])} has no logits")
        return tokens

    # -- embeddings -----------------------------------------------------------------------
    @property
    def pooling(self) -> str:
        """The pooling this context applies (a POOLING key)."""
        value = int(self._lib.llama_pooling_type(self.ptr))
        return next((name for name, code in POOLING.items() if code == value), "none")

    def sequence_embedding(self, seq_id: int, size: int) -> np.ndarray:
        """A copy of one sequence's pooled vector from the last decode (``size`` floats:
        the model's n_embd_out). Needs a pooling context with that seq_id in the batch."""
        pointer = self._lib.llama_get_embeddings_seq(self.ptr, seq_id)
        if pointer == self._ffi.NULL:
            raise IndexError(f"no pooled embedding for sequence {seq_id}")
        vector: np.ndarray = np.frombuffer(self._ffi.buffer(pointer, size * 4), dtype=np.float32).copy()
        return vector

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

    def clear_memory(self, data: bool = True) -> None:
        """Forget every sequence; ``data=False`` skips zeroing the KV buffers (only the cell
        metadata is reset, which is all a later decode needs)."""
        self._lib.llama_memory_clear(self._memory, data)
