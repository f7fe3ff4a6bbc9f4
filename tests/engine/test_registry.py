"""Several engines under one memory budget: estimates, refusal, LRU eviction of idle
engines, pinning, idle unload with transparent reload, failed loads, load/unload leaks."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kolosal.engine import (
    EngineConfig,
    EngineRegistry,
    EngineReloadError,
    EngineState,
    InsufficientMemoryError,
    MemoryPolicy,
    ModelLoadFailedError,
    estimate_memory,
    parse_size,
)
from kolosal.gguf_header import InvalidModelFileError, read_gguf_metadata

from ..waiting import until_async
from .helpers import Result, greedy, run

PROMPT = "The quick brown fox"


@contextlib.asynccontextmanager
async def fresh_registry(policy: MemoryPolicy | None = None) -> AsyncIterator[EngineRegistry]:
    """A registry of the test's own (the shared one holds the engine tests' engine)."""
    engines = EngineRegistry(policy)
    try:
        yield engines
    finally:
        await engines.close_all()


def small(engine_id: str, model_path: Path, **kwargs: object) -> EngineConfig:
    return EngineConfig(engine_id, str(model_path), n_ctx=512, n_parallel=2, **kwargs)  # type: ignore[arg-type]


async def run_on(engines: EngineRegistry, engine_id: str, max_tokens: int,
                 request_id: str = "test") -> Result:
    """One greedy request through a lease, as a handler makes it (reloading if need be)."""
    async with engines.lease(engine_id) as engine:
        return await run(engine, PROMPT, greedy(max_tokens), request_id)


def rss_bytes() -> int:
    """Resident memory once freed memory went back: Python's garbage collected and glibc's
    free lists trimmed (memory freed by threads sits in per-thread arenas otherwise, which
    after a long test session can look like a leak of a few hundred KiB a cycle)."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_parse_size() -> None:
    assert parse_size("8GiB") == 8 << 30
    assert parse_size("512 MB") == 512_000_000
    assert parse_size("1.5k") == 1500
    assert parse_size(1234) == parse_size("1234") == 1234
    for bad in ("", "lots", "5 parsecs", "-1G", -1):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_memory_estimate_from_gguf_metadata(model_path: Path) -> None:
    metadata = read_gguf_metadata(model_path)
    assert metadata["general.architecture"] == "gemma3" and metadata["gemma3.block_count"] == 18
    estimate = estimate_memory(EngineConfig("m", str(model_path), n_ctx=4096, n_parallel=8))
    assert estimate.weights == model_path.stat().st_size
    # 4096 cells x 18 layers x 1 KV head x (256 + 256) dims x 2 bytes (f16)
    assert estimate.kv_cache == 4096 * 18 * 1 * 512 * 2
    assert estimate.buffers >= 8 * 262144 * 4  # one step's logits rows
    bigger = estimate_memory(EngineConfig("m", str(model_path), n_ctx=8192, n_parallel=8))
    assert bigger.kv_cache == 2 * estimate.kv_cache
    # An embedding context outputs every token of a step: 512 rows of 262k floats (512 MiB).
    embedding = estimate_memory(EngineConfig("e", str(model_path), n_ctx=4096, n_parallel=8, embedding=True))
    assert embedding.buffers - estimate.buffers >= (512 - 8) * 262144 * 4


