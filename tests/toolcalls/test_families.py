"""Family detection from template text and architecture, reasoning templates, call ids."""
from __future__ import annotations

import re

import pytest

from kolosal.toolcalls import (
    ToolFamily,
    detect_tool_family,
    mistral_call_id,
    new_call_id,
    template_has_reasoning,
)


@pytest.mark.parametrize(("snippet", "architecture", "family"), [
    ("{{ '[TOOL_CALLS]' + tool_call.function.name + '[ARGS]' }}", "llama", ToolFamily.MISTRAL_ARGS),
    ('{{ "[TOOL_CALLS][" }}{% for m in messages %}[INST]', "llama", ToolFamily.MISTRAL),
    ("<|im_start|>{% if tools %}<tool_call>{% endif %}", "llama", ToolFamily.HERMES),  # Hermes 3
    ("<|start_header_id|>ipython<|end_header_id|><|python_tag|>", "llama", ToolFamily.LLAMA3),
    ("<start_of_turn>user", "gemma3", ToolFamily.GEMMA),
    ("<|im_start|>user", "phi3", ToolFamily.HERMES),
    ("[INST] {{ message['content'] }} [/INST]", "llama", ToolFamily.MISTRAL),
    ("{{ messages }}", "gemma3n", ToolFamily.GEMMA),
    ("{{ messages }}", "qwen3", ToolFamily.HERMES),
    ("{{ messages }}", "llama", ToolFamily.JSON),
    (None, "granite", ToolFamily.JSON),
])
def test_detection(snippet: str | None, architecture: str, family: ToolFamily) -> None:
    assert detect_tool_family(snippet, architecture) is family


def test_reasoning_templates() -> None:
    assert template_has_reasoning("{{ content.split('</think>')[-1] }}")
    assert not template_has_reasoning("<|im_start|>")
    assert not template_has_reasoning(None)


def test_ids() -> None:
    many = {new_call_id() for _ in range(200)}
    assert len(many) == 200 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in many)
    assert re.fullmatch(r"[A-Za-z0-9]{9}", new_call_id(ToolFamily.MISTRAL_ARGS))
    assert mistral_call_id("call_abc") == mistral_call_id("call_abc") != mistral_call_id("call_abd")
    assert re.fullmatch(r"[A-Za-z0-9]{9}", mistral_call_id("call_abc"))
