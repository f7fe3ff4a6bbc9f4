"""Continuous batching engine: one AsyncEngine (model + context + scheduler thread) per
loaded model, each owned by its EngineEntry in an EngineRegistry."""
from .async_engine import AsyncEngine, ModelInfo
from .config import EngineConfig
from .entry import EngineEntry, EngineState
from .errors import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineError,
    EngineOverloadedError,
    EngineReloadError,
    EngineStoppedError,
    InferenceError,
    InsufficientMemoryError,
    InvalidGrammarError,
    InvalidRequestError,
    ModelLoadFailedError,
)
from .memory import MemoryEstimate, estimate_memory, parse_size
from .registry import EngineExistsError, EngineNotFoundError, EngineRegistry, MemoryPolicy
from .request import (
    ErrorEvent,
    Event,
    FinishEvent,
    FinishReason,
    OutputWatch,
    SamplingParams,
    Tenancy,
    TokenEvent,
    TokenLogprob,
    Usage,
)

__all__ = ["AsyncEngine", "ContextLengthExceededError", "DeadlineExceededError", "EngineConfig",
           "EngineEntry", "EngineError", "EngineExistsError", "EngineNotFoundError",
           "EngineOverloadedError", "EngineRegistry", "EngineReloadError", "EngineState",
           "EngineStoppedError", "ErrorEvent", "Event", "FinishEvent", "FinishReason", "InferenceError",
           "InsufficientMemoryError", "InvalidGrammarError", "InvalidRequestError", "MemoryEstimate",
           "MemoryPolicy", "ModelInfo", "ModelLoadFailedError", "OutputWatch", "SamplingParams", "Tenancy",
           "TokenEvent", "TokenLogprob", "Usage", "estimate_memory", "parse_size"]
