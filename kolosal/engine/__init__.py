"""Continuous batching engine: one AsyncEngine (model + context + scheduler thread) per
loaded model, several of them in an EngineRegistry."""
from .async_engine import AsyncEngine, EngineState, ModelInfo
from .config import EngineConfig
from .errors import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineError,
    EngineOverloadedError,
    EngineReloadError,
    EngineStoppedError,
    InferenceError,
    InsufficientMemoryError,
)
from .memory import MemoryEstimate, estimate_memory, parse_size
from .registry import EngineExistsError, EngineNotFoundError, EngineRegistry, MemoryPolicy
from .request import ErrorEvent, Event, FinishEvent, FinishReason, SamplingParams, TokenEvent, Usage

__all__ = ["AsyncEngine", "ContextLengthExceededError", "DeadlineExceededError", "EngineConfig",
           "EngineError", "EngineExistsError", "EngineNotFoundError", "EngineOverloadedError",
           "EngineRegistry", "EngineReloadError", "EngineState", "EngineStoppedError", "ErrorEvent", "Event",
           "FinishEvent", "FinishReason", "InferenceError", "InsufficientMemoryError",
           "MemoryEstimate", "MemoryPolicy", "ModelInfo", "SamplingParams", "TokenEvent", "Usage",
           "estimate_memory", "parse_size"]
