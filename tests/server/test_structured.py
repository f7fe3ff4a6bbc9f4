"""Structured output end to end, through a real server process and real clients (the
openai SDK, LangChain, raw HTTP), on the default Gemma 3 270M: a base model that knows
nothing of JSON schemas, so every valid output here is the grammar's doing.

Outputs that finish with "stop" must parse and validate (``jsonschema``); schemas are
bounded (maxLength, maxItems, enums, and ``multipleOf`` for non-integer numbers, short of
the server's own digit cap, ``toolcalls.schema_bounds``) and max_tokens generous, so each
one finishes.
"""
from __future__ import annotations

import asyncio
import enum
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import jsonschema
import openai
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from ..server_process import ENGINE, ServerProcess, start_server, stop_server, wait_idle
from .constrained import (
    TOOLS,
    assert_refused,
    assert_valid_calls,
    chat,
    completion,
    nothing_reaches_the_engine,
    schema_format,
    warm_prefix_cache,
)

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)


# -- schemas ----------------------------------------------------------------------------------------
class Species(str, enum.Enum):
    cat = "cat"
    dog = "dog"
    parrot = "parrot"


class Owner(BaseModel):
    name: str = Field(max_length=24)
    phone: str | None = Field(default=None, max_length=16)


class Pet(BaseModel):
    """A nested model: enum, bounded numbers, a bounded array, optional fields, a sub-model."""

    name: str = Field(max_length=24)
    species: Species
    age_years: int = Field(ge=0, le=30)
    weight_kg: float = Field(ge=0.5, le=80, multiple_of=0.5)
    toys: list[Annotated[str, Field(max_length=20)]] = Field(max_length=3)  # each toy bounded too
    owner: Owner
    vaccinated: bool
    nickname: str | None = Field(default=None, max_length=16)


RECIPE = {"type": "object", "additionalProperties": False,
          "required": ["title", "servings", "ingredients", "vegetarian", "difficulty"],
          "properties": {
              "title": {"type": "string", "maxLength": 30},
              "servings": {"type": "integer", "minimum": 1, "maximum": 12},
              "ingredients": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
                  "type": "object", "additionalProperties": False, "required": ["name", "grams"],
                  "properties": {"name": {"type": "string", "maxLength": 20},
                                 "grams": {"type": "integer", "minimum": 0, "maximum": 1000}}}},
              "vegetarian": {"type": "boolean"},
              "difficulty": {"enum": ["easy", "medium", "hard"]}}}
WEATHER = {"type": "object", "additionalProperties": False,
           "required": ["city", "temperature_c", "conditions", "wind_kmh"],
           "properties": {
               "city": {"type": "string", "maxLength": 20},
               "temperature_c": {"type": "number", "minimum": -50, "maximum": 60, "multipleOf": 0.5},
               "conditions": {"type": "string", "enum": ["sunny", "cloudy", "rain", "snow"]},
               "wind_kmh": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 200}, {"type": "null"}]}}}
SCORES = {"type": "array", "minItems": 1, "maxItems": 5,
          "items": {"type": "integer", "minimum": 0, "maximum": 100}}
TICKET = {"type": "object", "additionalProperties": False, "required": ["code", "priority"],
          "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                         "priority": {"type": "integer", "enum": [1, 2, 3]},
                         "note": {"type": "string", "maxLength": 20}}}
CASES = [("Write a recipe as JSON.", RECIPE), ("Report the weather in Oslo as JSON.", WEATHER),
         ("List some test scores as a JSON array.", SCORES), ("Open a support ticket as JSON.", TICKET)]


def assert_valid(text: str, schema: dict[str, Any]) -> Any:
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def stopped_texts(choices: list[dict[str, Any]], key: str) -> Iterator[str]:
    """The outputs that finished with "stop" (those must be valid); all of them must have."""
    for choice in choices:
        assert choice["finish_reason"] == "stop", choice
        yield choice["message"]["content"] if key == "chat" else choice["text"]


