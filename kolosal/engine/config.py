"""Engine configuration: one frozen value per loaded model. Each tunable field says once how
it is set (flag, environment, config file, POST /engines), its default and its bounds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..options import check_options, option

MAX_AUTO_PARALLEL = 64
DAY_S = 86400
POOLINGS = ("mean", "cls", "last")
# KV cache element types offered, with their bytes per stored value: f16 is libllama's
# default; q8_0 and q4_0 keep blocks of 32 values with one f16 scale (34 and 18 bytes).
KV_CACHE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
KvCacheType = Literal["f16", "q8_0", "q4_0"]


def _kv_cache_type(text: str) -> str:
    if text not in KV_CACHE_BYTES:
        raise ValueError(f"KV cache type must be one of {', '.join(KV_CACHE_BYTES)}, got {text!r}")
    return text


def _pooling(text: str) -> str:
    if text not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class EngineConfig:
    engine_id: str
    model_path: str
    n_ctx: int = option(4096, "context size: KV cells, one pool shared by all slots",
                        ge=16, le=1 << 20, flag="--n-ctx")
    n_gpu_layers: int = option(100, "layers offloaded when built with a GPU backend",
                               ge=-1, le=100_000, flag="--n-gpu-layers")
    main_gpu_id: int = option(0, "GPU that holds the model", ge=0, le=64)
    n_parallel: int = option(0, f"slots: sequences decoded together (0 = n_ctx/128, at most "
                             f"{MAX_AUTO_PARALLEL})", ge=0, le=256, flag="--parallel")
    n_threads: int = option(0, "compute threads (0 = all cores)", ge=0, le=1024, flag="--threads")
    n_batch: int = option(512, "token budget of one step (decode rows + prompt chunks)",
                          ge=1, le=65536, flag="--n-batch")
    prefill_budget: int = option(256, "prompt tokens one step may carry while sequences decode "
                                 "(steps with nothing decoding take the whole n_batch); 0 = no bound",
                                 ge=0, le=65536, flag="--prefill-budget")
    spec_draft_max: int = option(8, "speculative decoding: most draft tokens a sequence adds to a "
                                 "step, looked up in its own prompt and output; 0 = off (a request "
                                 "may still ask)", ge=0, le=64, flag="--spec-draft-max")
    max_queue: int = option(256, "waiting requests before 503 (engine_overloaded)",
                            ge=0, le=1_000_000, flag="--max-queue")
    flash_attn: str = option("auto", "flash attention", choices=("auto", "on", "off"), http=False)
    cache_type_k: KvCacheType = option("f16", "KV cache type of keys: f16, q8_0 (about half the "
                                       "KV memory) or q4_0 (about a quarter)",
                                       flag="--cache-type-k", parse=_kv_cache_type,
                                       choices=tuple(KV_CACHE_BYTES))
    cache_type_v: KvCacheType = option("f16", "KV cache type of values: f16, q8_0 or q4_0; a "
                                       "quantized V cache runs with flash attention on",
                                       flag="--cache-type-v", parse=_kv_cache_type,
                                       choices=tuple(KV_CACHE_BYTES))
    use_mmap: bool = option(True, "map the model file instead of reading it", http=False)
    keep_alive_s: float = option(0.0, "unload after this many idle seconds; it reloads on the next "
                                 "request (0 = stay loaded)", ge=0, le=365 * DAY_S,
                                 flag="--keep-alive", alias="keep_alive")
    pinned: bool = option(False, "never unloaded for idleness nor evicted for memory", flag="--pin")
    embedding: bool | None = option(None, "serve /v1/embeddings instead of completions (default: "
                                    "when the GGUF is an embedding model)", flag="--embedding")
    pooling: Literal["mean", "cls", "last"] | None = option(
        None, "how an embedding engine pools token vectors (default: the GGUF's, else mean); "
        "setting it makes an embedding engine", flag="--pooling", parse=_pooling)

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise ValueError("engine_id must be a non-empty string")
        check_options(self)
        if self.pooling is not None:
            _pooling(self.pooling)
        if self.cache_type_v != "f16" and self.flash_attn == "off":
            raise ValueError(f"cache_type_v {self.cache_type_v} needs flash attention, which is off")

    @property
    def resolved_flash_attn(self) -> str:
        """What the context gets: a quantized V cache needs flash attention (libllama
        refuses it without), so "auto" becomes "on" there."""
        if self.cache_type_v != "f16":
            return "on"
        return self.flash_attn

    @property
    def resolved_parallel(self) -> int:
        """Slots share one unified KV pool, so more slots cost no memory: one per 128 cells."""
        if self.n_parallel:
            return self.n_parallel
        return max(1, min(MAX_AUTO_PARALLEL, self.n_ctx // 128))
