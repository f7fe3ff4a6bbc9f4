"""Request parsing, JSON responses and SSE responses, shared by every route."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, RootModel, ValidationError
from quart import Response, request

from .errors import bad_request, from_validation_error

Body = TypeVar("Body", bound=BaseModel)
MAX_JSON_DEPTH = 64


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, headers=headers,
                    content_type="application/json")


def sse_response(body: AsyncIterator[bytes]) -> Response:
    response = Response(body, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    response.timeout = None  # a long generation is not a timeout
    return response


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, stopping early past the limit (iterative: no recursion bombs)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


async def parse_body(model: type[Body]) -> Body:
    raw = await request.get_data()
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"invalid JSON: {error}") from None
    shape = list if issubclass(model, RootModel) else dict  # a RootModel's body is a JSON array
    if not isinstance(data, shape):
        raise bad_request(f"the request body must be a JSON {'array' if shape is list else 'object'}")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise bad_request("the JSON body is nested too deeply")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise from_validation_error(error) from None
