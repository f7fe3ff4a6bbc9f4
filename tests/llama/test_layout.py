"""Prove the cffi declarations match the pinned llama.h: a C program compiled against the
header prints sizeof/offsetof of every declared struct and field, and we compare them with
what cffi uses. (cffi's API mode also refuses a mismatched layout when the module loads.)"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kolosal.llama.loader import find_include_dir, load

STRUCTS = ["llama_token_data", "llama_token_data_array", "llama_batch", "llama_model_params",
           "llama_sampler_seq_config", "llama_context_params", "llama_logit_bias",
           "llama_sampler_chain_params"]


def test_struct_layouts_match_header(tmp_path: Path) -> None:
    native = load()
    ffi = native.ffi
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.fail("a C compiler is required to check the layouts")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"', "int main(void) {"]
    expected = []
    for name in STRUCTS:
        ctype = ffi.typeof(f"struct {name}")
        lines.append(f'printf("%zu\\n", sizeof(struct {name}));')
        expected.append(ffi.sizeof(ctype))
        for field_name, field in ctype.fields:
            lines.append(f'printf("%zu\\n", offsetof(struct {name}, {field_name}));')
            expected.append(field.offset)
    lines += ["return 0;", "}"]
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines))
    binary = tmp_path / "layout"
    include = find_include_dir(native.lib_dir)
    subprocess.run([compiler, str(source), "-I", str(include), "-o", str(binary)], check=True)
    actual = [int(x) for x in subprocess.run([str(binary)], check=True, capture_output=True,
                                              text=True).stdout.split()]
    assert actual == expected


def test_declared_fields_cover_the_whole_struct() -> None:
    """Every field of the header's llama_context_params is declared (none skipped)."""
    ffi = load().ffi
    fields = dict(ffi.typeof("struct llama_context_params").fields)
    for name in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_threads", "flash_attn_type",
                 "swa_full", "kv_unified", "samplers", "ctx_other"):
        assert name in fields
    model_fields = dict(ffi.typeof("struct llama_model_params").fields)
    for name in ("n_gpu_layers", "main_gpu", "load_mode", "lazy_mode", "load_mtp"):
        assert name in model_fields
