"""The quick start's server: both bundled models, the instruct one first (issue 23). SmolLM2
135M Instruct brings a real ChatML template in its GGUF, so here a chat is rendered by the
model's own template, turn by turn, tools included where the template has no tool support."""
from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from ..server_process import BASE_ENGINE, INSTRUCT_ENGINE, ServerProcess, logged_prompt

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file

TIMEOUT = httpx.Timeout(120.0)
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its template's
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def chat(server: ServerProcess, request_id: str, **fields: Any) -> dict[str, Any]:
    body = {"model": INSTRUCT_ENGINE, "temperature": 0, "max_tokens": 24, **fields}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=TIMEOUT,
                          headers={"X-Request-Id": request_id})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_both_bundled_models_are_listed_instruct_first(bundled_server: ServerProcess) -> None:
    models = httpx.get(f"{bundled_server.base_url}/v1/models", timeout=TIMEOUT).json()["data"]
    assert [model["id"] for model in models] == [INSTRUCT_ENGINE, BASE_ENGINE]


def test_the_prompt_is_the_ggufs_own_template(bundled_server: ServerProcess) -> None:
    answer = chat(bundled_server, "own-template", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert logged_prompt(bundled_server, "own-template") == (
        f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    choice = answer["choices"][0]
    assert choice["message"]["content"] and choice["finish_reason"] in ("stop", "length")


def test_a_multi_turn_chat_is_rendered_turn_by_turn(bundled_server: ServerProcess) -> None:
    messages = [{"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": [{"type": "text", "text": "Name"},  # parts: one line each
                                             {"type": "text", "text": "another one."}]}]
    answer = chat(bundled_server, "multi-turn", messages=messages)
    assert logged_prompt(bundled_server, "multi-turn") == (
        "<|im_start|>system\nAnswer in one short sentence.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n"
        "<|im_start|>user\nName\nanother one.<|im_end|>\n<|im_start|>assistant\n")
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 30


def test_tools_through_a_template_without_tool_support(bundled_server: ServerProcess) -> None:
    """SmolLM2's template ignores ``tools``: the server describes them in the system turn
    itself (README, tool calling) and enforces the call's shape with a grammar."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": WEATHER}}]
    # one call asked for (parallel calls let this small model repeat the call: issue 27)
    answer = chat(bundled_server, "tools", tools=tools, tool_choice="required", max_tokens=64,
                  parallel_tool_calls=False,
                  messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    prompt = logged_prompt(bundled_server, "tools")
    assert prompt.startswith("<|im_start|>system\n") and "get_weather" in prompt
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)


def test_chat_template_kwargs_reach_the_template(bundled_server: ServerProcess) -> None:
    """A variable the template reads, passed per request (as Qwen3's enable_thinking is)."""
    chat(bundled_server, "kwargs", chat_template_kwargs={"add_generation_prompt": False, "unused": 1},
         messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    # the server's own variables win: the generation prompt is still there
    assert logged_prompt(bundled_server, "kwargs").endswith("<|im_start|>assistant\n")


def test_model_entries_say_what_each_engine_serves(bundled_server: ServerProcess) -> None:
    """Issue 27: /v1/models did not say whether an engine serves chat or embeddings."""
    models = httpx.get(f"{bundled_server.base_url}/v1/models", timeout=TIMEOUT).json()["data"]
    for model in models:
        assert model["kind"] == "generation" and model["pooling"] is None
        assert model["context_length"] == 4096
    one = httpx.get(f"{bundled_server.base_url}/v1/models/{INSTRUCT_ENGINE}", timeout=TIMEOUT).json()
    assert one == models[0]


NUMBER_QUESTIONS = ["What is the value of pi?", "What is one third as a decimal number?",
                    "What is the yearly revenue of a small coffee company, in dollars?"]


@pytest.mark.parametrize("question", NUMBER_QUESTIONS)
def test_a_number_only_schema_finishes(bundled_server: ServerProcess, question: str) -> None:
    """Number digits are capped as llama.cpp caps them (toolcalls.schema_bounds): at most 16
    before the point and 10 after it, so a number-only answer ends well before max_tokens
    (uncapped, greedy SmolLM2 can write digits until max_tokens)."""
    number_only = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "number"}}}
    answer = chat(bundled_server, "number-only", max_tokens=64, response_format=number_only,
                  messages=[{"role": "user", "content": question}])
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    text = choice["message"]["content"]
    value = json.loads(text)
    assert isinstance(value, (int, float)) and not isinstance(value, bool), text
    whole, _, fraction = text.lstrip("-").partition(".")
    assert len(whole) <= 16 and len(fraction) <= 10, text


REVIEW = {"type": "object", "properties": {"reviewer": {"type": "string", "maxLength": 20},
                                           "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["reviewer", "stars"]}


def test_a_json_answer_written_in_a_fence_is_the_json_alone(bundled_server: ServerProcess) -> None:
    """SmolLM2 writes its JSON inside a ```json fence, as chat models are trained to (its
    tokens show it); the grammar allows that, as llama-server's does, and the content is the
    JSON alone, streamed and whole alike (toolcalls/fence.py)."""
    fields: dict[str, Any] = {
        "max_tokens": 60, "messages": [{"role": "user", "content": "Review a pair of running shoes."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "review", "schema": REVIEW}}}
    answer = chat(bundled_server, "fenced", logprobs=True, **fields)
    choice = answer["choices"][0]
    written = "".join(entry["token"] for entry in choice["logprobs"]["content"])
    assert written.lstrip().startswith("```json"), written
    assert choice["finish_reason"] == "stop", choice
    content = choice["message"]["content"]
    assert content == content.strip() and not content.startswith("`")
    jsonschema.validate(json.loads(content), REVIEW)
    streamed = ""
    body = {"model": INSTRUCT_ENGINE, "temperature": 0, "stream": True, **fields}
    with httpx.stream("POST", f"{bundled_server.base_url}/v1/chat/completions", timeout=TIMEOUT,
                      json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for entry in json.loads(line[6:])["choices"]:
                    streamed += entry["delta"].get("content") or ""
    assert streamed == content
