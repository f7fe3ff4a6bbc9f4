"""OpenAI-style error objects and the mapping from every failure to its HTTP status."""
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
    EngineStoppedError,
    InsufficientMemoryError,
)

RETRY_AFTER_S = 1


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


def from_engine_error(error: Exception) -> APIError:
    """Map engine-side failures to their HTTP meaning."""
    if isinstance(error, EngineNotFoundError):
        return APIError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, ContextLengthExceededError):
        return bad_request(str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, EngineOverloadedError):
        return APIError(503, str(error), type="server_error", code="engine_overloaded",
                        headers={"Retry-After": str(RETRY_AFTER_S), "x-should-retry": "true"})
    if isinstance(error, EngineStoppedError):
        return APIError(503, str(error), type="server_error", code="engine_stopped",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, InsufficientMemoryError):
        if not error.fits_alone:  # no amount of waiting helps
            return bad_request(str(error), param="n_ctx", code=error.code)
        return APIError(503, str(error), type="server_error", code=error.code,
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, DeadlineExceededError):
        return APIError(504, str(error), type="server_error", code="deadline_exceeded")
    if isinstance(error, EngineError):
        return APIError(500, str(error), type="server_error", code=error.code)
    if isinstance(error, ValueError):
        return bad_request(str(error))
    return APIError(500, "internal server error", type="server_error", code="internal_error")