# -- the openai SDK --------------------------------------------------------------------------------
def test_sdk_parse_returns_the_nested_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=ENGINE, response_format=Pet, max_tokens=300, temperature=0,
        messages=[{"role": "user", "content": "Describe my pet as JSON."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    pet = choice.message.parsed
    assert isinstance(pet, Pet) and isinstance(pet.species, Species) and isinstance(pet.owner, Owner)
    assert choice.message.content is not None
    assert_valid(choice.message.content, to_strict_json_schema(Pet))


def test_sdk_parse_with_sampling_still_valid(client: openai.OpenAI) -> None:
    """Sampled (not greedy) outputs take other paths through the schema; each stays valid."""
    completion = client.chat.completions.parse(
        model=ENGINE, response_format=Pet, max_tokens=300, temperature=1.0, seed=7, n=3,
        messages=[{"role": "user", "content": "Invent a pet and describe it as JSON."}])
    assert len(completion.choices) == 3
    for choice in completion.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Pet)


def test_sdk_streamed_json_schema_equals_the_whole(server: ServerProcess, client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": ENGINE, "max_tokens": 200, "temperature": 0,
        "messages": [{"role": "user", "content": "Report the weather in Oslo as JSON."}],
        "response_format": schema_format(WEATHER, "weather")}
    warm_prefix_cache(server, "/v1/chat/completions", request)
    whole = client.chat.completions.create(**request)
    pieces, finishes = [], []
    for chunk in client.chat.completions.create(**request, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finishes.append(chunk.choices[0].finish_reason)
    assert whole.choices[0].finish_reason == "stop" and finishes[-1] == "stop"
    assert "".join(pieces) == whole.choices[0].message.content
    assert_valid("".join(pieces), WEATHER)


# -- response_format over raw HTTP, both endpoints ---------------------------------------------------
@pytest.mark.parametrize(("prompt", "schema"), CASES, ids=["recipe", "weather", "scores", "ticket"])
def test_json_schema_outputs_validate(server: ServerProcess, prompt: str, schema: dict[str, Any]) -> None:
    response = chat(server, messages=[{"role": "user", "content": prompt}], max_tokens=250,
                    temperature=0.8, seed=11, n=2, response_format=schema_format(schema))
    assert response.status_code == 200, response.text
    for text in stopped_texts(response.json()["choices"], "chat"):
        assert_valid(text, schema)
    response = completion(server, prompt=f"{prompt}\n", max_tokens=250, temperature=0.8, seed=5,
                          response_format=schema_format(schema))
    assert response.status_code == 200, response.text
    for text in stopped_texts(response.json()["choices"], "text"):
        assert_valid(text, schema)


def test_json_object_returns_parseable_json(server: ServerProcess) -> None:
    prompt = 'Reply with a JSON object with the keys "name" and "age" for a person called Ann who is 31.'
    # Whole prompts (no prefix from earlier tests): the greedy path then does not depend on
    # what the shared server ran before (a prompt split elsewhere runs other CPU kernels).
    response = chat(server, messages=[{"role": "user", "content": prompt}], max_tokens=150,
                    temperature=0, response_format={"type": "json_object"}, cache_prompt=False)
    assert response.status_code == 200, response.text
    (text,) = stopped_texts(response.json()["choices"], "chat")
    assert isinstance(json.loads(text), dict)
    response = completion(server, prompt=f"Question: {prompt}\nAnswer:", max_tokens=150,
                          temperature=0, response_format={"type": "json_object"}, cache_prompt=False)
    assert response.status_code == 200, response.text
    (text,) = stopped_texts(response.json()["choices"], "text")
    assert isinstance(json.loads(text), dict)


def test_json_object_with_llama_server_schema(server: ServerProcess) -> None:
    """llama-server's extension: a ``schema`` inside ``response_format: json_object``."""
    response = chat(server, messages=[{"role": "user", "content": "Open a support ticket as JSON."}],
                    max_tokens=150, temperature=0, response_format={"type": "json_object", "schema": TICKET})
    assert response.status_code == 200, response.text
    for text in stopped_texts(response.json()["choices"], "chat"):
        assert_valid(text, TICKET)


def test_llama_server_bare_json_schema_field(server: ServerProcess) -> None:
    for response, key in (
            (chat(server, messages=[{"role": "user", "content": "Write a recipe as JSON."}],
                  max_tokens=250, temperature=0, json_schema=RECIPE), "chat"),
            (completion(server, prompt="A recipe in JSON:\n", max_tokens=250, temperature=0,
                        json_schema=RECIPE), "text")):
        assert response.status_code == 200, response.text
        for text in stopped_texts(response.json()["choices"], key):
            assert_valid(text, RECIPE)


# -- GBNF --------------------------------------------------------------------------------------------
GRAMMARS = [
    ('root ::= answer " because " reason "."\nanswer ::= "yes" | "no"\nreason ::= [a-z ]{1,40}\n',
     r"(yes|no) because [a-z ]{1,40}\.", "Is the sky blue? Answer and say why."),
    ('# a short list of numbers\nroot ::= "[" num (", " num){0,4} "]"\nnum ::= [1-9] [0-9]{0,2}\n',
     r"\[[1-9][0-9]{0,2}(, [1-9][0-9]{0,2}){0,4}\]", "Give me some numbers."),
    ('root ::= date " " time\ndate ::= [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" [0-2] [0-9]\n'
     'time ::= [0-1] [0-9] ":" [0-5] [0-9]\n',
     r"[0-9]{4}-(0[1-9]|1[0-2])-[0-2][0-9] [0-1][0-9]:[0-5][0-9]", "When does the train leave?"),
]


@pytest.mark.parametrize(("gbnf", "pattern", "prompt"), GRAMMARS, ids=["reason", "list", "datetime"])
def test_gbnf_grammar_output_matches(server: ServerProcess, gbnf: str, pattern: str, prompt: str) -> None:
    response = chat(server, messages=[{"role": "user", "content": prompt}], max_tokens=80,
                    temperature=0.9, seed=3, n=2, grammar=gbnf)
    assert response.status_code == 200, response.text
    for text in stopped_texts(response.json()["choices"], "chat"):
        assert re.fullmatch(pattern, text), text
    greedy: dict[str, Any] = {"prompt": f"{prompt}\n", "max_tokens": 80, "temperature": 0, "grammar": gbnf}
    warm_prefix_cache(server, "/v1/completions", greedy)
    response = completion(server, **greedy)
    assert response.status_code == 200, response.text
    (whole,) = stopped_texts(response.json()["choices"], "text")
    assert re.fullmatch(pattern, whole), whole
    streamed = stream_text(server, "/v1/completions", {"model": ENGINE, **greedy})
    assert streamed == whole


def stream_text(server: ServerProcess, path: str, body: dict[str, Any]) -> str:
    text = []
    with httpx.stream("POST", server.base_url + path, json={**body, "stream": True}, timeout=600) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text)


# -- refusals and no-ops -------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "param", "words"), [
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"not": {"type": "string"}}}})},
     "response_format", ("not",)),
    ({"response_format": schema_format({"type": "objekt"})}, "response_format", ("objekt",)),
    ({"response_format": {"type": "json_schema"}}, "response_format", ("json_schema",)),
    ({"response_format": {"type": "xml"}}, "response_format.type", ("json_schema",)),
    ({"json_schema": {"type": "string", "pattern": "(((("}}, "json_schema", ("unclosed group",)),
    ({"grammar": "root ::= missing"}, "grammar", ("missing",)),
    ({"grammar": 'root ::= "a', "max_tokens": 8}, "grammar", ("grammar",)),
    ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, None, ("cannot be combined",)),
])
def test_invalid_constraints_are_refused_before_queueing(server: ServerProcess, body: dict[str, Any],
                                                         param: str | None, words: tuple[str, ...]) -> None:
    with nothing_reaches_the_engine(server):
        assert_refused(chat(server, **body), param, *words)
        assert_refused(completion(server, **body), param, *words)


