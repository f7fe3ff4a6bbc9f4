"""Fields that llama-server migrants send, without a model: logit_bias as pairs and texts,
mixed token/text prompt lists, the server's max_tokens default, and an engine's sampling
defaults for the fields a request omits. Refusals are 400s naming the field."""
from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from kolosal.engine.sampling_defaults import BOUNDS, SamplingDefaults
from kolosal.server.completions.forms import MAX_BIAS_TEXT, MAX_LOGIT_BIAS, MAX_PROMPT_TEXTS, MAX_PROMPTS
from kolosal.server.completions.prepare import prepare_chat, prepare_completion
from kolosal.server.completions.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from kolosal.server.completions.routes import echo_text
from kolosal.server.errors import APIError, from_validation_error
from kolosal.server.responses.items import chat_messages
from kolosal.server.responses.protocol import ResponsesRequest

from .test_prepare import FakeEngine, settings_context
from .test_prepare import app_context as app_context  # a fixture

BOS = 999  # FakeEngine: one token per character (ord % 999), BOS first with add_special


def ids(text: str) -> list[int]:
    return [ord(char) % 999 for char in text]


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def refused(model: type[BaseModel], body: dict[str, Any]) -> APIError:
    """The 400 a body gets from the server's validation."""
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)
    return from_validation_error(raised.value)


# -- logit_bias ----------------------------------------------------------------------------------
async def test_every_logit_bias_form_resolves_to_token_ids(app_context: None) -> None:
    engine: Any = FakeEngine()
    cases: list[tuple[Any, dict[int, float]]] = [
        ({"12": 1.5, "7": -2}, {12: 1.5, 7: -2.0}),                      # OpenAI's
        ([[12, 1.0], [7, -0.5]], {12: 1.0, 7: -0.5}),                    # llama-server's pairs
        ([["ab", -0.5]], {ids("a")[0]: -0.5, ids("b")[0]: -0.5}),        # a text: each of its tokens
        ({"ab": 2}, {ids("a")[0]: 2.0, ids("b")[0]: 2.0}),               # text keys
        ({" +12": 1, "1 ": 1}, {12: 1.0, ids("1")[0]: 1.0, ids(" ")[0]: 1.0}),  # keys read as strtol does
        ([["12", 1]], {ids("1")[0]: 1.0, ids("2")[0]: 1.0}),             # a pair's string: a text
        ([[12, False]], {12: -math.inf}),                                # false: never
        ([["aa", 1.0], [ids("a")[0], 0.5]], {ids("a")[0]: 2.5}),         # repeated: summed
        ([["a", False], ["a", 3]], {ids("a")[0]: -math.inf}),
    ]
    for value, expected in cases:
        prepared = await prepare_completion(engine, completion(logit_bias=value))
        assert prepared.params.logit_bias == expected, value
    chat_prepared = await prepare_chat(engine, chat(logit_bias=[["hi", False]]))
    assert chat_prepared.params.logit_bias == {ids("h")[0]: -math.inf, ids("i")[0]: -math.inf}


async def test_an_unknown_token_id_is_a_400_naming_logit_bias(app_context: None) -> None:
    for value in ({"1000": 1}, [[1000, 1]], [[5, 1], [2**31 - 1, 1]]):
        with pytest.raises(APIError) as raised:
            await prepare_completion(FakeEngine(), completion(logit_bias=value))  # type: ignore[arg-type]
        assert raised.value.status == 400 and raised.value.param == "logit_bias"


@pytest.mark.parametrize("value", [
    {"-1": 1}, {"": 1}, {"x" * (MAX_BIAS_TEXT + 1): 1}, {"1": math.nan}, {"1": math.inf},
    [[1, math.nan]], [[1, -math.inf]], {"1": 101}, [[1, True]], {"1": True}, [[1, "1"]],
    [[1, 2, 3]], [[1]], [1, 2], [[[1, 2], 1]], [[-1, 1]], [[1.5, 1]], [[None, 1]], [["", 1]],
    [[2**31, 1]], "12", 12, {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)},
    [[i, 1] for i in range(MAX_LOGIT_BIAS + 1)], [["deep", [[[[1]]]]]],
])
def test_malformed_or_hostile_logit_bias_is_a_400_naming_it(value: object) -> None:
    for model in (CompletionRequest, ChatCompletionRequest):
        body = {"model": "m", "prompt": "x", "messages": [{"role": "user", "content": "hi"}]}
        body.pop("messages" if model is CompletionRequest else "prompt")
        error = refused(model, {**body, "logit_bias": value})
        assert error.status == 400 and error.param is not None and error.param.startswith("logit_bias")
        assert "constrained" not in error.message  # pydantic's names for a union's forms


