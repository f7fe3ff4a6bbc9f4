#!/usr/bin/env python3
"""Build libllama (+ ggml) from pinned llama.cpp source into a cache outside the repo.

The default source is the ``vendor/llama.cpp`` tree of PyPI's llama-cpp-python sdist,
pinned by version and sha256 below.  ``--source DIR`` builds a user's own checkout.
The build lands in ``$KOLOSAL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/kolosal`` or
``~/.cache/kolosal``) under a key made of the source identity and the CMake flags, so a
second run with the same inputs finishes in well under a second.

    python build_llama.py                 # CPU build for this CPU (GGML_NATIVE on, no AMX)
    python build_llama.py --portable      # CPU build for any x86-64/ARM CPU (runtime dispatch)
    python build_llama.py --cuda          # CUDA build
    python build_llama.py --with-server   # also build llama-server (benchmark peer)
    python build_llama.py --print-lib     # print the path of the cached libllama

Only the standard library is used, so this runs before anything else is installed.

Which CPU a build is for:
- native (the default) compiles ggml for this CPU, and its cache key holds this CPU's
  instruction-set features (``kolosal/llama/cpu_features.py``): a cache copied to a CPU
  with fewer features rebuilds instead of dying with SIGILL.
- ``--portable`` builds ggml's runtime CPU dispatch (GGML_BACKEND_DL +
  GGML_CPU_ALL_VARIANTS): one CPU backend per x86 level, the best one this CPU runs chosen
  when the library loads. For images and shared installs.
- ``--no-native`` compiles for the baseline of the architecture (slow, runs anywhere).

No AMX unless ``--amx``: ggml's AMX kernels die with SIGILL on AMX CPUs (Sapphire Rapids and
later Xeons) on ggml's worker threads, which never request the kernel's XTILEDATA
permission (llama.cpp PR 26954, open). A native build compiles with ``-mno-amx-*`` so that
``-march=native`` does not enable them, and a portable build leaves out its AMX variant.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

# The one place the pinned source lives.
PINNED_PACKAGE = "llama-cpp-python"
PINNED_VERSION = "0.3.36"
PINNED_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PINNED_SDIST = f"llama_cpp_python-{PINNED_VERSION}.tar.gz"
VENDOR_PREFIX = f"llama_cpp_python-{PINNED_VERSION}/vendor/llama.cpp/"

LIB_NAMES = {"Linux": "libllama.so", "Darwin": "libllama.dylib", "Windows": "llama.dll"}
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
# Compiler flags that take AMX out of -march=native (each one kept only where the compiler
# knows it), and the name part of the AMX CPU variant of a portable build.
AMX_OFF_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16", "-mno-amx-fp16",
                 "-mno-amx-complex")
AMX_VARIANTS = ("sapphirerapids",)


def _load_cpu_features() -> types.ModuleType:
    """kolosal/llama/cpu_features.py, loaded by path: nothing is installed yet."""
    path = Path(__file__).resolve().parent / "kolosal" / "llama" / "cpu_features.py"
    spec = importlib.util.spec_from_file_location("_kolosal_cpu_features", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_features = _load_cpu_features()


class BuildError(RuntimeError):
    """A build step failed; the message tells the user what to do."""


@dataclass(frozen=True)
class BuildOptions:
    source: Path | None
    backends: tuple[str, ...]
    native: bool
    extra_cmake_args: tuple[str, ...]
    jobs: int
    with_server: bool = False
    portable: bool = False
    amx: bool = False
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())


def default_cache_dir() -> Path:
    explicit = os.environ.get("KOLOSAL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kolosal"


def log(message: str) -> None:
    print(f"[build_llama] {message}", flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_tools() -> None:
    missing = [tool for tool in ("cmake",) if shutil.which(tool) is None]
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("a C++ compiler")
    if missing:
        raise BuildError(
            "missing build tools: " + ", ".join(missing) + ". On Debian/Ubuntu: "
            "`apt-get install cmake build-essential`; on macOS: `brew install cmake` "
            "and the Xcode command line tools."
        )


# --- source ----------------------------------------------------------------------------


def fetch_pinned_source(cache_dir: Path) -> Path:
    """Download the pinned sdist with pip, verify it, unpack its llama.cpp tree."""
    source_dir = cache_dir / "src" / f"llama.cpp-{PINNED_VERSION}-{PINNED_SHA256[:12]}"
    if (source_dir / "include" / "llama.h").is_file():
        return source_dir
    download_dir = cache_dir / "downloads"
    download_dir.mkdir(parents=True, exist_ok=True)
    sdist = download_dir / PINNED_SDIST
    if not sdist.is_file() or sha256_of(sdist) != PINNED_SHA256:
        log(f"downloading {PINNED_PACKAGE}=={PINNED_VERSION} sdist with pip")
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"{PINNED_PACKAGE}=={PINNED_VERSION}", "-d", str(download_dir)])
    actual = sha256_of(sdist)
    if actual != PINNED_SHA256:
        sdist.unlink(missing_ok=True)
        raise BuildError(f"sha256 mismatch for {sdist.name}: got {actual}, pinned {PINNED_SHA256}")
    log(f"unpacking vendor/llama.cpp from {sdist.name} (sha256 verified)")
    staging = Path(tempfile.mkdtemp(dir=cache_dir / "src" if (cache_dir / "src").exists()
                                    else _mkdir(cache_dir / "src")))
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(VENDOR_PREFIX)]
        for member in members:
            member.name = member.name[len(VENDOR_PREFIX):]
        archive.extractall(staging, members=[m for m in members if m.name], filter="data")
    staging.rename(source_dir)
    return source_dir


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_identity(source: Path | None) -> str:
    """A stable id of the source tree: the pinned hash, or a digest of a user's checkout."""
    if source is None:
        return f"pypi-{PINNED_VERSION}-{PINNED_SHA256}"
    digest = hashlib.sha256()
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    digest.update(head.stdout.encode())
    # Uncommitted edits still change the key: hash the sizes and mtimes of the C/C++ tree.
    for sub in ("include", "src", "ggml"):
        for path in sorted((source / sub).rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"dir-{digest.hexdigest()}"


# --- build -----------------------------------------------------------------------------


def is_x86() -> bool:
    return platform.machine().lower() in X86_MACHINES


def compiler_accepts(compiler: str, flag: str) -> bool:
    """Whether ``compiler`` knows ``flag`` (an unknown -m option is an error)."""
    try:
        result = subprocess.run([compiler, flag, "-x", "c", "-E", "-o", os.devnull, os.devnull],
                                capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


@functools.cache
def amx_off_flags() -> dict[str, str]:
    """CMAKE_C_FLAGS / CMAKE_CXX_FLAGS that keep -march=native from enabling AMX: an
    explicit -mno-* wins over what -march implies, whatever their order."""
    compilers = {"C": os.environ.get("CC") or "cc", "CXX": os.environ.get("CXX") or "c++"}
    return {lang: " ".join(flag for flag in AMX_OFF_FLAGS if compiler_accepts(compiler, flag))
            for lang, compiler in compilers.items()}


def cmake_flags(options: BuildOptions, with_server: bool) -> list[str]:
    native = options.native and not options.portable
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        f"-DGGML_NATIVE={'ON' if native else 'OFF'}",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # never download anything during the build
        # libllama finds its ggml siblings next to itself once copied into the cache.
        f"-DCMAKE_BUILD_RPATH={'@loader_path' if platform.system() == 'Darwin' else '$ORIGIN'}",
        f"-DLLAMA_BUILD_COMMON={'ON' if with_server else 'OFF'}",
        f"-DLLAMA_BUILD_TOOLS={'ON' if with_server else 'OFF'}",
        f"-DLLAMA_BUILD_SERVER={'ON' if with_server else 'OFF'}",
    ]
    if options.portable:
        flags += ["-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"]
    if native and is_x86() and not options.amx:
        flags += [f"-DCMAKE_{lang}_FLAGS={value}" for lang, value in amx_off_flags().items() if value]
    backend_flags = {"cuda": "-DGGML_CUDA=ON", "vulkan": "-DGGML_VULKAN=ON",
                     "metal": "-DGGML_METAL=ON", "blas": "-DGGML_BLAS=ON"}
    flags += [backend_flags[name] for name in options.backends]
    if "metal" not in options.backends and platform.system() == "Darwin":
        flags.append("-DGGML_METAL=OFF")
    flags += list(options.extra_cmake_args)
    return flags


def target_cpu_features(options: BuildOptions) -> list[str]:
    """The CPU features a build requires: this CPU's for a native build, none otherwise."""
    if options.native and not options.portable:
        return sorted(cpu_features.host_cpu_features())
    return []


def build_key(options: BuildOptions) -> str:
    identity = source_identity(options.source)
    payload = json.dumps({"source": identity, "flags": cmake_flags(options, False),
                          "system": platform.system(), "machine": platform.machine(),
                          "cpu": target_cpu_features(options)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run(command: list[str], cwd: Path | None = None) -> None:
    """Run a command, streaming its output so the user sees progress."""
    log("$ " + " ".join(command))
    try:
        result = subprocess.run(command, cwd=cwd, check=False)
    except FileNotFoundError as error:
        raise BuildError(f"{command[0]} not found: {error}") from error
    if result.returncode != 0:
        raise BuildError(f"command failed with exit code {result.returncode}: {' '.join(command)}")


def cmake_build(source: Path, build_dir: Path, flags: list[str], targets: list[str],
                jobs: int) -> None:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *flags])
    run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs),
         "--target", *targets])


