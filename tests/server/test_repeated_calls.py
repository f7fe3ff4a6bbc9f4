"""Issue 27: under ``tool_choice: "required"`` with parallel calls allowed (OpenAI's
default), SmolLM2 135M Instruct wrote the same call again and again until max_tokens. A
call that repeats an earlier one now ends the output: it is dropped, the engine stops
generating, the answer is the one call with ``finish_reason: "tool_calls"``, and the
repeat's tokens are not billed. Different calls are all kept."""
from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from ..server_process import INSTRUCT_ENGINE, ServerProcess, wait_idle

pytestmark = pytest.mark.model

CITIES = ["Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid", "Oslo", "Cairo", "Lima", "Sydney"]
WEATHER: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MAX_TOKENS = 300  # the repeats used to run to here


@pytest.fixture(scope="module")
def client(bundled_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=bundled_server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=600)


def question(city: str) -> Any:
    return [{"role": "user", "content": f"What is the weather in {city}?"}]


def generated_total(server: ServerProcess) -> int:
    stats = wait_idle(server.base_url, INSTRUCT_ENGINE)["stats"]
    return int(stats["generated_tokens_total"])


def test_one_call_for_each_obvious_question(bundled_server: ServerProcess, client: openai.OpenAI) -> None:
    before = generated_total(bundled_server)
    billed = 0
    for city in CITIES:
        answer = client.chat.completions.create(
            model=INSTRUCT_ENGINE, messages=question(city), tools=WEATHER, tool_choice="required",
            temperature=0, max_tokens=MAX_TOKENS)
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls", (city, choice)
        assert choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"].lower() == city.lower()  # "LIMA" too
        assert answer.usage is not None and answer.usage.completion_tokens < 50
        billed += answer.usage.completion_tokens
    # The engine stopped at each repeat: it generated the call, at most one repeat of it
    # (not billed) and nothing after, never MAX_TOKENS.
    generated = generated_total(bundled_server) - before
    assert billed < generated <= 2 * billed + 2 * len(CITIES)


def test_one_call_for_each_obvious_question_streamed(client: openai.OpenAI) -> None:
    for city in CITIES:
        stream = client.chat.completions.create(
            model=INSTRUCT_ENGINE, messages=question(city), tools=WEATHER, tool_choice="required",
            temperature=0, max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True})
        calls: dict[int, list[str]] = {}
        finish, content, usage = None, "", None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                content += choice.delta.content or ""
                for part in choice.delta.tool_calls or []:
                    entry = calls.setdefault(part.index, ["", ""])
                    entry[0] += (part.function.name or "") if part.function else ""
                    entry[1] += (part.function.arguments or "") if part.function else ""
        assert (finish, content) == ("tool_calls", ""), city
        [(name, arguments)] = calls.values()
        assert name == "get_weather" and json.loads(arguments)["city"].lower() == city.lower()
        assert usage is not None and usage.completion_tokens < 50


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_two_cities_still_get_two_calls(bundled_server: ServerProcess, stream: bool) -> None:
    """Only identical calls are cut: the model's two different calls both come back."""
    body = {"model": INSTRUCT_ENGINE, "temperature": 0, "max_tokens": MAX_TOKENS, "tools": WEATHER,
            "tool_choice": "required", "stream": stream,
            "messages": [{"role": "user", "content": "What is the weather in Paris and in London?"}]}
    url = bundled_server.base_url + "/v1/chat/completions"
    if not stream:
        choice = httpx.post(url, json=body, timeout=600).json()["choices"][0]
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                 for c in choice["message"]["tool_calls"]]
        finish = choice["finish_reason"]
    else:
        with httpx.stream("POST", url, json=body, timeout=600) as response:
            chunks = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: {")]
        parts: dict[int, list[str]] = {}
        finish = None
        for chunk in chunks:
            for choice in chunk["choices"]:
                finish = choice["finish_reason"] or finish
                for part in choice["delta"].get("tool_calls") or []:
                    entry = parts.setdefault(part["index"], ["", ""])
                    entry[0] += part["function"].get("name") or ""
                    entry[1] += part["function"].get("arguments") or ""
        calls = [(name, json.loads(arguments)) for name, arguments in parts.values()]
    assert finish == "tool_calls"
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "London"})]


def test_the_responses_api_shares_the_path(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=INSTRUCT_ENGINE, input="What is the weather in Rome?", tool_choice="required",
        tools=[{"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
                "parameters": WEATHER[0]["function"]["parameters"], "strict": False}],
        temperature=0, max_output_tokens=MAX_TOKENS)
    assert response.status == "completed"
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [("get_weather", {"city": "Rome"})]
    assert response.usage is not None and response.usage.output_tokens < 50
