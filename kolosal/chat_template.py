"""Render chat messages into a prompt with the model's own Jinja chat template.

The GGUF's ``tokenizer.chat_template`` runs in jinja2's immutable sandbox with the helpers
Hugging Face provides (``raise_exception``, ``strftime_now``, ``tojson``). A model without
a template gets a built-in one chosen by architecture: Gemma's turn format for the gemma
family, Llama 3's header format for llama, ChatML for everything else.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The built-ins use no whitespace control ("{%-"): it would also strip the newlines that
# end the literal text before a tag ("<end_of_turn>\n{%- endfor"), and those newlines are
# part of each model's turn format.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{{ (first_user_prefix if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

BUILTIN_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE,
                     "gemma3n": GEMMA_TEMPLATE, "llama": LLAMA3_TEMPLATE}


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception) or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(format_string: str) -> str:
    return datetime.datetime.now().strftime(format_string)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent)
    return environment.from_string(source)


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    source: str
    bos_token: str
    eos_token: str
    builtin: bool = False

    @classmethod
    def for_model(cls, template: str | None, architecture: str, bos_token: str,
                  eos_token: str) -> ChatTemplate:
        if template:
            return cls(template, bos_token, eos_token)
        return cls(BUILTIN_TEMPLATES.get(architecture, CHATML_TEMPLATE), bos_token, eos_token,
                   builtin=True)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        try:
            return str(_compile(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token))
        except ChatTemplateError:
            raise
        except TemplateError as error:
            raise ChatTemplateError(f"chat template failed: {error}") from error
