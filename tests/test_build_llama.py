"""Builds that run on the machines users have (issue 23): no AMX kernels unless asked, a
native build keyed by the CPU it was made for, a portable build without its AMX variant.

The AMX checks look at results, not at our own flag lists: the compiler's predefined macros
for an AMX CPU, and the tile instructions in the built library (so a CI machine of any CPU
catches a regression)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import build_llama
from kolosal.llama import loader

AVX2_HOST = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 hypervisor\n"
AMX_HOST = AVX2_HOST.rstrip("\n") + " avx512f avx512bw avx512vnni amx_tile amx_int8 amx_bf16\n"
TILE_INSTRUCTIONS = ("tilezero", "tileloadd", "tdpbssd", "tdpbf16ps", "ldtilecfg")


def options(**changes: object) -> build_llama.BuildOptions:
    args = build_llama.parse_args([])
    base = build_llama.options_from_args(args)
    fields = {**base.__dict__, **changes}
    return build_llama.BuildOptions(**fields)


@pytest.fixture
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point the feature set the build key and the loader read at a file of the test's."""
    path = tmp_path / "cpuinfo"

    def host(text: str) -> None:
        path.write_text(text)
        monkeypatch.setattr(build_llama.cpu_features, "CPUINFO", path)
        monkeypatch.setattr("kolosal.llama.cpu_features.CPUINFO", path)
    return host


def macros(compiler: str, *flags: str) -> str:
    done = subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c", os.devnull],
                          capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.skipif(not build_llama.is_x86(), reason="AMX is x86 only")
def test_the_amx_off_flags_take_amx_out_of_an_amx_cpus_march() -> None:
    compiler = os.environ.get("CC") or "cc"
    assert "__AMX_INT8__" in macros(compiler, "-march=sapphirerapids")
    off = build_llama.amx_off_flags()["C"].split()
    assert "-mno-amx-tile" in off
    on_amx = macros(compiler, "-march=sapphirerapids", *off)
    assert "__AMX" not in on_amx and "__AVX512VNNI__" in on_amx  # the rest of the CPU stays


@pytest.mark.skipif(not build_llama.is_x86(), reason="AMX is x86 only")
def test_cmake_flags_native_portable_and_amx() -> None:
    native = build_llama.cmake_flags(options(), False)
    assert "-DGGML_NATIVE=ON" in native
    assert any(f.startswith("-DCMAKE_C_FLAGS=") and "-mno-amx-tile" in f for f in native)
    assert any(f.startswith("-DCMAKE_CXX_FLAGS=") and "-mno-amx-tile" in f for f in native)
    assert not any("amx" in f for f in build_llama.cmake_flags(options(amx=True), False))
    portable = build_llama.cmake_flags(options(portable=True), False)
    assert "-DGGML_NATIVE=OFF" in portable
    assert "-DGGML_BACKEND_DL=ON" in portable and "-DGGML_CPU_ALL_VARIANTS=ON" in portable


def test_the_cache_key_of_a_native_build_holds_the_cpu_features(cpuinfo: Callable[[str], None]) -> None:
    cpuinfo(AMX_HOST)
    amx_key = build_llama.build_key(options())
    amx_portable = build_llama.build_key(options(portable=True))
    cpuinfo(AVX2_HOST)
    avx2_key = build_llama.build_key(options())
    assert avx2_key != amx_key
    assert build_llama.build_key(options(portable=True)) == amx_portable  # runs anywhere
    cpuinfo(AVX2_HOST.replace(" hypervisor", ""))  # not an instruction set: the same build
    assert build_llama.build_key(options()) == avx2_key


def test_a_cache_made_for_more_features_is_not_reused(cpuinfo: Callable[[str], None], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cpuinfo(AMX_HOST)
    made_there = options(cache_dir=cache)
    out = cache / "builds" / build_llama.build_key(made_there)
    (out / "lib").mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    assert build_llama.build(made_there) == out / "lib"  # the AMX host reuses its own build

    def would_build() -> None:
        raise build_llama.BuildError("would build")
    monkeypatch.setattr(build_llama, "require_tools", would_build)
    cpuinfo(AVX2_HOST)
    with pytest.raises(build_llama.BuildError, match="would build"):
        build_llama.build(options(cache_dir=cache))


def test_the_loader_refuses_a_native_build_for_more_features(cpuinfo: Callable[[str], None], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    lib_dir = tmp_path / "builds" / "k" / "lib"
    lib_dir.mkdir(parents=True)
    (lib_dir / "libllama.so").write_bytes(b"")
    (tmp_path / "builds" / "latest.json").write_text(json.dumps(
        {"lib_dir": str(lib_dir), "cpu_features": ["avx2", "amx_tile", "amx_int8"]}))
    monkeypatch.setenv("KOLOSAL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KOLOSAL_LIBLLAMA", raising=False)
    cpuinfo(AMX_HOST)
    assert loader.find_library_dir() == lib_dir
    cpuinfo(AVX2_HOST)
    with pytest.raises(loader.LibraryNotFoundError, match="amx_int8 amx_tile, which this CPU"):
        loader.find_library_dir()


def test_a_portable_install_leaves_the_amx_variant_out(tmp_path: Path) -> None:
    built = tmp_path / "cmake-build" / "bin"
    built.mkdir(parents=True)
    for name in ("libggml-cpu-haswell.so", "libggml-cpu-sapphirerapids.so", "libllama.so"):
        (built / name).write_bytes(b"")
    build_llama.install_libraries(tmp_path / "cmake-build", tmp_path / "lib", amx=False)
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["libggml-cpu-haswell.so", "libllama.so"]
    build_llama.install_libraries(tmp_path / "cmake-build", tmp_path / "amx", amx=True)
    assert (tmp_path / "amx" / "libggml-cpu-sapphirerapids.so").is_file()


@pytest.mark.model
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_the_built_library_has_no_tile_instructions() -> None:
    """Whatever this CPU is, the library we built (default flags) holds no AMX code."""
    lib_dir = loader.find_library_dir()
    libraries = sorted(lib_dir.glob("libggml-cpu*.so"))
    assert libraries, f"no ggml CPU backend in {lib_dir}"
    for library in libraries:
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                                 capture_output=True, text=True, check=True).stdout
        found = {name: listing.count(name) for name in TILE_INSTRUCTIONS if name in listing}
        assert not found, f"{library.name} holds AMX tile instructions: {found}"
