"""KV cache types (--cache-type-k/--cache-type-v, POST /engines cache_type_k/cache_type_v):
declared once in EngineConfig, checked everywhere they come from, passed to libllama, and
followed by the memory estimate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from kolosal.engine import EngineConfig
from kolosal.engine.config import KV_CACHE_BYTES
from kolosal.engine.memory import estimate_memory
from kolosal.llama import Context, ContextParams, Model
from kolosal.server.engines.protocol import EngineCreateRequest

PROMPT = "The capital of France is Paris. The capital of Germany is"


def test_settings_and_their_checks() -> None:
    config = EngineConfig("e", "m.gguf", cache_type_k="q8_0", cache_type_v="q4_0")
    assert (config.cache_type_k, config.cache_type_v, config.resolved_flash_attn) == ("q8_0", "q4_0", "on")
    assert EngineConfig("e", "m.gguf", cache_type_k="q4_0").resolved_flash_attn == "auto"  # K alone: any
    with pytest.raises(ValueError, match="needs flash attention"):
        EngineConfig("e", "m.gguf", cache_type_v="q8_0", flash_attn="off")
    with pytest.raises(ValueError, match="must be one of f16, q8_0, q4_0"):
        EngineConfig("e", "m.gguf", cache_type_k="q5_0")  # type: ignore[arg-type]
    request = EngineCreateRequest.model_validate({"engine_id": "e", "model_path": "m.gguf",
                                                  "cache_type_k": "q8_0", "cache_type_v": "q8_0"})
    assert request.engine_config("m.gguf").cache_type_v == "q8_0"
    with pytest.raises(ValidationError, match="cache_type_v"):
        EngineCreateRequest.model_validate({"engine_id": "e", "model_path": "m.gguf", "cache_type_v": "bf16"})


def test_memory_estimate_follows_the_types(model_path: Path) -> None:
    def kv(k: str, v: str) -> int:
        config = EngineConfig("m", str(model_path), n_ctx=4096, n_parallel=8, cache_type_k=k,  # type: ignore[arg-type]
                              cache_type_v=v)  # type: ignore[arg-type]
        return estimate_memory(config).kv_cache

    # 4096 cells x 18 layers x 1 KV head x 256 dims, for K and for V
    values = 4096 * 18 * 256
    assert kv("f16", "f16") == 2 * values * 2
    assert kv("q8_0", "q8_0") == int(2 * values * 34 / 32)
    assert kv("q4_0", "q4_0") == int(2 * values * 18 / 32)
    assert kv("q8_0", "q4_0") == int(values * (34 + 18) / 32)
    assert KV_CACHE_BYTES["q4_0"] < KV_CACHE_BYTES["q8_0"] < KV_CACHE_BYTES["f16"]


@pytest.mark.parametrize(("type_k", "type_v"), [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16")])
def test_quantized_caches_decode_like_f16(llama_model: Model, type_k: str, type_v: str) -> None:
    """A context with a quantized cache loads (libllama turns flash attention on for a
    quantized V) and predicts the same next token as the f16 cache on a clear prompt."""
    ids = llama_model.vocab.tokenize(PROMPT)

    def next_logits(params: ContextParams) -> np.ndarray:
        from kolosal.llama import Batch

        with Context(llama_model, params) as context, Batch(64) as batch:
            count = len(ids)
            batch.fill(np.array(ids), np.arange(count), np.zeros(count), np.eye(1, count, count - 1)[0])
            assert context.decode(batch) == 0
            return context.logits_row(count - 1).copy()

    reference = next_logits(ContextParams(n_ctx=256, n_batch=64, n_seq_max=1))
    quantized = next_logits(ContextParams(n_ctx=256, n_batch=64, n_seq_max=1, type_k=type_k, type_v=type_v))
    assert quantized.argmax() == reference.argmax()
    top = set(np.argsort(reference)[-10:].tolist()) & set(np.argsort(quantized)[-10:].tolist())
    assert len(top) >= 7  # close, not equal: the cached values are rounded


def test_a_quantized_v_cache_without_flash_attention_is_refused(llama_model: Model) -> None:
    with pytest.raises(ValueError, match="needs flash attention"):
        Context(llama_model, ContextParams(n_ctx=256, type_v="q8_0", flash_attn="off"))
    with pytest.raises(ValueError, match="unknown KV cache type"):
        Context(llama_model, ContextParams(n_ctx=256, type_k="q9_9"))