@pytest.mark.parametrize("body", [
    {"response_format": {"type": "text"}}, {"tools": []}, {"tool_choice": "none"},
    {"store": False, "metadata": {"app": "tests"}}, {"parallel_tool_calls": False},
    {"response_format": None, "tools": None, "tool_choice": None, "temperature": None, "top_p": None,
     "seed": None, "stop": None, "n": None, "max_completion_tokens": None, "logprobs": None,
     "top_logprobs": None, "presence_penalty": None, "frequency_penalty": None, "logit_bias": None,
     "user": None, "stream_options": None, "parallel_tool_calls": None, "grammar": None,
     "json_schema": None, "metadata": None, "store": None},
], ids=["text-format", "no-tools", "tool-choice-none", "store-metadata", "parallel", "nulls"])
def test_no_op_fields_are_accepted(server: ServerProcess, body: dict[str, Any]) -> None:
    response = chat(server, **body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] in ("stop", "length")


def test_text_response_format_changes_nothing(server: ServerProcess) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 12,
            "temperature": 0}
    warm_prefix_cache(server, "/v1/chat/completions", body)
    plain = chat(server, **body).json()["choices"][0]["message"]["content"]
    assert chat(server, **body, response_format={"type": "text"}).json()["choices"][0]["message"][
        "content"] == plain


