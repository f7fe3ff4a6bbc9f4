"""LoRA adapters served by a real engine (real libllama, the default model, adapters written
for it by tests/lora_files.py): per-request sets beside each other, scale 0 and empty
adapters as the base model, prefix caches per set, and hostile settings."""
from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kolosal.engine import AsyncEngine, EngineConfig, EngineRegistry, InvalidRequestError
from kolosal.options import OptionValueError

from ..lora_files import write_lora
from ..near_tie import TOP_LOGPROBS, assert_same_or_near_tie, engine_steps
from .helpers import greedy, loaded, run

pytestmark = pytest.mark.model
REAL, OTHER, ZERO = 0, 1, 2  # adapter ids: random weights, other random weights, lora_b all zero
PROMPTS = ["The quick brown fox", "Water boils at", "In 1969, astronauts"]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("lora")
    write_lora(folder / "real.gguf", model_path, seed=1, strength=0.5)
    write_lora(folder / "other.gguf", model_path, seed=2, strength=0.5, targets=("attn_v",))
    write_lora(folder / "zero.gguf", model_path, seed=3, zero_b=True)
    return folder


@pytest.fixture(scope="module")
async def lora_engine(registry: EngineRegistry, model_path: Path, adapter_dir: Path
                      ) -> AsyncIterator[AsyncEngine]:
    paths = [str(adapter_dir / name) for name in ("real.gguf", "other.gguf", "zero.gguf")]
    config = EngineConfig("lora", str(model_path), n_ctx=2048, n_parallel=6, lora=paths)  # type: ignore[arg-type]
    async with loaded(registry, config) as engine:
        yield engine


def only(adapter: int, scale: float = 1.0) -> tuple[tuple[int, float], ...]:
    return ((adapter, scale),)


async def test_the_engine_lists_its_adapters_and_rescales_them(lora_engine: AsyncEngine,
                                                                adapter_dir: Path) -> None:
    assert [(a["id"], Path(a["path"]).name, a["scale"]) for a in lora_engine.lora_adapters()] == [
        (0, "real.gguf", 1.0), (1, "other.gguf", 1.0), (2, "zero.gguf", 1.0)]
    try:
        lora_engine.set_lora_scales([(REAL, 0.5)])  # the others off, as llama-server
        assert [a["scale"] for a in lora_engine.lora_adapters()] == [0.5, 0.0, 0.0]
        by_default = await run(lora_engine, PROMPTS[0], greedy(12, cache_prompt=False))
        named = await run(lora_engine, PROMPTS[0], greedy(12, cache_prompt=False, lora=only(REAL, 0.5)))
        assert by_default.text == named.text
    finally:
        lora_engine.set_lora_scales([(REAL, 1.0), (OTHER, 1.0), (ZERO, 1.0)])


async def test_scale_zero_and_an_all_zero_adapter_give_the_base_models_output(
        lora_engine: AsyncEngine) -> None:
    for prompt in PROMPTS:
        base = await run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=(),
                                                       logprobs=TOP_LOGPROBS))
        zero_scale = await run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=only(REAL, 0.0)))
        zero_weights = await run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=only(ZERO)))
        assert zero_scale.text == base.text  # the same set as the base model: ()
        assert_same_or_near_tie(engine_steps(base.logprobs, lora_engine.token_piece), zero_weights.text,
                                f"all-zero adapter vs base: {prompt}")


async def test_an_adapter_with_weights_changes_the_output(lora_engine: AsyncEngine) -> None:
    changed = 0
    for prompt in PROMPTS:
        base = await run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=()))
        adapted = await run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=only(REAL)))
        assert base.finish is not None and adapted.finish is not None
        changed += base.text != adapted.text
    assert changed == len(PROMPTS)


