"""A loaded GGUF model: weights, vocabulary and metadata. Owns its llama_model."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..gguf_header import InvalidModelFileError, read_gguf_header
from .loader import load
from .vocab import Vocab

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """libllama could not load a file that passed the header check."""


@dataclass(frozen=True, slots=True)
class ModelParams:
    n_gpu_layers: int = 100
    main_gpu: int = 0
    use_mmap: bool = True
    # read the hyper-parameters, vocabulary and tensor table, allocate and read no weights
    # (what the isolated load check runs; see kolosal/llama/probe.py)
    no_alloc: bool = False
    # repacked weight layouts (CPU_REPACK: interleaved Q4_K/Q4_0/... rows for gemm/gemv
    # kernels). Off for deterministic engines: the repacked matmul takes a 4-row gemm for
    # batches and a gemv for leftover rows, so a row's result depends on its batch.
    use_extra_bufts: bool = True


ProgressCallback = Callable[[float], bool]


class Model:
    """Load with ``Model(path, params)``; free with ``close()`` or a ``with`` block."""

    def __init__(self, path: str | Path, params: ModelParams | None = None,
                 progress: ProgressCallback | None = None) -> None:
        self.path = Path(path)
        self.params = params or ModelParams()
        header = read_gguf_header(self.path)  # clear errors before C sees the file
        native = load()
        self._ffi, self._lib = native.ffi, native.lib
        self._ptr: Any = self._ffi.NULL
        self._close_lock = threading.Lock()
        c_params = self._lib.llama_model_default_params()
        c_params.n_gpu_layers = self.params.n_gpu_layers
        c_params.main_gpu = self.params.main_gpu
        c_params.load_mode = (self._lib.LLAMA_LOAD_MODE_MMAP
                              if self.params.use_mmap and not self.params.no_alloc
                              else self._lib.LLAMA_LOAD_MODE_NONE)  # no_alloc asserts when mmap'd
        c_params.no_alloc = self.params.no_alloc
        c_params.use_extra_bufts = self.params.use_extra_bufts
        if self.params.no_alloc:  # an empty device list: simulate on the CPU, touch no GPU
            self._no_devices = self._ffi.new("ggml_backend_dev_t[1]")
            c_params.devices = self._no_devices
        handle = None
        if progress is not None:
            handle = self._ffi.new_handle(progress)
            c_params.progress_callback = self._lib.kolosal_progress_callback
            c_params.progress_callback_user_data = handle
        ptr = self._lib.llama_model_load_from_file(str(self.path).encode(), c_params)
        if ptr == self._ffi.NULL:
            raise ModelLoadError(
                f"libllama could not load {self.path.name} (GGUF v{header.version}, "
                f"{header.tensor_count} tensors): the file may be truncated, corrupt, or of an "
                "unsupported architecture; see the log for libllama's reason")
        self._ptr = ptr
        self.vocab = Vocab(self._ffi, self._lib, self._lib.llama_model_get_vocab(ptr))
        self.metadata = self._read_metadata()

    # -- lifetime -------------------------------------------------------------------------
    @property
    def ptr(self) -> Any:
        if self._ptr == self._ffi.NULL:
            raise RuntimeError("model is closed")
        return self._ptr

    def close(self) -> None:
        with self._close_lock:
            if self._ptr != self._ffi.NULL:
                self._lib.llama_model_free(self._ptr)
                self._ptr = self._ffi.NULL

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- facts ----------------------------------------------------------------------------
    @property
    def n_ctx_train(self) -> int:
        return int(self._lib.llama_model_n_ctx_train(self.ptr))

    @property
    def n_embd(self) -> int:
        return int(self._lib.llama_model_n_embd(self.ptr))

    @property
    def n_embd_out(self) -> int:
        """Width of the vectors an embedding context returns (n_embd unless the model
        projects its output)."""
        return int(self._lib.llama_model_n_embd_out(self.ptr))

    @property
    def n_layer(self) -> int:
        return int(self._lib.llama_model_n_layer(self.ptr))

    @property
    def n_swa(self) -> int:
        """Sliding attention window of the model's SWA layers (0: none)."""
        return int(self._lib.llama_model_n_swa(self.ptr))

    @property
    def size_bytes(self) -> int:
        return int(self._lib.llama_model_size(self.ptr))

    @property
    def n_params(self) -> int:
        return int(self._lib.llama_model_n_params(self.ptr))

    @property
    def description(self) -> str:
        buf = self._ffi.new("char[]", 256)
        self._lib.llama_model_desc(self.ptr, buf, 256)
        return str(self._ffi.string(buf).decode("utf-8", "replace"))

    @property
    def chat_template(self) -> str | None:
        """The GGUF's ``tokenizer.chat_template``, if it has one."""
        return self.metadata.get("tokenizer.chat_template")

    def _read_metadata(self) -> dict[str, str]:
        """All GGUF metadata as strings (libllama renders arrays as summaries)."""
        metadata: dict[str, str] = {}
        count = self._lib.llama_model_meta_count(self._ptr)
        for index in range(count):
            key = self._read_string(partial(self._lib.llama_model_meta_key_by_index, self._ptr, index))
            value = self._read_string(partial(self._lib.llama_model_meta_val_str_by_index, self._ptr, index))
            metadata[key] = value
        return metadata

    def _read_string(self, reader: Callable[[Any, int], int]) -> str:
        size = 256
        while True:
            buf = self._ffi.new("char[]", size)
            needed = reader(buf, size)
            if needed < 0:
                return ""
            if needed < size:
                return str(self._ffi.string(buf).decode("utf-8", "replace"))
            size = needed + 1


__all__ = ["InvalidModelFileError", "Model", "ModelLoadError", "ModelParams"]
