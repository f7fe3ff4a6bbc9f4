"""Helpers shared by the structured-output and tool-call tests (test_structured.py,
test_tools.py): refusals that must happen before anything reaches the engine, the tools
offered, validation of the calls that come back."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema

from ..server_process import ENGINE, ServerProcess, wait_idle

# Every request the engine ever saw ends in one of these counters; a refusal leaves them
# (and the prompt tokens) as they were.
ENGINE_COUNTERS = ("requests_finished", "requests_failed", "requests_cancelled", "prompt_tokens_total")


def engine_counters(server: ServerProcess) -> dict[str, int]:
    stats = wait_idle(server.base_url, timeout=120.0)["stats"]
    return {name: int(stats[name]) for name in ENGINE_COUNTERS}


@contextlib.contextmanager
def nothing_reaches_the_engine(server: ServerProcess) -> Iterator[None]:
    before = engine_counters(server)
    yield
    assert engine_counters(server) == before


def assert_refused(response: httpx.Response, param: str | None, *words: str) -> dict[str, Any]:
    """A 400 invalid_request_error whose ``param`` is ``param`` (or a part of it, such as
    ``tools.0.type``) and whose message names the problem (contains every one of ``words``)."""
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or (param and str(error["param"]).startswith(param + ".")), error
    for word in words:
        assert word in error["message"], error
    return error


def schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    """``response_format`` for a JSON schema, as the openai SDK sends it."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def chat(server: ServerProcess, timeout: float = 600.0, **body: Any) -> httpx.Response:
    payload = {"model": ENGINE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    return httpx.post(server.base_url + "/v1/chat/completions", json=payload, timeout=timeout)


def completion(server: ServerProcess, timeout: float = 600.0, **body: Any) -> httpx.Response:
    payload = {"model": ENGINE, "prompt": "hi", "max_tokens": 4, **body}
    return httpx.post(server.base_url + "/v1/completions", json=payload, timeout=timeout)


WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a time zone",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                   "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]},
                                  "24h": {"type": "boolean"}}}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]


def assert_valid_calls(calls: list[dict[str, Any]], tools: list[dict[str, Any]] = TOOLS) -> list[Any]:
    """Every call is OpenAI-shaped, of an offered tool, its arguments a JSON string that
    validates against that tool's schema; returns the parsed arguments."""
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in tools}
    arguments = []
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] in schemas, call
        value = json.loads(call["function"]["arguments"])
        jsonschema.validate(value, schemas[call["function"]["name"]])
        arguments.append(value)
    return arguments


def warm_prefix_cache(server: ServerProcess, path: str, body: dict[str, Any]) -> None:
    """Greedy runs compared with each other must prefill the same way: a cold prompt is
    prefilled in one go, a cached one only from its last token, and the two differ in the
    last bits (README, Known limits), enough to flip a near-tie. After this, every run of
    ``body`` finds the same cached prefix."""
    payload = {"model": ENGINE, **body, "max_tokens": 1, "stream": False}
    assert httpx.post(server.base_url + path, json=payload, timeout=600).status_code == 200
