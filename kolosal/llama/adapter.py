"""A LoRA adapter loaded against a model: owns its llama_adapter_lora.

The file is checked in pure Python first (``kolosal.gguf_header``, bounded in memory and
time): a missing file, a file that is not GGUF, a GGUF that is not a LoRA adapter
(``general.type`` ``adapter``, ``adapter.type`` ``lora``) or one made for another
architecture is refused with its reason before libllama opens it. libllama then matches the
adapter's tensors against the model's (names and shapes) and returns NULL when they do not
fit: an adapter for another base model of the same architecture is refused there.

An adapter must be freed before its model (libllama frees leftover adapters with the
model, so ours would dangle) and after every context that applies it.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..gguf_header import InvalidModelFileError, read_gguf_metadata
from .model import Model, ModelLoadError


class AdapterLoadError(ModelLoadError):
    """A LoRA adapter file that cannot be applied to this model; the message says why."""


def check_adapter_file(path: str | Path, architecture: str | None = None) -> dict[str, object]:
    """The adapter's GGUF metadata, once it passed the checks above (``architecture``: the
    model's, when known). Raises AdapterLoadError with the reason."""
    name = Path(path).name
    try:
        metadata = read_gguf_metadata(path)
    except FileNotFoundError:
        raise AdapterLoadError(f"LoRA adapter file not found: {path}") from None
    except IsADirectoryError:
        raise AdapterLoadError(f"LoRA adapter path is a directory, not a GGUF file: {path}") from None
    except (InvalidModelFileError, OSError) as error:
        raise AdapterLoadError(f"LoRA adapter {name}: {error}") from None
    kind, adapter_type = metadata.get("general.type"), metadata.get("adapter.type")
    if kind != "adapter" or adapter_type != "lora":
        raise AdapterLoadError(f"{name} is not a LoRA adapter (general.type {kind!r}, adapter.type "
                               f"{adapter_type!r}; expected 'adapter' and 'lora')")
    adapter_arch = metadata.get("general.architecture")
    if architecture is not None and adapter_arch != architecture:
        raise AdapterLoadError(f"LoRA adapter {name} is for architecture {adapter_arch!r}, the model "
                               f"is {architecture!r}")
    return metadata


class LoraAdapter:
    """``LoraAdapter(model, path)``; free with ``close()`` (before the model)."""

    def __init__(self, model: Model, path: str | Path) -> None:
        self.path = Path(path)
        self.model = model
        self._ffi, self._lib = model._ffi, model._lib
        self._close_lock = threading.Lock()
        self._ptr: Any = self._ffi.NULL
        metadata = check_adapter_file(self.path, model.metadata.get("general.architecture"))
        alpha = metadata.get("adapter.lora.alpha")
        self.alpha = float(alpha) if isinstance(alpha, (int, float)) else 0.0
        ptr = self._lib.llama_adapter_lora_init(model.ptr, str(self.path).encode())
        if ptr == self._ffi.NULL:
            raise AdapterLoadError(
                f"libllama refused the LoRA adapter {self.path.name} (llama_adapter_lora_init returned "
                f"NULL): its tensors do not match {model.path.name}'s (names or shapes: an adapter "
                "for another base model?), or its data is truncated; see the log for libllama's reason")
        self._ptr = ptr
        if self._lib.llama_adapter_get_alora_n_invocation_tokens(ptr):
            self.close()
            raise AdapterLoadError(f"{self.path.name} is an activated LoRA (aLoRA), which is not "
                                   "supported: only plain LoRA adapters are")

    @property
    def ptr(self) -> Any:
        if self._ptr == self._ffi.NULL:
            raise RuntimeError("LoRA adapter is closed")
        return self._ptr

    def close(self) -> None:
        with self._close_lock:
            if self._ptr != self._ffi.NULL:
                self._lib.llama_adapter_lora_free(self._ptr)
                self._ptr = self._ffi.NULL

    def __enter__(self) -> LoraAdapter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["AdapterLoadError", "LoraAdapter", "check_adapter_file"]