# -- mixed prompt lists --------------------------------------------------------------------------
async def test_mixed_prompts_are_tokenized_piece_by_piece(app_context: None) -> None:
    engine: Any = FakeEngine()
    cases: list[tuple[Any, list[list[int]]]] = [
        ([12, "ab", 34], [[12, *ids("ab"), 34]]),                 # one prompt; no BOS before a text inside
        (["ab", 12, "c"], [[BOS, *ids("ab"), 12, *ids("c")]]),    # BOS when it starts with a text
        ([12, 34], [[12, 34]]),                                   # token ids
        (["ab", "c"], [[BOS, *ids("ab")], [BOS, *ids("c")]]),     # texts: one prompt each
        (["ab", [1, "c"], [2, 3], ["d", 4]],                      # a list of prompts of any form
         [[BOS, *ids("ab")], [1, *ids("c")], [2, 3], [BOS, *ids("d"), 4]]),
        ([[5]], [[5]]),
    ]
    for prompt, expected in cases:
        assert (await prepare_completion(engine, completion(prompt=prompt))).prompts == expected, prompt


def test_echo_repeats_a_mixed_prompt_as_text() -> None:
    def piece(token: int) -> bytes:
        return f"<{token}>".encode()
    assert echo_text(piece, [1, "é", 2]) == "<1>é<2>"
    assert echo_text(piece, "plain") == "plain"


@pytest.mark.parametrize("prompt", [
    [], [[]], [["a", "b"]], [[[1]]], [1, [2]], [1.5], [True], [1, None], [None], {"prompt_string": "x"},
    ["a"] * (MAX_PROMPTS + 1), [[1]] * (MAX_PROMPTS + 1),
    [1, *["a"] * (MAX_PROMPT_TEXTS + 1)], [[1, "a"]] * 2 + [[1, *["a"] * MAX_PROMPT_TEXTS]],
    [[1, [[[[[[[[[["deep"]]]]]]]]]]]], "",
])
def test_malformed_or_hostile_prompt_lists_are_a_400_naming_prompt(prompt: object) -> None:
    error = refused(CompletionRequest, {"model": "m", "prompt": prompt}) if prompt != "" else None
    if error is None:  # an empty text prompt is refused where it is tokenized
        return
    assert error.status == 400 and error.param is not None and error.param.startswith("prompt")
    assert "constrained" not in error.message


async def test_an_empty_text_prompt_is_refused(app_context: None) -> None:
    with pytest.raises(APIError) as raised:
        await prepare_completion(FakeEngine(), completion(prompt=""))  # type: ignore[arg-type]
    assert raised.value.param == "prompt"


# -- max_tokens default --------------------------------------------------------------------------
async def test_the_max_tokens_default_follows_the_contract_then_the_operator() -> None:
    engine: Any = FakeEngine()  # n_ctx 4096
    responses = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
    responses_chat = responses.chat_request(chat_messages(responses.input))
    for setting, chat_tokens, completion_tokens in ((None, 128, 16), (0, 4096, 4096), (300, 300, 300),
                                                    (10**6, 4096, 4096)):
        async with settings_context(setting):
            assert (await prepare_chat(engine, chat())).params.max_tokens == chat_tokens
            assert (await prepare_chat(engine, responses_chat)).params.max_tokens == chat_tokens
            assert (await prepare_completion(engine, completion())).params.max_tokens == completion_tokens
            # the request's own value wins, within the context
            assert (await prepare_chat(engine, chat(max_tokens=5))).params.max_tokens == 5
            assert (await prepare_chat(engine, chat(max_completion_tokens=6))).params.max_tokens == 6
            assert (await prepare_completion(engine, completion(max_tokens=7))).params.max_tokens == 7
            assert (await prepare_completion(engine, completion(max_tokens=9999))).params.max_tokens == 4096
            echo_only = await prepare_completion(engine, completion(max_tokens=0, echo=True))
            assert echo_only.params.max_tokens == 0


# -- sampling defaults ---------------------------------------------------------------------------
ENGINE_DEFAULTS = SamplingDefaults(temperature=0.3, top_p=0.9, top_k=5, min_p=0.05, repeat_penalty=1.1,
                                   presence_penalty=0.5, frequency_penalty=-0.5, seed=7)


