"""A reusable llama_batch filled from numpy arrays in one C call."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .loader import load


class Batch:
    def __init__(self, capacity: int) -> None:
        native = load()
        self._ffi, self._lib = native.ffi, native.lib
        self.capacity = capacity
        self._close_lock = threading.Lock()
        # One heap struct for the batch's lifetime; llama_decode takes it by value.
        self._ptr: Any = self._ffi.new("struct llama_batch *")
        self._ptr[0] = self._lib.llama_batch_init(capacity, 0, 1)
        self._open = True

    @property
    def c_batch(self) -> Any:
        if not self._open:
            raise RuntimeError("batch is closed")
        return self._ptr[0]

    @property
    def n_tokens(self) -> int:
        return int(self._ptr.n_tokens)

    def fill(self, tokens: np.ndarray, positions: np.ndarray, seq_ids: np.ndarray,
             logits: np.ndarray) -> None:
        """Set the batch to these rows (int32 tokens/positions/seq_ids, int8 logits flags)."""
        count = len(tokens)
        if count > self.capacity:
            raise ValueError(f"{count} tokens exceed the batch capacity {self.capacity}")
        if not self._open:
            raise RuntimeError("batch is closed")
        ffi = self._ffi
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        positions = np.ascontiguousarray(positions, dtype=np.int32)
        seq_ids = np.ascontiguousarray(seq_ids, dtype=np.int32)
        logits = np.ascontiguousarray(logits, dtype=np.int8)
        self._lib.kolosal_batch_fill(self._ptr, count, ffi.from_buffer("llama_token[]", tokens),
                                     ffi.from_buffer("llama_pos[]", positions),
                                     ffi.from_buffer("llama_seq_id[]", seq_ids),
                                     ffi.from_buffer("int8_t[]", logits))

    def close(self) -> None:
        with self._close_lock:
            if self._open:
                self._lib.llama_batch_free(self._ptr[0])
                self._open = False

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
