"""Tools and tool-call history in the prompt: real tool-aware templates get them in Hugging
Face's shape, the others our built-in tools block; family and reasoning detection per
template."""
from __future__ import annotations

import json
from typing import Any

import pytest

from kolosal.chat_template import ChatTemplate, ChatTemplateError
from kolosal.toolcalls import (
    ToolFamily,
    builtin_tool_messages,
    detect_tool_family,
    format_tool_calls,
    mistral_call_id,
    parse_tool_calls,
    tools_system_prompt,
)

from .helpers import template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"id": "call_Xq1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_Xq1", "content": "22 C, sunny"},
    {"role": "assistant", "content": "22 C and sunny."},
    {"role": "user", "content": "Thanks!"},
]
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {}}}

# template fixture -> (family, renders tools itself, reasoning template)
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct": (ToolFamily.HERMES, True, False),
    "Qwen-Qwen3-0.6B": (ToolFamily.HERMES, True, True),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": (ToolFamily.HERMES, True, False),
    "meta-llama-Llama-3.1-8B-Instruct": (ToolFamily.LLAMA3, True, False),
    "meta-llama-Llama-3.2-3B-Instruct": (ToolFamily.LLAMA3, True, False),
    "mistralai-Mistral-Nemo-Instruct-2407": (ToolFamily.MISTRAL, True, False),
    "Mistral-Small-3.2-24B-Instruct-2506": (ToolFamily.MISTRAL_ARGS, True, False),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": (ToolFamily.JSON, False, True),
    "google-gemma-2-2b-it": (ToolFamily.GEMMA, False, False),
}


def load(name: str, architecture: str = "llama") -> ChatTemplate:
    return ChatTemplate.for_model(template(name), architecture, "<s>", "</s>")


@pytest.mark.parametrize("name", TEMPLATES)
def test_detection_per_template(name: str) -> None:
    chat = load(name)
    assert (chat.tool_family, chat.renders_tools, chat.has_reasoning) == TEMPLATES[name]


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_renders_tools_calls_and_results(name: str) -> None:
    prompt = load(name).render(CONVERSATION, tools=[WEATHER])
    for text in ("Current weather of a city", "get_weather", "Paris", "22 C, sunny", "Thanks!"):
        assert text in prompt
    assert '\\"city\\"' not in prompt  # arguments reach templates as an object, not a string


def test_builtin_detection_by_architecture() -> None:
    assert ChatTemplate.for_model(None, "gemma3", "", "").tool_family is ToolFamily.GEMMA
    assert ChatTemplate.for_model(None, "llama", "", "").tool_family is ToolFamily.LLAMA3
    assert ChatTemplate.for_model(None, "qwen2", "", "").tool_family is ToolFamily.HERMES
    assert detect_tool_family("{{ messages }}", "phi3") is ToolFamily.JSON
    assert detect_tool_family(None, "gemma2") is ToolFamily.GEMMA
    assert not ChatTemplate.for_model(None, "gemma3", "", "").renders_tools


def test_qwen_sees_arguments_as_an_object() -> None:
    prompt = load("Qwen-Qwen2.5-7B-Instruct").render(CONVERSATION, tools=[WEATHER])
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            in prompt)
    assert "<tool_response>\n22 C, sunny\n</tool_response>" in prompt


def test_llama_sees_parameters() -> None:
    prompt = load("meta-llama-Llama-3.1-8B-Instruct").render(CONVERSATION, tools=[WEATHER])
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}' in prompt


def test_mistral_gets_nine_character_ids_that_still_match() -> None:
    prompt = load("mistralai-Mistral-Nemo-Instruct-2407").render(CONVERSATION, tools=[WEATHER])
    short = mistral_call_id("call_Xq1")
    assert len(short) == 9 and short.isalnum() and short == mistral_call_id("call_Xq1")
    assert f'"id": "{short}"' in prompt and f'"call_id": "{short}"' in prompt
    assert mistral_call_id("a1B2c3D4e") == "a1B2c3D4e"


def test_no_tools_and_empty_tools_render_the_same() -> None:
    plain = [{"role": "user", "content": "Hi"}]
    for name in TEMPLATES:
        chat = load(name)
        assert chat.render(plain, tools=[]) == chat.render(plain) == chat.render(plain, tools=None)


def test_extra_variables_reach_the_template() -> None:
    chat = load("Qwen-Qwen3-0.6B")
    prompt = chat.render([{"role": "user", "content": "Hi"}], extra={"enable_thinking": False})
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not chat.output_format(prompt).starts_in_reasoning