def test_metadata_of_a_truncated_file_is_refused(model_path: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with model_path.open("rb") as handle:  # cut inside the vocabulary
        truncated.write_bytes(handle.read(100_000))
    with pytest.raises(InvalidModelFileError, match="corrupt GGUF metadata"):
        read_gguf_metadata(truncated)


async def test_model_larger_than_the_budget_is_refused(model_path: Path) -> None:
    engines = EngineRegistry(MemoryPolicy(max_memory=parse_size("100MB")))
    with pytest.raises(InsufficientMemoryError, match="more than the whole memory budget") as caught:
        await engines.add(small("big", model_path))
    assert not caught.value.fits_alone
    assert engines.list() == []  # a refused engine is not listed


async def test_budget_refuses_a_second_engine_without_eviction(model_path: Path) -> None:
    one = estimate_memory(small("a", model_path)).total
    async with fresh_registry(MemoryPolicy(max_memory=int(one * 1.5))) as engines:
        first = await engines.add(small("a", model_path))
        with pytest.raises(InsufficientMemoryError, match="--evict-idle") as caught:
            await engines.add(small("b", model_path))
        assert caught.value.fits_alone
        assert first.state == EngineState.READY and [e.engine_id for e in engines.list()] == ["a"]
        assert engines.memory_in_use() == one


async def test_lru_idle_engine_is_evicted_and_reloads_on_its_next_request(model_path: Path) -> None:
    one = estimate_memory(small("a", model_path)).total
    async with fresh_registry(MemoryPolicy(max_memory=int(one * 2.5), evict_idle=True)) as engines:
        a = await engines.add(small("a", model_path))
        expected = (await run_on(engines, "a", 6)).text
        b = await engines.add(small("b", model_path))
        await run_on(engines, "b", 2)  # b is now more recently used than a
        await engines.add(small("c", model_path))
        assert a.state == EngineState.UNLOADED and b.state == EngineState.READY
        assert engines.memory_in_use() <= engines.policy.max_memory
        # a request for the evicted engine reloads it (evicting b, now the LRU) and works
        async with engines.lease("a") as again:
            assert again is a.engine
        assert a.state == EngineState.READY and b.state == EngineState.UNLOADED
        assert (await run_on(engines, "a", 6)).text == expected


async def test_pinned_busy_and_held_engines_are_never_evicted(model_path: Path) -> None:
    one = estimate_memory(small("a", model_path)).total
    async with fresh_registry(MemoryPolicy(max_memory=int(one * 1.5), evict_idle=True)) as engines:
        pinned = await engines.add(small("pinned", model_path, pinned=True))
        with pytest.raises(InsufficientMemoryError, match="would not free enough"):
            await engines.add(small("other", model_path))
        assert pinned.state == EngineState.READY
        await engines.remove("pinned")

        busy = await engines.add(small("busy", model_path))
        async with engines.lease("busy") as engine:
            ids = await engine.tokenize(PROMPT)
        stream = engine.generate(ids, greedy(200, ignore_eos=True), "long")
        await stream.__anext__()  # running (its lease has ended): not idle
        with pytest.raises(InsufficientMemoryError):
            await engines.add(small("other", model_path))
        assert busy.state == EngineState.READY
        await stream.aclose()
        async with engines.lease("busy"):  # held by a request that is still tokenizing
            with pytest.raises(InsufficientMemoryError):
                await engines.add(small("other", model_path))
        await engines.add(small("other", model_path))  # idle now: evicted
        assert busy.state == EngineState.UNLOADED


async def test_idle_engine_unloads_after_keep_alive_and_reloads(model_path: Path) -> None:
    async with fresh_registry() as engines:
        engine = await engines.add(small("sleepy", model_path, keep_alive_s=60))
        keeper = await engines.add(small("keeper", model_path, keep_alive_s=60, pinned=True))
        expected = (await run_on(engines, "sleepy", 6)).text
        assert await engines.unload_idle() == []  # just used
        for idle in (engine, keeper):  # a minute passes (no sleeping: the clock is not the test)
            idle.holders.last_used -= 61
        assert await engines.unload_idle() == ["sleepy"]
        assert engine.state == EngineState.UNLOADED and keeper.state == EngineState.READY
        assert engine.engine is None and engine.stats() == {}  # model, context and thread are gone
        assert (await run_on(engines, "sleepy", 6)).text == expected  # reloaded for the request
        assert engine.state == EngineState.READY


async def test_concurrent_requests_for_an_unloaded_engine_share_one_reload(model_path: Path) -> None:
    async with fresh_registry() as engines:
        entry = await engines.add(small("shared-reload", model_path))
        await engines.unload("shared-reload", "test")
        async with contextlib.AsyncExitStack() as stack:
            leased = await asyncio.gather(*(stack.enter_async_context(engines.lease("shared-reload"))
                                            for _ in range(4)))
            assert entry.state == EngineState.READY and all(e is entry.engine for e in leased)
            assert entry.holders.count == 4
        assert entry.holders.count == 0
        results = await asyncio.gather(*(run_on(engines, "shared-reload", 4, f"r{i}") for i in range(4)))
        assert len({r.text for r in results}) == 1


async def test_failed_load_is_listed_with_its_reason(model_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    with model_path.open("rb") as handle:  # header and metadata whole, tensor data cut off
        broken.write_bytes(handle.read(10_000_000))
    async with fresh_registry() as engines:
        with pytest.raises((ModelLoadFailedError, InvalidModelFileError)):  # refused by a check or the load
            await engines.add(small("broken", broken))
        [engine] = engines.list()
        assert engine.state == EngineState.FAILED and engine.error
        # a healthy engine beside it loads and serves
        await engines.add(small("healthy", model_path))
        assert (await run_on(engines, "healthy", 3)).finish is not None


async def test_load_unload_cycles_do_not_leak(model_path: Path) -> None:
    """50 load/unload cycles (model, context, batch, scheduler thread each time): the
    process's RSS and thread count come back (a leak of 320 KiB a cycle fails it)."""
    engines = EngineRegistry()
    config = EngineConfig("cycle", str(model_path), n_ctx=256, n_parallel=1, use_mmap=True)

    async def cycle() -> None:
        await engines.add(config)
        async with engines.lease("cycle") as engine:
            assert (await run(engine, [2, 651, 6037], greedy(1))).finish is not None
        await engines.remove("cycle")

    def own_threads() -> list[str]:
        # asyncio's default executor keeps a bounded pool ("asyncio_N") that grows on demand:
        # not a leak. Every other thread (engine-* scheduler threads above all) must be gone.
        return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))

    for _ in range(5):  # warm-up: allocator pools, page cache, first-use buffers
        await cycle()
    rss_before, threads_before = rss_bytes(), own_threads()
    for _ in range(50):
        await cycle()
    growth = rss_bytes() - rss_before
    assert own_threads() == threads_before
    assert "engine-cycle" not in threads_before  # the last cycle's scheduler thread is gone too
    assert growth < 16 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 50 load/unload cycles"