async def test_the_engine_defaults_fill_what_a_request_omits(app_context: None) -> None:
    engine: Any = FakeEngine(ENGINE_DEFAULTS)
    for prepared in (await prepare_completion(engine, completion()), await prepare_chat(engine, chat())):
        params = prepared.params
        assert (params.temperature, params.top_p, params.top_k, params.min_p, params.repeat_penalty,
                params.presence_penalty, params.frequency_penalty, params.seed) == (
                    0.3, 0.9, 5, 0.05, 1.1, 0.5, -0.5, 7)
    own = await prepare_completion(engine, completion(temperature=1.0, top_k=0, seed=3,
                                                      repetition_penalty=1.0, top_p=None))
    params = own.params  # the request's own values win, even the body's defaults; null: unset
    assert (params.temperature, params.top_k, params.seed, params.repeat_penalty, params.top_p) == (
        1.0, 0, 3, 1.0, 0.9)
    responses = ResponsesRequest.model_validate({"model": "m", "input": "hi", "temperature": 0.0})
    params = (await prepare_chat(engine, responses.chat_request(chat_messages(responses.input)))).params
    assert params.temperature == 0.0 and params.top_k == 5 and params.seed == 7
    bare = (await prepare_completion(FakeEngine(), completion())).params  # type: ignore[arg-type]
    # no engine defaults: the body's own
    assert (bare.temperature, bare.top_p, bare.top_k, bare.seed) == (1.0, 1.0, 0, None)


def test_the_defaults_bounds_are_the_request_fields_bounds() -> None:
    fields = SamplingFields.model_fields
    for name, bound in BOUNDS.items():
        limits = {type(item).__name__: item for item in fields[name].metadata}
        low = limits.get("Gt", limits.get("Ge"))
        high = limits.get("Le")
        if name == "seed":  # checked by its own validator: 64 bits
            assert (bound.low, bound.high) == (-(2**63), 2**64 - 1)
            continue
        assert low is not None and high is not None, name
        assert (bound.low, bound.high, bound.low_open) == (
            getattr(low, "gt", getattr(low, "ge", None)), high.le, "Gt" in limits), name


def test_gguf_sampling_keys_become_defaults_and_bad_ones_are_ignored() -> None:
    metadata = {"general.sampling.temp": "0.600000", "general.sampling.top_k": "20",
                "general.sampling.top_p": "0.950000", "general.sampling.min_p": "0.000000",
                "general.sampling.penalty_repeat": "1.050000", "general.sampling.mirostat": "2",
                "general.sampling.sequence": "top_k;temperature"}
    found = SamplingDefaults.from_gguf(metadata)
    assert found.as_dict() == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0,
                               "repeat_penalty": 1.05}
    for text in ("nan", "-1", "inf", "abc", "1e999", "", "3"):
        assert SamplingDefaults.from_gguf({"general.sampling.temp": text}) == SamplingDefaults(), text
    assert SamplingDefaults.from_gguf({"general.sampling.top_k": "2.5"}) == SamplingDefaults()
    assert SamplingDefaults.from_gguf({}).overridden_by(SamplingDefaults(top_k=3)).as_dict() == {"top_k": 3}
    assert found.overridden_by(SamplingDefaults(temperature=0.1)).temperature == 0.1


@pytest.mark.parametrize("defaults", [
    {"temperature": -0.1}, {"temperature": 2.5}, {"temperature": math.nan}, {"top_p": math.inf},
    {"top_k": -1}, {"top_k": 1.5}, {"top_k": True}, {"min_p": 2}, {"repeat_penalty": 0},
    {"presence_penalty": 3}, {"frequency_penalty": -math.inf}, {"seed": 2**64}, {"seed": "1"},
    {"temperature": "0.5"}, {"mirostat": 2}, {"temp": 0.5},
    {"repeat_penalty": 1.1, "repetition_penalty": 1.1},
    [0.5], "temperature=0.5", {"temperature": {"value": 1}},
])
def test_hostile_engine_defaults_are_a_400_naming_them(defaults: object) -> None:
    from kolosal.server.engines.protocol import EngineCreateRequest

    error = refused(EngineCreateRequest, {"engine_id": "e", "model_path": "m.gguf", "defaults": defaults})
    assert error.status == 400 and error.param is not None and error.param.startswith("defaults")


def test_engine_defaults_from_a_flag_or_a_config_file() -> None:
    from kolosal.engine import EngineConfig
    from kolosal.options import OptionValueError

    assert SamplingDefaults.from_flag("temperature=0.7, top_k=40,seed=-3") == SamplingDefaults(
        temperature=0.7, top_k=40, seed=-3)
    assert SamplingDefaults.from_flag("none") == SamplingDefaults()
    assert EngineConfig("e", "m.gguf", sampling_defaults={"repetition_penalty": 1.2}).sampling_defaults == (  # type: ignore[arg-type]
        SamplingDefaults(repeat_penalty=1.2))
    for bad in ("temperature", "temperature=hot", "top_k=1.5", "temperature=nan", "warmth=1", "top_p=2"):
        with pytest.raises(ValueError):
            SamplingDefaults.from_flag(bad)
    for value in ({"top_k": -1}, {"unknown": 1}, "top_p=9", ["temperature"]):
        with pytest.raises(OptionValueError) as raised:
            EngineConfig("e", "m.gguf", sampling_defaults=value)  # type: ignore[arg-type]
        assert raised.value.name == "sampling_defaults"
