"""Chat templates: the built-in fallbacks render each family's exact turn format (newlines
included: they are part of the format the model was trained on), a GGUF's own template wins,
and templates run sandboxed."""
from __future__ import annotations

import pytest

from kolosal.chat_template import ChatTemplate, ChatTemplateError

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye"}]


def render_builtin(architecture: str, messages: list[dict[str, str]] = CONVERSATION) -> str:
    return ChatTemplate.for_model(None, architecture, "<bos>", "<eos>").render(messages)


def test_gemma_turns_fold_the_system_prompt_into_the_first_user_turn() -> None:
    assert render_builtin("gemma3") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHello!<end_of_turn>\n"
        "<start_of_turn>model\nHi.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_llama3_headers() -> None:
    assert render_builtin("llama") == (
        "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chatml_for_other_architectures() -> None:
    assert render_builtin("qwen2") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_no_generation_prompt_ends_after_the_last_turn() -> None:
    template = ChatTemplate.for_model(None, "gemma3", "<bos>", "<eos>")
    rendered = template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert rendered == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_the_models_own_template_wins() -> None:
    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{{ eos_token }}"
    template = ChatTemplate.for_model(own, "gemma3", "<bos>", "<eos>")
    assert not template.builtin
    assert template.render([{"role": "user", "content": "Hi"}]) == "[user] Hi\n<eos>"


def test_raise_exception_refuses_the_conversation() -> None:
    own = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok"
    template = ChatTemplate.for_model(own, "llama", "", "")
    with pytest.raises(ChatTemplateError, match="user first"):
        template.render([{"role": "assistant", "content": "x"}])


def test_templates_run_sandboxed() -> None:
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        ChatTemplate.for_model(hostile, "llama", "", "").render([{"role": "user", "content": "x"}])