async def test_eviction_happens_only_when_it_makes_enough_room(model_path: Path) -> None:
    a = estimate_memory(small("a", model_path)).total
    c = estimate_memory(EngineConfig("c", str(model_path), n_ctx=8192, n_parallel=2)).total
    assert c > a
    # a (pinned) and b fit; c fits beside a alone only if b's memory were not enough to free
    async with fresh_registry(MemoryPolicy(max_memory=2 * a + (c - a) // 2, evict_idle=True)) as engines:
        await engines.add(small("a", model_path, pinned=True))
        b = await engines.add(small("b", model_path))
        with pytest.raises(InsufficientMemoryError, match="would not free enough"):
            await engines.add(EngineConfig("c", str(model_path), n_ctx=8192, n_parallel=2))
        assert b.state == EngineState.READY  # not unloaded for nothing


async def test_a_caller_that_goes_away_mid_load_does_not_fail_the_engine(model_path: Path) -> None:
    async with fresh_registry() as engines:
        entry = await engines.add(small("impatient", model_path))
        await engines.unload("impatient", "test")

        async def impatient() -> None:
            async with engines.lease("impatient"):
                pass

        waiting = asyncio.create_task(impatient())
        await until_async(lambda: entry.state == EngineState.LOADING, what="the reload")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        async with engines.lease("impatient"):  # joins the same reload, or finds it done
            pass
        assert entry.state == EngineState.READY and entry.holders.count == 0
        assert (await run_on(engines, "impatient", 2)).finish is not None


async def test_a_removal_whose_caller_goes_away_still_completes(model_path: Path) -> None:
    engines = EngineRegistry()
    entry = await engines.add(small("doomed", model_path))
    removal = asyncio.create_task(engines.remove("doomed"))
    await asyncio.sleep(0)
    removal.cancel()
    await until_async(lambda: entry.stats() == {} and entry.state != EngineState.READY,
                      what="the removal")
    assert engines.list() == [] and entry.engine is None  # thread, context and model freed
    await engines.close_all()


async def test_removal_waits_for_a_tokenize_running_on_a_worker_thread(model_path: Path) -> None:
    """Long texts tokenize on a worker thread; freeing the model under it would crash."""
    engines = EngineRegistry()
    await engines.add(small("tokenizing", model_path))
    text = "The quick brown fox jumps over the lazy dog. " * 40_000  # 1.8 MB: about 2 s on 2 cores
    async with engines.lease("tokenizing") as engine:
        tokenizing = asyncio.create_task(engine.tokenize(text))
        await asyncio.sleep(0)  # the worker thread is running
        await engines.remove("tokenizing")
    assert len(await tokenizing) > 300_000
    await engines.close_all()


async def test_a_failed_reload_leaves_the_engine_reloadable(model_path: Path, tmp_path: Path) -> None:
    link = tmp_path / "model.gguf"
    link.symlink_to(model_path)
    async with fresh_registry() as engines:
        entry = await engines.add(small("flaky", link))
        await engines.unload("flaky", "test")
        link.unlink()  # the file is being replaced
        with pytest.raises(EngineReloadError, match="could not be reloaded"):
            await run_on(engines, "flaky", 2)
        assert entry.state == EngineState.UNLOADED and entry.error and entry.holders.count == 0
        link.symlink_to(model_path)
        assert (await run_on(engines, "flaky", 2)).finish is not None
        assert entry.state == EngineState.READY and entry.error is None
