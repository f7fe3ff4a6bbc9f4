"""OpenAI-style error objects, and the one table of what every failure means over HTTP.

A ``Rule`` is a status, error type, code, param and message. The named rules below are
the refusals the handlers raise themselves (an unknown model, engine, response or file);
``ENGINE_ERRORS`` maps every engine failure to its rule, and ``MODEL_FILE_ERRORS`` and
``ENGINE_LOAD_ERRORS`` are the two steps of ``POST /engines`` (the file check, then the
load). In each table the first matching class wins, so subclasses come first.

A message names the request's subject (the model, engine id or path it named) when the
caller passes one; without one (an engine failure caught by the app's last-resort handler)
it is the exception's own text. A rule without a code takes the exception's own ``code``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypedDict

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..engine import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineError,
    EngineExistsError,
    EngineNotFoundError,
    EngineOverloadedError,
    EngineReloadError,
    EngineStoppedError,
    InferenceError,
    InsufficientMemoryError,
    InvalidRequestError,
    ModelLoadFailedError,
)
from ..engine.model_check import LibraryCannotRunError
from ..gguf_header import InvalidModelFileError

RETRY_AFTER_S = 1
RETRY = {"Retry-After": str(RETRY_AFTER_S)}


class ErrorObject(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    error: ErrorObject


@dataclass(slots=True)
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> ErrorBody:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True, slots=True)
class Rule:
    status: int
    type: str = "invalid_request_error"
    code: str | None = None      # None: the exception's own code
    param: str | None = None     # None: the exception's own param
    message: str = "{error}"     # formatted with error, subject and reason (an OSError's strerror)
    headers: dict[str, str] = field(default_factory=dict)

    def error(self, subject: str | None = None, cause: BaseException | None = None) -> APIError:
        """The refusal; ``cause`` gives its text (and code and param, when the rule has none)."""
        text = str(cause) if cause is not None else ""
        if subject is not None or "{subject}" not in self.message:
            reason = getattr(cause, "strerror", None) or text
            text = self.message.format(error=text, subject=subject, reason=reason)
        return APIError(self.status, text, type=self.type,
                        param=getattr(cause, "param", None) or self.param,
                        code=self.code or getattr(cause, "code", None), headers=dict(self.headers))


SERVER_ERROR = Rule(500, "server_error")
MODEL_NOT_FOUND = Rule(404, code="model_not_found", param="model",
                       message="Model '{subject}' not found or could not be loaded")
ENGINE_NOT_FOUND = Rule(404, code="model_not_found", param="engine_id",
                        message="engine '{subject}' not found")
NO_ENGINE = Rule(404, code="model_not_found", param="model",
                 message="no engine is loaded; load one with POST /engines")
RESPONSE_NOT_FOUND = Rule(404, code="response_not_found", param="response_id",
                          message="Response with id '{subject}' not found.")
PREVIOUS_RESPONSE_NOT_FOUND = Rule(400, code="previous_response_not_found",
                                   param="previous_response_id",
                                   message="Previous response with id '{subject}' not found.")
Table = tuple[tuple[type[BaseException], Rule], ...]
GENERATION_STATUSES = (404, 500, 504)   # error statuses of a generation: unknown model, failure, deadline

ENGINE_ERRORS: Table = (
    (EngineNotFoundError, MODEL_NOT_FOUND),
    (ContextLengthExceededError, Rule(400, param="messages")),
    (InvalidRequestError, Rule(400)),
    (EngineOverloadedError, Rule(503, "server_error", headers={**RETRY, "x-should-retry": "true"})),
    (EngineStoppedError, Rule(503, "server_error", headers=RETRY)),
    (InsufficientMemoryError, Rule(503, "server_error", headers=RETRY)),
    (DeadlineExceededError, Rule(504, "server_error")),
    (EngineReloadError, SERVER_ERROR),
    (InferenceError, SERVER_ERROR),
    (EngineError, SERVER_ERROR),
)
# POST /engines, the bounded header check and trial load of the file (subject: its path)
MODEL_FILE_ERRORS: Table = (
    (FileNotFoundError, Rule(404, code="model_file_not_found", param="model_path",
                             message="model file not found: {subject}")),
    (IsADirectoryError, Rule(400, code="invalid_model_file", param="model_path")),
    (InvalidModelFileError, Rule(400, code="invalid_model_file", param="model_path")),
    (OSError, Rule(400, code="model_file_unreadable", param="model_path",  # permissions, I/O
                   message="cannot read the model file: {reason}")),
    # no model can run here: the server's fault, not the file's
    (LibraryCannotRunError, Rule(500, "server_error", code="library_cannot_run")),
)
# POST /engines, the load itself
ENGINE_LOAD_ERRORS: Table = (
    (EngineExistsError, Rule(409, code="engine_exists", param="engine_id")),
    (InsufficientMemoryError, Rule(503, "server_error", headers=RETRY)),
    (InvalidRequestError, Rule(400)),                  # a setting that cannot apply
    (InvalidModelFileError, Rule(400, code="invalid_model_file", param="model_path")),  # replaced
    (ModelLoadFailedError, Rule(400, code="model_load_failed", param="model_path")),
    (ValueError, Rule(400, code="model_load_failed", param="model_path")),
    (OSError, Rule(400, code="model_load_failed", param="model_path")),
    (RuntimeError, Rule(500, "server_error", code="engine_load_failed")),  # e.g. no context memory
)


def catches(table: Table) -> tuple[type[BaseException], ...]:
    """The exception classes a table has a rule for (for an ``except`` clause)."""
    return tuple(kind for kind, _ in table)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# pydantic names the branch of a union in an error's location (``str``, ``list[TextPart]``,
# ``NamedToolChoice``, ``function-after[...]``, ``constrained-int``: a bounded one); our field
# names are lower_snake_case
UNION_BRANCH = re.compile(r"^([A-Z]\w*|str|int|float|bool|none|constrained-\w+|[a-z-]+\[.*\])$")
UNSUPPORTED_PARTS = ("image_url", "input_image", "input_audio", "file", "input_file", "image", "audio")


def from_validation_error(error: ValidationError) -> APIError:
    """The first problem, as the client wrote its request: where a field may take several
    forms, the form the request came closest to (not pydantic's first branch), and no branch
    names in the location. A content part this server cannot read says so."""
    first = _closest(error.errors())
    parts = [part for part in first.get("loc", ())
             if part != "body" and not (isinstance(part, str) and UNION_BRANCH.match(part))]
    where = ".".join(str(part) for part in parts)
    message = _unsupported_part(first, parts) or first.get("msg", "invalid request")
    if where:
        message = f"{where}: {message}"
    return bad_request(message, param=where or None)


def _closest(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error, or, under a field of several forms, the deepest error of that field
    (the branch the request came closest to)."""
    first = errors[0]
    location = list(first.get("loc", ()))
    branch = next((index for index, part in enumerate(location)
                   if isinstance(part, str) and UNION_BRANCH.match(part)), None)
    if branch is None:
        return first
    same_field = [e for e in errors if list(e.get("loc", ()))[:branch] == location[:branch]]
    return max(same_field, key=lambda e: len(e.get("loc", ())))


def _unsupported_part(detail: ErrorDetails, parts: list[int | str]) -> str | None:
    """The message for a message content part of a kind this server does not read."""
    kind = detail.get("input")
    if detail.get("type") != "literal_error" or parts[-1:] != ["type"] or "content" not in parts \
            or kind not in UNSUPPORTED_PARTS:
        return None
    return (f"content parts of type '{kind}' are not supported: this server's models read text; "
            "send {\"type\": \"text\", \"text\": ...} parts")


def from_engine_error(error: BaseException, subject: str | None = None,
                      table: Table = ENGINE_ERRORS, param: str | None = None) -> APIError:
    """The HTTP meaning of a failure (anything without a rule is a 500). ``param``: the
    request's field at fault, when the caller knows it (as the request spells it)."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, InsufficientMemoryError) and not error.fits_alone:
        return bad_request(str(error), param="n_ctx", code=error.code)  # waiting never helps
    for kind, rule in table:
        if isinstance(error, kind):
            refusal = rule.error(subject, error)
            refusal.param = param or refusal.param
            return refusal
    return APIError(500, "internal server error", type="server_error", code="internal_error")
