"""Validation errors read as the client wrote its request: the location names its fields
(never pydantic's union branches), the form it came closest to explains the problem, and a
content part this server cannot read says so. Pure: the request models only."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kolosal.server.completions.protocol import ChatCompletionRequest
from kolosal.server.errors import APIError, from_validation_error


def refusal(body: dict[str, Any]) -> APIError:
    with pytest.raises(ValidationError) as raised:
        ChatCompletionRequest.model_validate({"model": "m", **body})
    return from_validation_error(raised.value)


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
def test_a_non_text_content_part_is_named_as_unsupported(kind: str) -> None:
    error = refusal({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"}, {"type": kind, kind: {"url": "x"}}]}]})
    assert error.status == 400 and error.param == "messages.0.content.1.type"
    assert f"content parts of type '{kind}' are not supported" in error.message
    assert "list[" not in error.message and ".str" not in error.message


def test_the_closest_form_of_a_field_explains_the_problem() -> None:
    error = refusal({"messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert error.param == "messages.0.content.0.text" and "Field required" in error.message


def test_locations_never_name_union_branches() -> None:
    for body in ({"messages": [{"role": "user", "content": 5}]},
                 {"messages": [{"role": "user", "content": "x"}], "tool_choice": 5},
                 {"messages": [{"role": "user", "content": "x"}], "stop": [1]}):
        error = refusal(body)
        assert error.param is not None
        assert not any(part[:1].isupper() or "[" in part or part in ("str", "int")
                       for part in error.param.split(".")), error.param