# -- LangChain --------------------------------------------------------------------------------------------
class Forecast(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=20, description="the city")
    unit: str = Field(description="celsius or fahrenheit")


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(server: ServerProcess, method: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.base_url + "/v1", api_key="unused", model=ENGINE,  # type: ignore[arg-type]
                     temperature=0, max_completion_tokens=150, max_retries=0, timeout=600)
    structured = llm.with_structured_output(Forecast, method=method, include_raw=True)  # type: ignore[arg-type]
    result = structured.invoke('What is the weather in Paris in celsius? Reply with a JSON object with the '
                               'keys "city" and "unit".')
    assert isinstance(result, dict)
    assert result["parsing_error"] is None, result
    assert isinstance(result["parsed"], Forecast)
    raw = result["raw"]
    if method == "function_calling":
        assert [call["name"] for call in raw.tool_calls] == ["Forecast"]
        assert raw.response_metadata["finish_reason"] == "tool_calls"
    else:
        schema = Forecast.model_json_schema() if method == "json_schema" else {"type": "object"}
        assert_valid(raw.content, schema)


# -- constrained and free rows in the same batches ------------------------------------------------------
# Free rows: greedy, fixed length. Their text must not change when constrained rows share
# their batches, except at a near-tie: libllama's kernels are not batch-invariant, so two
# candidates closer than this (in logits, read from the solo run's logprobs) may swap
# places in another batch. Measured on this model with no constraint at all (16 free rows
# beside 16 other free chats, vs each alone): top-5 logprobs move by up to 1.13, first
# divergences had gaps up to 0.41. A mask on the wrong row forces a grammar token instead:
# far below the top, usually outside the solo top 5.
NEAR_TIE_LOGITS = 1.5
FREE_TOKENS = 24
FREE_PROMPTS = ["def fibonacci(n):", "In 1969, astronauts", "The quick brown fox", "Water boils at",
                "1, 2, 3, 4, 5,", "The alphabet: A, B, C,", "Monday, Tuesday, Wednesday,",
                "import numpy as np\n", "The capital of Italy is", "Once upon a time, a dragon",
                "SELECT name FROM", "The recipe calls for", "January, February, March,",
                "To install the package, run", "Photosynthesis is the process", "<html>\n<head>"]


@pytest.fixture(scope="module")
def wide_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """32 slots: all 32 requests below decode in the same batches."""
    running = start_server(model_path, tmp_path_factory.mktemp("wide") / "server.log",
                           "--parallel", "32", "--n-ctx", "8192")
    yield running
    stop_server(running)


