"""Engine configuration: one frozen value per loaded model. Each tunable field says once how
it is set (flag, environment, config file, POST /engines), its default and its bounds."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..options import OptionValueError, check_options, option
from .lora import LoraSpec, lora_flag, lora_specs
from .sampling_defaults import NO_DEFAULTS, SamplingDefaults, SamplingDefaultsError

if TYPE_CHECKING:
    from ..llama import ContextParams, ModelParams

MAX_AUTO_PARALLEL = 64
DAY_S = 86400
POOLINGS = ("mean", "cls", "last")
# KV cache element types offered: f16 is libllama's default; q8_0 and q4_0 keep blocks of
# 32 values with one f16 scale (34 and 18 bytes).
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
KvCacheType = Literal["f16", "q8_0", "q4_0"]
KV_CACHE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # per stored value


def _kv_cache_type(text: str) -> str:
    if text not in KV_CACHE_TYPES:
        raise ValueError(f"KV cache type must be one of {', '.join(KV_CACHE_TYPES)}, got {text!r}")
    return text


def _pooling(text: str) -> str:
    if text not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {text!r}")
    return text


def _check_lora(config: EngineConfig) -> None:
    """The adapters in their one form (LoraSpec), each file present: OptionValueError naming
    ``lora`` otherwise (its content is checked when it loads: llama/adapter.py)."""
    try:
        specs = lora_specs(config.lora)
    except ValueError as error:
        raise OptionValueError("lora", f"lora: {error}") from None
    for spec in specs:
        try:
            mode = os.stat(spec.path).st_mode
        except OSError as error:
            raise OptionValueError("lora", f"LoRA adapter {spec.path}: {error.strerror or error}") from None
        if not stat.S_ISREG(mode):
            raise OptionValueError("lora", f"LoRA adapter {spec.path} is not a regular file")
    object.__setattr__(config, "lora", specs)


def _check_sampling_defaults(config: EngineConfig) -> None:
    """The defaults in their one form (a config file gives a mapping, the environment text);
    OptionValueError naming ``sampling_defaults`` when one could not be a request's value."""
    value: object = config.sampling_defaults
    try:
        if isinstance(value, str):
            value = SamplingDefaults.from_flag(value)
        elif value is None:
            value = NO_DEFAULTS
        elif not isinstance(value, SamplingDefaults):
            value = SamplingDefaults.from_mapping(value)  # type: ignore[arg-type]
    except SamplingDefaultsError as error:
        raise OptionValueError("sampling_defaults", f"sampling_defaults: {error}") from None
    object.__setattr__(config, "sampling_defaults", value)


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
    # Off by default: most of its gain is at one client; at 8 its longer steps raise TTFT p50
    # (1.46x) and at 32 it gave 0.90x-1.05x (benchmarks/RESULTS.md, issue 14). And on, a greedy
    # request's near-tie tokens would depend on timing (draft lengths follow measured step
    # times, and rows verified together run other kernels than a one-row step).
    spec_draft_max: int = option(0, "speculative decoding: most draft tokens a sequence adds to a "
                                 "step, looked up in its own prompt and output; 0 = off (a request "
                                 "may still ask)", ge=0, le=64, flag="--spec-draft-max")
    row_padding: str = option(
        "auto", "auto: a decode step takes one to three extra rows (one-token drafts) where "
        "its measured time says that makes it cheaper (CPU matmul kernels work in tiles of "
        "rows); off: never", flag="--row-padding", choices=("auto", "off"))
    max_queue: int = option(256, "waiting requests before 503 (engine_overloaded)",
                            ge=0, le=1_000_000, flag="--max-queue")
    flash_attn: str = option("auto", "flash attention", choices=("auto", "on", "off"), http=False)
    cache_type_k: KvCacheType = option("f16", "KV cache type of keys: f16, q8_0 (about half the "
                                       "KV memory) or q4_0 (about a quarter)",
                                       flag="--cache-type-k", parse=_kv_cache_type,
                                       choices=KV_CACHE_TYPES)
    cache_type_v: KvCacheType = option("f16", "KV cache type of values: f16, q8_0 or q4_0; a "
                                       "quantized V cache runs with flash attention on",
                                       flag="--cache-type-v", parse=_kv_cache_type,
                                       choices=KV_CACHE_TYPES)
    deterministic: bool = option(False, "greedy and seeded outputs independent of what else is "
                                 "in the batch: flash attention on, weights not repacked, ggml's "
                                 "tiled matmul off (for the whole process), a q8_0 V cache when K "
                                 "and V are both f16; costs throughput (README, Known limits)",
                                 flag="--deterministic")
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
    lora: tuple[LoraSpec, ...] = option(
        (), "LoRA adapter (GGUF) loaded with the model: PATH[:SCALE] (repeatable; scale 1 by "
        "default, 0 = off; over HTTP [{path, scale}]); ids are their positions; a request picks "
        "its own set with `lora`", flag="--lora", parse=lora_flag)
    sampling_defaults: SamplingDefaults = option(
        NO_DEFAULTS, "sampling values for the fields a request omits, e.g. temperature=0.7,top_k=40 "
        "(temperature, top_p, top_k, min_p, repeat_penalty, presence_penalty, frequency_penalty, "
        "seed); over the GGUF's general.sampling.* keys; over HTTP an object",
        flag="--sampling-defaults", alias="defaults", parse=SamplingDefaults.from_flag)

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise ValueError("engine_id must be a non-empty string")
        check_options(self)
        _check_lora(self)
        _check_sampling_defaults(self)
        if self.pooling is not None:
            _pooling(self.pooling)
        if self.cache_type_v != "f16" and self.flash_attn == "off":
            raise ValueError(f"cache_type_v {self.cache_type_v} needs flash attention, which is off")
        if self.deterministic and self.flash_attn == "off":
            raise ValueError("deterministic needs flash attention, which is off")

    @property
    def resolved_flash_attn(self) -> str:
        """What the context gets: a quantized V cache needs flash attention (libllama
        refuses it without), and a deterministic engine runs on it, so "auto" becomes "on"."""
        if self.cache_type_v != "f16" or self.deterministic:
            return "on"
        return self.flash_attn

    @property
    def resolved_cache_types(self) -> tuple[str, str]:
        """(K, V) as stored. ggml-cpu's flash attention has a per-row kernel, a tiled one for
        steps of 64+ rows and a split-KV one for single-row steps over 512+ cells, each with
        its own rounding; only the per-row one runs when K is quantized or K and V differ in
        type. So a deterministic engine with both f16 stores V as q8_0 (libllama casts an
        f32 V back to f16 for flash attention, so f32 would not do)."""
        if self.deterministic and self.cache_type_k == self.cache_type_v == "f16":
            return "f16", "q8_0"
        return self.cache_type_k, self.cache_type_v

    @property
    def resolved_spec_draft_max(self) -> int:
        """Draft tokens per step by default: none on a deterministic engine, whose rejected
        drafts would leave KV holes that later tokens fill out of position order (README,
        Known limits); a request may still ask for them."""
        return 0 if self.deterministic else self.spec_draft_max

    @property
    def pads_rows(self) -> bool:
        """Whether steps take padding rows: not on a deterministic engine (its point is
        that a step's composition does not matter; padding changes it)."""
        return self.row_padding == "auto" and not self.deterministic

    def model_params(self) -> ModelParams:
        """libllama model parameters of this engine."""
        from ..llama import ModelParams

        return ModelParams(n_gpu_layers=self.n_gpu_layers, main_gpu=self.main_gpu_id, use_mmap=self.use_mmap,
                           use_extra_bufts=not self.deterministic)

    def context_params(self) -> ContextParams:
        """libllama context parameters of this (generation) engine."""
        from ..llama import ContextParams

        type_k, type_v = self.resolved_cache_types
        return ContextParams(n_ctx=self.n_ctx, n_batch=self.n_batch, n_ubatch=self.n_batch,
                             n_seq_max=self.resolved_parallel, n_threads=self.n_threads,
                             flash_attn=self.resolved_flash_attn, type_k=type_k, type_v=type_v,
                             batch_invariant=self.deterministic)

    @property
    def resolved_parallel(self) -> int:
        """Slots share one unified KV pool, so more slots cost no memory: one per 128 cells."""
        if self.n_parallel:
            return self.n_parallel
        return max(1, min(MAX_AUTO_PARALLEL, self.n_ctx // 128))
