"""Find, compile and load the libllama bindings: lazily, once per process.

Lookup order for the library: ``KOLOSAL_LIBLLAMA`` (a libllama file or the directory that
holds it), then the build cache written by ``build_llama.py``. Headers come from
``KOLOSAL_LLAMA_INCLUDE`` or the ``include/`` directory beside the library's directory.

A cached native build says which CPU features it was compiled for; one made for a CPU with
features this one lacks (a shared home directory or image) is refused with the remedy
instead of dying with SIGILL on the first decode. A portable build (``--portable``) keeps
its CPU backends as separate libraries beside libllama; ``load`` registers the best one
this CPU runs (ggml's own scoring).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _ffi_build
from .cpu_features import describe, host_cpu_features

logger = logging.getLogger("kolosal.libllama")

_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_GGML_LOG_LEVEL_CONT = 5


class LibraryNotFoundError(RuntimeError):
    """libllama has not been built (or cannot be found)."""


@dataclass(frozen=True, slots=True)
class NativeLibrary:
    ffi: Any
    lib: Any
    lib_dir: Path


_lock = threading.Lock()
_native: NativeLibrary | None = None


def cache_dir() -> Path:
    explicit = os.environ.get("KOLOSAL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kolosal"


def find_library_dir() -> Path:
    explicit = os.environ.get("KOLOSAL_LIBLLAMA")
    if explicit:
        path = Path(explicit).expanduser()
        lib_dir = path if path.is_dir() else path.parent
        if not any(lib_dir.glob("libllama.*")):
            raise LibraryNotFoundError(f"KOLOSAL_LIBLLAMA={explicit}: no libllama there")
        return lib_dir
    latest = cache_dir() / "builds" / "latest.json"
    if latest.is_file():
        build = json.loads(latest.read_text())
        lib_dir = Path(build["lib_dir"])
        if any(lib_dir.glob("libllama.*")):
            _check_cpu(build.get("cpu_features") or [], lib_dir)
            return lib_dir
    raise LibraryNotFoundError(
        "libllama is not built yet. Run `python build_llama.py` (add --cuda/--metal/--vulkan "
        "for a GPU build), or point KOLOSAL_LIBLLAMA at an existing libllama."
    )


def _check_cpu(required: list[str], lib_dir: Path) -> None:
    """Refuse a native build made for CPU features this CPU lacks."""
    host = host_cpu_features()
    missing = sorted(set(required) - host) if host else []
    if missing:
        raise LibraryNotFoundError(
            f"the cached libllama in {lib_dir} was built for a CPU with {' '.join(missing)}, "
            f"which this CPU ({describe(host)}) lacks. Run `python build_llama.py` here (a "
            "native build for this CPU), or `python build_llama.py --portable` for a build "
            "that runs on any CPU.")


def find_include_dir(lib_dir: Path) -> Path:
    explicit = os.environ.get("KOLOSAL_LLAMA_INCLUDE")
    include_dir = Path(explicit).expanduser() if explicit else lib_dir.parent / "include"
    if not (include_dir / "llama.h").is_file():
        raise LibraryNotFoundError(f"llama.h not found in {include_dir}; set KOLOSAL_LLAMA_INCLUDE")
    return include_dir


def _import_module(lib_dir: Path) -> Any:
    include_dir = find_include_dir(lib_dir)
    key = _ffi_build.module_key(lib_dir, include_dir)
    module_dir = lib_dir.parent / "ffi" / key
    found = list(module_dir.glob(f"{_ffi_build.MODULE_NAME}*.so")) if module_dir.is_dir() else []
    module_path = found[0] if found else None
    if module_path is None:
        logger.info("compiling the cffi bindings against %s", include_dir / "llama.h")
        module_path = _ffi_build.compile_module(lib_dir, include_dir, module_dir)
    spec = importlib.util.spec_from_file_location(_ffi_build.MODULE_NAME, module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # cffi checks every declared struct layout here
    return module


# What libllama logs (as errors and warnings) about a decode we stopped on purpose
# (Context.interrupt; GGML_STATUS_ABORTED is 1): expected, so debug lines.
_INTERRUPTED = ("failed to compute graph, compute status: 1", "removing memory module entries",
                "graph_compute_async failed with error 1", "failed to decode, ret = 2")


def _install_callbacks(ffi: Any) -> None:
    pending: list[str] = []
    pending_level = [logging.INFO]

    def _log(level: int, text: Any, _user_data: Any) -> None:
        # libllama logs in fragments; CONT continues the previous line.
        message = ffi.string(text).decode("utf-8", "replace")
        if level != _GGML_LOG_LEVEL_CONT:
            pending_level[0] = _LEVELS.get(level, logging.INFO)
        pending.append(message)
        if message.endswith("\n"):
            line = "".join(pending).rstrip()
            pending.clear()
            if line:
                quiet = any(text in line for text in _INTERRUPTED)
                logger.log(logging.DEBUG if quiet else pending_level[0], "%s", line)

    def _progress(progress: float, user_data: Any) -> bool:
        callback = ffi.from_handle(user_data)
        return bool(callback(progress))

    # cffi's decorators, applied as calls: the functions keep their types.
    ffi.def_extern(name="kolosal_log_callback")(_log)
    ffi.def_extern(name="kolosal_progress_callback", error=True)(_progress)


def load() -> NativeLibrary:
    """Load libllama and its bindings (first call compiles them if needed)."""
    global _native
    with _lock:
        if _native is None:
            lib_dir = find_library_dir()
            module = _import_module(lib_dir)
            ffi, lib = module.ffi, module.lib
            _install_callbacks(ffi)
            lib.llama_log_set(lib.kolosal_log_callback, ffi.NULL)
            if _ffi_build.is_portable(lib_dir):
                lib.ggml_backend_load_all_from_path(str(lib_dir).encode())
            lib.llama_backend_init()
            _native = NativeLibrary(ffi=ffi, lib=lib, lib_dir=lib_dir)
        return _native