def constrained_requests() -> list[tuple[dict[str, Any], Callable[[dict[str, Any]], None]]]:
    """16 constrained chat requests of every kind (schema, GBNF, enforced tool calls),
    sampled, each with the check its output must pass."""
    def schema_check(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        return lambda message: assert_valid(message["content"], schema) and None

    def grammar_check(pattern: str) -> Callable[[dict[str, Any]], None]:
        return lambda message: None if re.fullmatch(pattern, message["content"]) else pytest.fail(
            f"{message['content']!r} does not match {pattern}")

    def calls_check(message: dict[str, Any]) -> None:
        assert message["content"] is None
        assert_valid_calls(message["tool_calls"])

    requests: list[tuple[dict[str, Any], Callable[[dict[str, Any]], None]]] = []
    for index in range(16):
        body: dict[str, Any] = {"model": ENGINE, "temperature": 0.7, "seed": index, "max_tokens": 300}
        kind = index % 4
        if kind == 0:
            prompt, schema = CASES[index // 4]
            body.update(messages=[{"role": "user", "content": prompt}], response_format=schema_format(schema))
            requests.append((body, schema_check(schema)))
        elif kind == 1:
            pet = to_strict_json_schema(Pet)
            body.update(messages=[{"role": "user", "content": "Describe a pet as JSON."}],
                        response_format=schema_format(pet, "Pet"))
            requests.append((body, schema_check(pet)))
        elif kind == 2:
            gbnf, pattern, prompt = GRAMMARS[index // 4 % len(GRAMMARS)]
            body.update(messages=[{"role": "user", "content": prompt}], grammar=gbnf)
            requests.append((body, grammar_check(pattern)))
        else:
            body.update(messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                        tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
            requests.append((body, calls_check))
    return requests


def free_request(prompt: str, logprobs: int) -> dict[str, Any]:
    return {"model": ENGINE, "prompt": prompt, "max_tokens": FREE_TOKENS, "temperature": 0,
            "ignore_eos": True, "logprobs": logprobs}


def assert_same_or_near_tie(mixed: dict[str, Any], solo: dict[str, Any]) -> None:
    """``mixed`` has ``solo``'s tokens up to a first divergence, which must be a near-tie in
    the solo run (after it the continuations legitimately differ)."""
    mixed_tokens, solo_tokens = mixed["logprobs"]["tokens"], solo["logprobs"]["tokens"]
    assert len(mixed_tokens) == len(solo_tokens) == FREE_TOKENS
    for step, (mixed_token, solo_token) in enumerate(zip(mixed_tokens, solo_tokens, strict=True)):
        if mixed_token != solo_token:
            candidates = solo["logprobs"]["top_logprobs"][step]
            assert mixed_token in candidates, (step, solo_token, mixed_token, candidates)
            gap = candidates[solo_token] - candidates[mixed_token]
            assert gap < NEAR_TIE_LOGITS, (step, solo_token, mixed_token, gap)
            return
    assert mixed["text"] == solo["text"]


async def test_constrained_and_free_requests_share_batches_without_cross_talk(
        wide_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=wide_server.base_url, timeout=900) as http:
        solo = []
        for prompt in FREE_PROMPTS:  # alone, one at a time
            response = await http.post("/v1/completions", json=free_request(prompt, 5))
            assert response.status_code == 200, response.text
            solo.append(response.json())
        constrained = constrained_requests()
        responses = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body) for body, _ in constrained),
            *(http.post("/v1/completions", json=free_request(prompt, 1)) for prompt in FREE_PROMPTS))
    assert all(response.status_code == 200 for response in responses), [r.text for r in responses]
    for (_, check), response in zip(constrained, responses[:16], strict=True):
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "tool_calls"), choice
        check(choice["message"])
    for response, alone in zip(responses[16:], solo, strict=True):
        mixed = response.json()
        assert mixed["usage"]["completion_tokens"] == alone["usage"]["completion_tokens"] == FREE_TOKENS
        assert_same_or_near_tie(mixed["choices"][0], alone["choices"][0])
    stats = wait_idle(wide_server.base_url, timeout=120)["stats"]
    assert stats["slots_busy"] == 0 and stats["requests_failed"] == 0
