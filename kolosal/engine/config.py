"""Engine configuration: one frozen value per loaded model."""
from __future__ import annotations

from dataclasses import dataclass

MAX_AUTO_PARALLEL = 64


@dataclass(frozen=True, slots=True)
class EngineConfig:
    engine_id: str
    model_path: str
    n_ctx: int = 4096
    n_gpu_layers: int = 100
    main_gpu_id: int = 0
    n_parallel: int = 0        # KV slots; 0 = sized from n_ctx
    n_threads: int = 0         # 0 = all cores
    n_batch: int = 512         # token budget of one step (decode rows + prompt chunks)
    max_queue: int = 256       # waiting requests beyond this are refused (HTTP 503)
    flash_attn: str = "auto"
    use_mmap: bool = True
    keep_alive_s: float = 0.0  # unload after this long idle (reload on the next request); 0 = never
    pinned: bool = False       # never unloaded for idleness nor evicted for memory

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise ValueError("engine_id must be a non-empty string")
        if self.n_ctx < 16:
            raise ValueError("n_ctx must be at least 16")
        if self.n_parallel < 0 or self.n_batch < 1 or self.max_queue < 0 or self.n_threads < 0:
            raise ValueError("n_parallel, n_batch, max_queue and n_threads must be positive")
        if self.keep_alive_s < 0:
            raise ValueError("keep_alive_s must be >= 0 (0 keeps the engine loaded)")

    @property
    def resolved_parallel(self) -> int:
        """Slots share one unified KV pool, so more slots cost no memory: one per 128 cells."""
        if self.n_parallel:
            return self.n_parallel
        return max(1, min(MAX_AUTO_PARALLEL, self.n_ctx // 128))
