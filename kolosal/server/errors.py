"""OpenAI-style error objects, and the one table that maps every engine failure to its
HTTP status, error type, code and headers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..engine import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineError,
    EngineNotFoundError,
    EngineOverloadedError,
    EngineReloadError,
    EngineStoppedError,
    InferenceError,
    InsufficientMemoryError,
    InvalidRequestError,
)

RETRY_AFTER_S = 1
RETRY = {"Retry-After": str(RETRY_AFTER_S)}


@dataclass(slots=True)
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True, slots=True)
class ErrorRule:
    status: int
    type: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


# Engine error class -> HTTP meaning; the first matching class wins (subclasses first).
# The code is the error class's own ``code``.
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorRule], ...] = (
    (EngineNotFoundError, ErrorRule(404, "invalid_request_error", param="model")),
    (ContextLengthExceededError, ErrorRule(400, "invalid_request_error", param="messages")),
    (InvalidRequestError, ErrorRule(400, "invalid_request_error")),
    (EngineOverloadedError, ErrorRule(503, "server_error", headers={**RETRY, "x-should-retry": "true"})),
    (EngineStoppedError, ErrorRule(503, "server_error", headers=RETRY)),
    (InsufficientMemoryError, ErrorRule(503, "server_error", headers=RETRY)),
    (DeadlineExceededError, ErrorRule(504, "server_error")),
    (EngineReloadError, ErrorRule(500, "server_error")),
    (InferenceError, ErrorRule(500, "server_error")),
    (EngineError, ErrorRule(500, "server_error")),
)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"Model '{model}' not found or could not be loaded",
                    param="model", code="model_not_found")


def from_validation_error(error: ValidationError) -> APIError:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = first.get("msg", "invalid request")
    if location:
        message = f"{location}: {message}"
    return bad_request(message, param=location or None)


def from_engine_error(error: BaseException) -> APIError:
    """The HTTP meaning of an engine-side failure (anything else is a 500)."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, InsufficientMemoryError) and not error.fits_alone:
        return bad_request(str(error), param="n_ctx", code=error.code)  # waiting never helps
    for kind, rule in ERROR_TABLE:
        if isinstance(error, kind):
            param = getattr(error, "param", None) or rule.param
            code = "model_not_found" if kind is EngineNotFoundError else getattr(error, "code", None)
            return APIError(rule.status, str(error), type=rule.type, param=param, code=code,
                            headers=dict(rule.headers))
    return APIError(500, "internal server error", type="server_error", code="internal_error")
