"""Compile the cffi API-mode module that binds native/llama_cdef.h against the real llama.h.

API mode means a C compiler sees our declarations next to the pinned header: a wrong
function signature is a compile error (the flags below turn the relevant warnings into
errors) and a wrong struct layout is refused by cffi when the module loads.
The module is cached next to the libllama build, keyed by everything that shapes it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from .cpu_features import host_cpu_features

MODULE_NAME = "_kolosal_llama"
NATIVE_DIR = Path(os.environ.get("KOLOSAL_NATIVE_DIR", Path(__file__).resolve().parents[2] / "native"))
CDEF_PATH = NATIVE_DIR / "llama_cdef.h"
HELPERS_PATH = NATIVE_DIR / "kolosal_helpers.c"
# -fno-trapping-math: lets the compiler turn the helpers' float compares into vector selects
# (nothing here relies on floating-point traps). -fno-wrapv undoes the -fwrapv that Python's
# own CFLAGS add to every extension: with it gcc does not vectorize the exp polynomial
# (measured: the sum of exponentials over a 262k row 0.09 ms without, 0.47 ms with); nothing
# here relies on signed overflow wrapping.
STRICT_FLAGS = ["-O3", "-fno-trapping-math", "-fno-wrapv", "-Werror=incompatible-pointer-types",
                "-Werror=int-conversion", "-Werror=implicit-function-declaration", "-Werror=return-type"]
NATIVE_FLAG = "-march=native"  # not for a portable build: its module may move to another CPU


def is_portable(lib_dir: Path) -> bool:
    """A ``build_llama.py --portable`` build: CPU backends to choose from at load time."""
    return any(lib_dir.glob("libggml-cpu-*"))


def _strip_comments(text: str) -> str:
    """cffi's parser accepts no preprocessor input; drop /* */ comments conservatively."""
    out, i = [], 0
    while i < len(text):
        start = text.find("/*", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        end = text.find("*/", start + 2)
        i = len(text) if end < 0 else end + 2
    return "".join(out)


def module_key(lib_dir: Path, include_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in (CDEF_PATH, HELPERS_PATH, include_dir / "llama.h", lib_dir / "libllama.so"):
        if path.exists():
            stat = path.stat()
            digest.update(path.read_bytes() if path.suffix in (".h", ".c")
                          else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(sys.version.encode())
    digest.update(" ".join(STRICT_FLAGS).encode())
    if not is_portable(lib_dir):  # compiled -march=native: made on another CPU, it may not run here
        digest.update(" ".join(sorted(host_cpu_features())).encode())
    digest.update((sysconfig.get_config_var("EXT_SUFFIX") or "").encode())
    return digest.hexdigest()[:16]


def compile_module(lib_dir: Path, include_dir: Path, out_dir: Path) -> Path:
    """Compile the module into out_dir (atomically) and return the .so path."""
    import cffi

    ffibuilder = cffi.FFI()
    ffibuilder.cdef(_strip_comments(CDEF_PATH.read_text()))
    ffibuilder.set_source(
        MODULE_NAME,
        '#include "llama.h"\n' + HELPERS_PATH.read_text(),
        include_dirs=[str(include_dir)],
        library_dirs=[str(lib_dir)],
        # ggml: the backend registry (ggml_backend_load_all_from_path) for portable builds
        libraries=["llama", "ggml"] if any(lib_dir.glob("libggml.*")) else ["llama"],
        extra_compile_args=STRICT_FLAGS + ([] if is_portable(lib_dir) else [NATIVE_FLAG]),
        extra_link_args=[f"-Wl,-rpath,{lib_dir}"],
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="ffi-", dir=out_dir.parent))
    try:
        built = Path(ffibuilder.compile(tmpdir=str(staging), verbose=False))
        final_dir = Path(tempfile.mkdtemp(prefix="ready-", dir=out_dir.parent))
        shutil.move(str(built), final_dir / built.name)
        try:
            final_dir.rename(out_dir)
        except OSError:  # another process won the race; its module is as good as ours
            shutil.rmtree(final_dir, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return next(out_dir.glob(f"{MODULE_NAME}*.so"))
