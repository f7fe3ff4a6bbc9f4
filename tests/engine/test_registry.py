"""Several engines under one memory budget: estimates, refusal, LRU eviction of idle
engines, pinning, idle unload with transparent reload, failed loads, load/unload leaks."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kolosal.engine import (
    EngineConfig,
    EngineRegistry,
    EngineState,
    InsufficientMemoryError,
    MemoryPolicy,
    estimate_memory,
    parse_size,
)
from kolosal.engine import registry as registry_module
from kolosal.gguf_header import InvalidModelFileError, read_gguf_metadata
from kolosal.llama import ModelLoadError

from .helpers import greedy, run

PROMPT = "The quick brown fox"


def small(engine_id: str, model_path: Path, **kwargs: object) -> EngineConfig:
    return EngineConfig(engine_id, str(model_path), n_ctx=512, n_parallel=2, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines become evictable as soon as they are idle (the 2 s grace is for HTTP races)."""
    monkeypatch.setattr(registry_module, "EVICTION_GRACE_S", 0.0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_parse_size() -> None:
    assert parse_size("8GiB") == 8 << 30
    assert parse_size("512 MB") == 512_000_000
    assert parse_size("1.5k") == 1500
    assert parse_size(1234) == parse_size("1234") == 1234
    for bad in ("", "lots", "5 parsecs", "-1G"):
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
    engines = EngineRegistry(MemoryPolicy(max_memory=int(one * 1.5)))
    try:
        first = await engines.add(small("a", model_path))
        with pytest.raises(InsufficientMemoryError, match="--evict-idle") as caught:
            await engines.add(small("b", model_path))
        assert caught.value.fits_alone
        assert first.state == EngineState.READY and [e.engine_id for e in engines.list()] == ["a"]
        assert engines.memory_in_use() == one
    finally:
        await engines.close_all()


async def test_lru_idle_engine_is_evicted_and_reloads_on_its_next_request(
        model_path: Path, no_grace: None) -> None:
    one = estimate_memory(small("a", model_path)).total
    engines = EngineRegistry(MemoryPolicy(max_memory=int(one * 2.5), evict_idle=True))
    try:
        a = await engines.add(small("a", model_path))
        expected = (await run(a, PROMPT, greedy(6))).text
        b = await engines.add(small("b", model_path))
        await run(b, PROMPT, greedy(2))  # b is now more recently used than a
        await engines.add(small("c", model_path))
        assert a.state == EngineState.UNLOADED and b.state == EngineState.READY
        assert engines.memory_in_use() <= engines.policy.max_memory
        # a request for the evicted engine reloads it (evicting b, now the LRU) and works
        again = await engines.acquire("a")
        assert again is a and a.state == EngineState.READY and b.state == EngineState.UNLOADED
        assert (await run(a, PROMPT, greedy(6))).text == expected
    finally:
        await engines.close_all()


async def test_pinned_and_busy_engines_are_never_evicted(model_path: Path, no_grace: None) -> None:
    one = estimate_memory(small("a", model_path)).total
    engines = EngineRegistry(MemoryPolicy(max_memory=int(one * 1.5), evict_idle=True))
    try:
        pinned = await engines.add(small("pinned", model_path, pinned=True))
        with pytest.raises(InsufficientMemoryError, match="no loaded engine is idle and unpinned"):
            await engines.add(small("other", model_path))
        assert pinned.state == EngineState.READY
        await engines.remove("pinned")

        busy = await engines.add(small("busy", model_path))
        ids = await busy.tokenize(PROMPT)
        stream = busy.generate(ids, greedy(200, ignore_eos=True), "long")
        await stream.__anext__()  # running: not idle
        with pytest.raises(InsufficientMemoryError):
            await engines.add(small("other", model_path))
        assert busy.state == EngineState.READY
        await stream.aclose()
        await engines.add(small("other", model_path))  # idle now: evicted
        assert busy.state == EngineState.UNLOADED
    finally:
        await engines.close_all()


async def test_idle_engine_unloads_after_keep_alive_and_reloads(model_path: Path) -> None:
    engines = EngineRegistry()
    try:
        engine = await engines.add(small("sleepy", model_path, keep_alive_s=0.3))
        keeper = await engines.add(small("keeper", model_path, keep_alive_s=0.3, pinned=True))
        expected = (await run(engine, PROMPT, greedy(6))).text
        assert await engines.unload_idle() == []  # just used
        await asyncio.sleep(0.5)
        assert await engines.unload_idle() == ["sleepy"]
        assert engine.state == EngineState.UNLOADED and keeper.state == EngineState.READY
        assert engine.stats() == {}  # model, context and thread are gone
        reloaded = await engines.acquire("sleepy")
        assert reloaded.state == EngineState.READY
        assert (await run(reloaded, PROMPT, greedy(6))).text == expected
    finally:
        await engines.close_all()


async def test_concurrent_requests_for_an_unloaded_engine_share_one_reload(model_path: Path) -> None:
    engines = EngineRegistry()
    try:
        engine = await engines.add(small("shared-reload", model_path))
        await engine.unload("test")
        acquired = await asyncio.gather(*(engines.acquire("shared-reload") for _ in range(4)))
        assert all(e is engine for e in acquired) and engine.state == EngineState.READY
        results = await asyncio.gather(*(run(engine, PROMPT, greedy(4), f"r{i}") for i in range(4)))
        assert len({r.text for r in results}) == 1
    finally:
        await engines.close_all()


async def test_failed_load_is_listed_with_its_reason(model_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    with model_path.open("rb") as handle:  # header and metadata whole, tensor data cut off
        broken.write_bytes(handle.read(10_000_000))
    engines = EngineRegistry()
    try:
        with pytest.raises(ModelLoadError):
            await engines.add(small("broken", broken))
        [engine] = engines.list()
        assert engine.state == EngineState.FAILED and engine.error
        # a healthy engine beside it loads and serves
        healthy = await engines.add(small("healthy", model_path))
        assert (await run(healthy, PROMPT, greedy(3))).finish is not None
    finally:
        await engines.close_all()


async def test_load_unload_cycles_do_not_leak(model_path: Path) -> None:
    """100 load/unload cycles (model, context, batch, scheduler thread each time): the
    process's RSS and thread count come back."""
    engines = EngineRegistry()
    config = EngineConfig("cycle", str(model_path), n_ctx=256, n_parallel=1, use_mmap=True)

    async def cycle() -> None:
        engine = await engines.add(config)
        assert (await run(engine, [2, 651, 6037], greedy(1))).finish is not None
        await engines.remove("cycle")

    for _ in range(5):  # warm-up: allocator pools, page cache, first-use buffers
        await cycle()
    import threading

    rss_before, threads_before = rss_bytes(), threading.active_count()
    for _ in range(100):
        await cycle()
    growth = rss_bytes() - rss_before
    assert threading.active_count() == threads_before
    assert growth < 40 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 100 load/unload cycles"