async def test_a_request_gives_the_same_output_beside_other_adapter_sets(lora_engine: AsyncEngine) -> None:
    """Each request alone, then all at once beside requests of other sets (the base model,
    another adapter, two adapters): the same greedy output, up to a near tie."""
    cases = [(PROMPTS[0], only(REAL)), (PROMPTS[1], ()), (PROMPTS[2], only(OTHER)),
             (PROMPTS[0], ((REAL, 0.5), (OTHER, 1.0))), (PROMPTS[1], only(REAL))]
    references = []
    for prompt, lora in cases:
        alone = await run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=lora,
                                                       logprobs=TOP_LOGPROBS))
        references.append(engine_steps(alone.logprobs, lora_engine.token_piece))
    together = await asyncio.gather(*(run(lora_engine, prompt, greedy(16, cache_prompt=False, lora=lora),
                                          f"mix-{index}")
                                      for index, (prompt, lora) in enumerate(cases)))
    for (prompt, lora), reference, result in zip(cases, references, together, strict=True):
        assert result.finish is not None
        assert_same_or_near_tie(reference, result.text, f"{prompt!r} under {lora} beside other sets")


async def test_the_prefix_cache_never_crosses_adapter_sets(lora_engine: AsyncEngine) -> None:
    prompt = "A prefix only this test sends: " + " ".join(f"w{i}" for i in range(40))
    first, second = ((REAL, 0.75),), ((OTHER, 0.75),)  # sets no other test uses
    under_a = await run(lora_engine, prompt, greedy(2, lora=first))
    under_b = await run(lora_engine, prompt, greedy(2, lora=second))
    again_a = await run(lora_engine, prompt, greedy(2, lora=first))
    assert under_a.finish is not None and under_b.finish is not None and again_a.finish is not None
    assert under_b.finish.usage.cached_tokens == 0
    assert again_a.finish.usage.cached_tokens >= under_a.finish.usage.prompt_tokens - 1


@pytest.mark.parametrize("lora", [only(3), only(-1), ((REAL, 1.0), (REAL, 0.5)), only(REAL, -0.5),
                                  only(REAL, 1e9), only(REAL, math.nan), only(REAL, math.inf)])
async def test_bad_request_adapters_are_refused_and_the_engine_keeps_serving(
        lora_engine: AsyncEngine, lora: tuple[tuple[int, float], ...]) -> None:
    ids = await lora_engine.tokenize(PROMPTS[1])
    with pytest.raises(InvalidRequestError) as caught:
        lora_engine.check_prompt(ids, greedy(4, lora=lora))
    assert caught.value.param == "lora"
    with pytest.raises(InvalidRequestError):
        await run(lora_engine, ids, greedy(4, lora=lora))
    with pytest.raises(InvalidRequestError):
        lora_engine.set_lora_scales(list(lora))
    assert [a["scale"] for a in lora_engine.lora_adapters()] == [1.0, 1.0, 1.0]
    served = await run(lora_engine, ids, greedy(4, lora=only(REAL)))
    assert served.finish is not None and served.error is None


async def test_bad_adapter_files_are_refused_naming_lora(registry: EngineRegistry, model_path: Path,
                                                         tmp_path: Path, lora_engine: AsyncEngine) -> None:
    with pytest.raises(OptionValueError, match="No such file") as missing:
        EngineConfig("missing", str(model_path), lora=[str(tmp_path / "nope.gguf")])  # type: ignore[arg-type]
    assert missing.value.name == "lora"
    wrong_shape = write_lora(tmp_path / "shape.gguf", model_path, shrink=8)
    for engine_id, path, reason in (("not-adapter", model_path, "not a LoRA adapter"),
                                    ("wrong-shape", wrong_shape, "returned NULL")):
        config = EngineConfig(engine_id, str(model_path), n_ctx=256, lora=[str(path)])  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match=reason) as caught:
            await registry.add(config)
        assert caught.value.param == "lora"
        await registry.remove(engine_id)
    embedding = EngineConfig("embed-lora", str(model_path), n_ctx=256, embedding=True,
                             lora=[str(wrong_shape)])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="generation engines") as refused:
        await registry.add(embedding)
    assert refused.value.param == "lora"
    await registry.remove("embed-lora")
    served = await run(lora_engine, PROMPTS[1], greedy(4, lora=only(REAL)))  # others unaffected
    assert served.finish is not None
