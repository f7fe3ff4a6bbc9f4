"""A GGUF that makes libllama abort (issue 16, hole 1) is refused by the isolated load check,
for that load only: the process, and an engine generating beside it, carry on.

Before the check existed these tests did not fail politely: libllama's GGML_ASSERT aborted
the pytest process itself, as it aborted the server."""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from kolosal.engine import EngineConfig, EngineRegistry, EngineState
from kolosal.engine.model_check import check_model_file
from kolosal.gguf_header import InvalidModelFileError

from ..engine.helpers import greedy, loaded, run
from . import crafted_gguf as craft

# Each trips GGML_ASSERT(hparams.n_layer_all > 0 && hparams.n_layer_all <= LLAMA_MAX_LAYERS).
ABORTING_BLOCK_COUNTS = [0, 100_000]
CHECK_LOGGER = "kolosal.engine.model_check"


@pytest.fixture(scope="module")
def crafted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crafted")


def aborting_file(model_path: Path, directory: Path, block_count: int) -> Path:
    return craft.with_value(model_path, directory / f"block_count_{block_count}.gguf",
                            craft.block_count_key(model_path), block_count)


def small(engine_id: str, path: Path) -> EngineConfig:
    return EngineConfig(engine_id, str(path), n_ctx=256, n_parallel=1)


@pytest.mark.parametrize("block_count", ABORTING_BLOCK_COUNTS)
async def test_a_file_that_aborts_libllama_is_refused(block_count: int, model_path: Path,
                                                      crafted_dir: Path) -> None:
    bad = aborting_file(model_path, crafted_dir, block_count)
    with pytest.raises(InvalidModelFileError, match=r"SIGABRT: .*GGML_ASSERT\(hparams\.n_layer_all"):
        await check_model_file(str(bad))


async def test_libllama_refusals_are_reported_with_its_reason(model_path: Path, crafted_dir: Path) -> None:
    no_kv_heads = craft.with_value(model_path, crafted_dir / "head_count_kv_0.gguf",
                                   "gemma3.attention.head_count_kv", 0)
    with pytest.raises(InvalidModelFileError, match="libllama cannot load it: check_tensor_dims: "
                                                    "tensor 'blk.0.attn_k.weight' has wrong shape"):
        await check_model_file(str(no_kv_heads))


async def test_verdicts_are_remembered_per_file_version(model_path: Path, crafted_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A reload of the same file costs a stat; a changed file is checked again."""
    copy = craft.with_value(model_path, crafted_dir / "copy.gguf", craft.block_count_key(model_path), 18)

    def child_runs() -> int:
        return sum(1 for r in caplog.records if r.name == CHECK_LOGGER and "copy.gguf" in r.getMessage())

    with caplog.at_level(logging.INFO, logger=CHECK_LOGGER):
        await check_model_file(str(copy))
        await check_model_file(str(copy))
        assert child_runs() == 1
        stat = copy.stat()
        os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        await check_model_file(str(copy))
        assert child_runs() == 2


async def test_a_file_patched_in_place_with_its_mtime_restored_is_checked_again(
        model_path: Path, crafted_dir: Path) -> None:
    """Issue 27: the verdict was keyed by name, size and mtime, so a file patched in place
    (same size, mtime put back) skipped the check and libllama aborted the server. The
    ctime, which no user call can set back, is part of the key now."""
    key = craft.block_count_key(model_path)
    patched = craft.with_value(model_path, crafted_dir / "patched.gguf", key, 18)
    await check_model_file(str(patched))  # loadable: remembered
    before = patched.stat()
    aborting = craft.with_value(model_path, crafted_dir / "aborting-source.gguf", key, 0)
    with open(aborting, "rb") as source, open(patched, "r+b") as target:  # same size, in place
        target.write(source.read(1 << 20))
    os.utime(patched, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert patched.stat().st_mtime_ns == before.st_mtime_ns and patched.stat().st_size == before.st_size
    with pytest.raises(InvalidModelFileError, match="GGML_ASSERT"):
        await check_model_file(str(patched))


async def test_not_regular_files_are_refused_before_the_child(tmp_path: Path) -> None:
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        await asyncio.wait_for(check_model_file(str(fifo)), 60)


@pytest.mark.parametrize("block_count", ABORTING_BLOCK_COUNTS)
async def test_registry_refuses_it_while_another_engine_generates(block_count: int, model_path: Path,
                                                                  crafted_dir: Path) -> None:
    bad = aborting_file(model_path, crafted_dir, block_count)
    registry = EngineRegistry()
    try:
        async with loaded(registry, small(f"healthy-{block_count}", model_path)) as healthy:
            generating = asyncio.create_task(run(healthy, [2, 651, 6037], greedy(24, ignore_eos=True)))
            with pytest.raises(InvalidModelFileError, match="GGML_ASSERT"):
                await registry.add(small("bad", bad))
            result = await generating
            assert result.error is None and result.finish is not None
            assert result.finish.usage.completion_tokens == 24
            assert (await run(healthy, [2, 651, 6037], greedy(2))).finish is not None
            [failed] = [e for e in registry.list() if e.engine_id == "bad"]
            assert failed.state == EngineState.FAILED and "GGML_ASSERT" in (failed.error or "")
    finally:
        await registry.close_all()