def find_built_libraries(build_dir: Path) -> list[Path]:
    suffixes = (".so", ".dylib", ".dll")
    found = [p for p in build_dir.rglob("*") if p.is_file() and
             (p.suffix in suffixes or ".so." in p.name) and
             (p.name.startswith(("libllama", "libggml", "llama", "ggml")))]
    return found


def is_amx_variant(library: Path) -> bool:
    """A portable build's CPU variant compiled with AMX (libggml-cpu-sapphirerapids.so)."""
    return any(library.name.startswith(f"libggml-cpu-{name}.") for name in AMX_VARIANTS)


def install_libraries(build_dir: Path, lib_dir: Path, amx: bool) -> None:
    lib_dir.mkdir(parents=True, exist_ok=True)
    for library in find_built_libraries(build_dir):
        if amx or not is_amx_variant(library):
            shutil.copy2(library, lib_dir / library.name, follow_symlinks=False)


def build(options: BuildOptions) -> Path:
    """Build (or reuse) libllama; return the directory holding the shared libraries."""
    started = time.monotonic()
    cache_dir = options.cache_dir
    source = options.source.resolve() if options.source else None
    if source is not None and not (source / "include" / "llama.h").is_file():
        raise BuildError(f"{source} does not look like a llama.cpp checkout (no include/llama.h)")
    key = build_key(options)
    out_dir = cache_dir / "builds" / key
    lib_dir = out_dir / "lib"
    manifest_path = out_dir / "manifest.json"
    lib_name = LIB_NAMES.get(platform.system(), "libllama.so")

    if not manifest_path.is_file():
        require_tools()
        source = source or fetch_pinned_source(cache_dir)
        flags = cmake_flags(options, False)
        log(f"building libllama into {out_dir} (this takes several minutes on a small machine)")
        cmake_build(source, out_dir / "cmake-build", flags, ["llama"], options.jobs)
        install_libraries(out_dir / "cmake-build", lib_dir, options.amx)
        include_dir = out_dir / "include"
        include_dir.mkdir(parents=True, exist_ok=True)
        for header in (source / "include").glob("*.h"):
            shutil.copy2(header, include_dir / header.name)
        for header in (source / "ggml" / "include").glob("*.h"):
            shutil.copy2(header, include_dir / header.name)
        manifest = {"source": str(source), "source_identity": source_identity(options.source),
                    "flags": flags, "backends": list(options.backends), "lib_dir": str(lib_dir),
                    "library": str(lib_dir / lib_name), "built_at": time.time(),
                    **_target_fields(options)}
        manifest_path.write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out_dir / "cmake-build", ignore_errors=True)
    else:
        log(f"cached build found: {out_dir}")

    if options.with_server:
        build_server(options, out_dir)

    latest = cache_dir / "builds" / "latest.json"
    latest.write_text(json.dumps({"key": key, "lib_dir": str(lib_dir),
                                  "library": str(lib_dir / lib_name), **_target_fields(options)},
                                 indent=2))
    log(f"libllama ready: {lib_dir / lib_name} ({time.monotonic() - started:.1f}s)")
    return lib_dir


