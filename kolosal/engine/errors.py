"""Engine errors. Each carries an OpenAI-style ``code`` the HTTP layer maps to a status."""
from __future__ import annotations


class EngineError(Exception):
    code: str = "engine_error"


class EngineOverloadedError(EngineError):
    """The waiting queue is full: retry later (HTTP 503 + Retry-After)."""

    code = "engine_overloaded"


class InvalidRequestError(EngineError):
    """The request cannot run as asked (HTTP 400); ``param`` names the field at fault."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidGrammarError(InvalidRequestError):
    """A grammar (from a schema, GBNF or tools) that the grammar engine cannot build."""

    code = "invalid_grammar"


class ContextLengthExceededError(EngineError, ValueError):
    """The prompt (plus at least one generated token) does not fit the context."""

    code = "context_length_exceeded"


class EngineStoppedError(EngineError):
    """The engine shut down or was deleted while the request was queued or running."""

    code = "engine_stopped"


class InferenceError(EngineError):
    """libllama failed while computing this request (HTTP 500)."""

    code = "inference_error"


class EngineReloadError(EngineError):
    """An unloaded engine could not be loaded again (HTTP 500); it stays reloadable."""

    code = "engine_load_failed"


class DeadlineExceededError(EngineError):
    """The request's deadline passed before it finished."""

    code = "deadline_exceeded"


class ModelLoadFailedError(EngineError):
    """libllama could not load a model file that passed the header check (HTTP 400): the
    engine's own form of the native layer's ModelLoadError, so the server never imports it."""

    code = "model_load_failed"


class InsufficientMemoryError(EngineError):
    """Loading this engine would exceed the memory budget (HTTP 503, or 400 when the model
    alone is larger than the budget)."""

    code = "insufficient_memory"

    def __init__(self, message: str, fits_alone: bool = True) -> None:
        super().__init__(message)
        self.fits_alone = fits_alone