def test_output_format_per_request() -> None:
    r1 = load("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    prompt = r1.render([{"role": "user", "content": "Hi"}], extra={"enable_thinking": True})
    assert prompt.endswith("<｜Assistant｜><think>\n")
    fmt = r1.output_format(prompt)
    assert fmt.reasoning and fmt.starts_in_reasoning and fmt.tool_family is None
    assert r1.render([{"role": "user", "content": "Hi"}]) == prompt  # thinking on, as llama-server
    closed = r1.render([{"role": "user", "content": "Hi"}], extra={"enable_thinking": False})
    assert closed.endswith("</think>") and not r1.output_format(closed).starts_in_reasoning
    assert (r1.reasoning_mode(prompt), r1.reasoning_mode(closed)) == ("open", "optional")
    assert fmt.markers == ("<think>", "</think>")
    assert not r1.output_format(prompt, reasoning_inline=True).reasoning
    qwen = load("Qwen-Qwen2.5-7B-Instruct")
    fmt = qwen.output_format("", tools=[WEATHER])
    assert fmt.tool_family is ToolFamily.HERMES and fmt.tool_names == {"get_weather"}
    assert not fmt.reasoning and qwen.reasoning_mode("") == "none"
    assert fmt.markers == ("<tool_call>", "</tool_call>")
    assert qwen.output_format("", tools=[WEATHER], tool_choice="none").tool_family is None
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert qwen.output_format("", tools=[WEATHER, TIME], tool_choice=named).tool_names == {
        "get_weather"}


def test_builtin_gemma_renders_the_tools_block_and_history_exactly() -> None:
    chat = ChatTemplate.for_model(None, "gemma3", "<bos>", "<eos>")
    block = tools_system_prompt([WEATHER], ToolFamily.GEMMA)
    call = format_tool_calls(ToolFamily.GEMMA, [("get_weather", '{"city": "Paris"}')])
    assert chat.render(CONVERSATION, tools=[WEATHER]) == (
        f"<bos><start_of_turn>user\nBe brief.\n\n{block}\n\nWeather in Paris?<end_of_turn>\n"
        f"<start_of_turn>model\n{call}<end_of_turn>\n"
        "<start_of_turn>user\n<tool_response>\n"
        '{"name": "get_weather", "content": "22 C, sunny"}\n</tool_response><end_of_turn>\n'
        "<start_of_turn>model\n22 C and sunny.<end_of_turn>\n"
        "<start_of_turn>user\nThanks!<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_the_builtin_block_text() -> None:
    assert tools_system_prompt([WEATHER], ToolFamily.HERMES) == (
        "# Tools\n\nYou can call these functions. Each line gives one function's name, "
        "description and the JSON Schema of its arguments:\n<tools>\n"
        '{"name": "get_weather", "description": "Current weather of a city", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}\n'
        "</tools>\n\nTo call a function, reply with exactly this, the arguments being a JSON "
        "object that matches the function's schema:\n<tool_call>\n"
        '{"name": "<function name>", "arguments": <arguments object>}\n</tool_call>\n'
        "For several calls, write one block after another. Call only the functions listed "
        "above. When no function is needed, answer normally.")
    single = tools_system_prompt([WEATHER], ToolFamily.JSON, parallel=False)
    assert "Make at most one call." in single


@pytest.mark.parametrize("family", list(ToolFamily))
def test_builtin_history_calls_are_in_the_family_format(family: ToolFamily) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, {
                    "id": "call_2", "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"}}]}]
    rendered = builtin_tool_messages(messages, [WEATHER], family)
    assistant = rendered[-1]["content"]
    parsed = parse_tool_calls(assistant, family, {"get_weather", "get_time"})
    assert parsed.content == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert rendered[0]["role"] == "system" and "# Tools" in rendered[0]["content"]


def test_consecutive_results_and_next_user_turn_merge() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_Xq1", "content": "22 C"},
                {"role": "tool", "tool_call_id": "unknown", "name": "get_time", "content": "noon"},
                {"role": "user", "content": "And?"}]
    rendered = builtin_tool_messages(messages, None, ToolFamily.HERMES)
    assert [m["role"] for m in rendered] == ["user", "assistant", "user"]
    assert rendered[2]["content"] == (
        '<tool_response>\n{"name": "get_weather", "content": "22 C"}\n</tool_response>\n'
        '<tool_response>\n{"name": "get_time", "content": "noon"}\n</tool_response>\n\nAnd?')


def test_a_template_refusing_system_gets_the_block_in_the_user_turn() -> None:
    gemma2 = load("google-gemma-2-2b-it", "gemma2")
    # its template raises on a system turn: the system text joins the first user turn with a
    # newline, as llama-server's jinja renderer folds it
    folded = gemma2.render(CONVERSATION)
    system, user = CONVERSATION[0]["content"], CONVERSATION[1]["content"]
    assert folded.startswith(f"<s><start_of_turn>user\n{system}\n{user}")
    prompt = gemma2.render(CONVERSATION[1:], tools=[WEATHER])
    assert prompt.startswith("<s><start_of_turn>user\n# Tools\n")
    assert "```tool_call" in prompt and "Weather in Paris?" in prompt
    prompt = gemma2.render(CONVERSATION, tools=[WEATHER])  # the system text moves along
    assert prompt.startswith("<s><start_of_turn>user\nBe brief.\n\n# Tools\n")


def test_content_parts_and_null_content() -> None:
    chat = load("Qwen-Qwen2.5-7B-Instruct")
    prompt = chat.render([{"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                       {"type": "text", "text": "lo"}]},
                          {"role": "assistant", "content": None, "tool_calls": [CALL]}],
                         add_generation_prompt=False)
    assert "<|im_start|>user\nHello<|im_end|>" in prompt


def test_a_template_error_on_odd_input_is_a_template_error() -> None:
    broken = ChatTemplate.for_model("{{ messages[0]['content'] + 1 }}", "llama", "", "")
    with pytest.raises(ChatTemplateError):
        broken.render([{"role": "user", "content": "x"}])