def _target_fields(options: BuildOptions) -> dict[str, object]:
    """What the loader checks before using a build: the CPU features it requires."""
    return {"portable": options.portable, "amx": options.amx,
            "cpu_features": target_cpu_features(options)}


def build_server(options: BuildOptions, out_dir: Path) -> Path:
    """Build llama-server from the same source and flags: a benchmark peer only."""
    binary = out_dir / "server" / "bin" / "llama-server"
    if binary.is_file():
        log(f"llama-server ready: {binary}")
        return binary
    require_tools()
    source = options.source.resolve() if options.source else fetch_pinned_source(options.cache_dir)
    build_dir = out_dir / "server"
    cmake_build(source, build_dir, cmake_flags(options, True), ["llama-server"], options.jobs)
    if not options.amx:  # the same rule as install_libraries: no AMX variant to choose
        for library in (build_dir / "bin").glob("libggml-cpu-*"):
            if is_amx_variant(library):
                library.unlink()
    log(f"llama-server ready: {binary}")
    return binary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="use this llama.cpp checkout instead of the pinned sdist")
    parser.add_argument("--cuda", action="store_true", help="build the CUDA backend")
    parser.add_argument("--vulkan", action="store_true", help="build the Vulkan backend")
    parser.add_argument("--metal", action="store_true", help="build the Metal backend")
    parser.add_argument("--blas", action="store_true", help="build with a BLAS backend")
    parser.add_argument("--no-native", action="store_true",
                        help="baseline build for the architecture (GGML_NATIVE=OFF)")
    parser.add_argument("--portable", action="store_true",
                        help="runtime CPU dispatch: one CPU backend per x86 level, the best chosen "
                             "at load (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS); for images")
    parser.add_argument("--amx", action="store_true",
                        help="keep ggml's AMX kernels (they die with SIGILL on AMX CPUs: llama.cpp "
                             "PR 26954); off by default")
    parser.add_argument("--cmake-arg", action="append", default=[], help="extra -D flag for CMake")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--with-server", action="store_true",
                        help="also build llama-server from the same source (benchmark peer)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--print-lib", action="store_true", help="print the library path and exit 0")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    backends = tuple(name for name in ("cuda", "vulkan", "metal", "blas") if getattr(args, name))
    return BuildOptions(source=args.source, backends=backends, native=not args.no_native,
                        extra_cmake_args=tuple(args.cmake_arg), jobs=args.jobs,
                        with_server=args.with_server, portable=args.portable, amx=args.amx,
                        cache_dir=args.cache_dir or default_cache_dir())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        lib_dir = build(options_from_args(args))
    except BuildError as error:
        print(f"build_llama.py: error: {error}", file=sys.stderr)
        return 1
    if args.print_lib:
        print(lib_dir / LIB_NAMES.get(platform.system(), "libllama.so"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
