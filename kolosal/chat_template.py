"""Render chat messages into a prompt with the model's own Jinja chat template.

The GGUF's ``tokenizer.chat_template`` runs in jinja2's immutable sandbox with the helpers
Hugging Face provides (``raise_exception``, ``strftime_now``, ``tojson``). A model without
a template gets a built-in one chosen by architecture: Gemma's turn format for the gemma
family, Llama 3's header format for llama, ChatML for everything else.

Tools (``render(..., tools=...)``) reach a template that renders them through its ``tools``
variable, with messages in Hugging Face's shape; any other template (the built-ins
included) gets them as a system-prompt block in its model family's call format (see
``kolosal.toolcalls.render``).
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .toolcalls import (
    OutputFormat,
    ReasoningMode,
    ToolFamily,
    builtin_tool_messages,
    detect_tool_family,
    normalize_messages,
    offered_tool_names,
    starts_in_reasoning,
    template_has_reasoning,
)

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


def system_in_first_user(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """For a template that refuses the system role (Gemma 2's raises): the system text
    folded into the first user message, joined by a newline, as llama-server's jinja
    renderer does; None when there is no system message to fold."""
    if not messages or messages[0].get("role") != "system":
        return None
    system, rest = str(messages[0].get("content") or ""), [dict(m) for m in messages[1:]]
    for message in rest:
        if message.get("role") == "user":
            message["content"] = f"{system}\n{message.get('content') or ''}"
            return rest
    return [{"role": "user", "content": system}, *rest]


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


# Renders a template with one made-up tool: if the tool's name shows in the prompt, the
# template renders tools itself (the same capability probe llama.cpp runs).
_PROBE_TOOL = {"type": "function", "function": {
    "name": "kolosal_probe_function", "description": "probe",
    "parameters": {"type": "object", "properties": {"probe_argument": {"type": "string"}}}}}


@lru_cache(maxsize=32)
def template_renders_tools(source: str) -> bool:
    """Does this template put the ``tools`` it is given into the prompt?"""
    if "tools" not in source:
        return False
    try:
        rendered = _compile(source).render(
            messages=[{"role": "user", "content": "probe"}], tools=[_PROBE_TOOL],
            add_generation_prompt=True, bos_token="", eos_token="")
    except Exception:  # any failure means no usable tool support
        return False
    return "kolosal_probe_function" in str(rendered)


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    source: str
    bos_token: str
    eos_token: str
    builtin: bool = False
    architecture: str = ""

    @classmethod
    def for_model(cls, template: str | None, architecture: str, bos_token: str,
                  eos_token: str) -> ChatTemplate:
        if template:
            return cls(template, bos_token, eos_token, architecture=architecture)
        return cls(BUILTIN_TEMPLATES.get(architecture, CHATML_TEMPLATE), bos_token, eos_token,
                   builtin=True, architecture=architecture)

    @property
    def tool_family(self) -> ToolFamily:
        """The tool-call format this model writes (and our built-in tools block asks for)."""
        return detect_tool_family(self.source, self.architecture)

    @property
    def renders_tools(self) -> bool:
        """True when the template renders ``tools`` itself; otherwise tools go in as our
        built-in system-prompt block."""
        return template_renders_tools(self.source)

    @property
    def has_reasoning(self) -> bool:
        """A reasoning model's template (it handles ``<think>`` blocks)."""
        return template_has_reasoning(self.source)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               *, tools: Sequence[Mapping[str, Any]] | None = None, parallel_tool_calls: bool = True,
               extra: Mapping[str, Any] | None = None) -> str:
        """The prompt for ``messages`` (OpenAI shapes: assistant ``tool_calls`` with JSON-string
        arguments, ``role: "tool"`` results with ``tool_call_id``, ``content`` None or text).

        ``tools``: OpenAI function tools (``[{"type": "function", "function": {...}}]``); an
        empty list is the same as None. ``parallel_tool_calls`` only changes the wording of
        the built-in tools block. ``extra``: more template variables (e.g. Qwen3's
        ``enable_thinking``), never overriding the ones set here.
        """
        tools = list(tools) if tools else None
        family = self.tool_family
        if self.renders_tools:
            return self._render(normalize_messages(messages, family), tools,
                                add_generation_prompt, extra)
        prepared = builtin_tool_messages(messages, tools, family, parallel=parallel_tool_calls)
        try:
            return self._render(prepared, None, add_generation_prompt, extra)
        except ChatTemplateError:
            if not tools:
                folded = system_in_first_user(prepared)
                if folded is None:
                    raise
                return self._render(folded, None, add_generation_prompt, extra)
        # The template refused the system message we added (Gemma 2's does): put the
        # tools block in the first user turn instead.
        prepared = builtin_tool_messages(messages, tools, family, parallel=parallel_tool_calls,
                                         system_in_user=True)
        return self._render(prepared, None, add_generation_prompt, extra)

    def output_format(self, prompt: str, tools: Sequence[Mapping[str, Any]] | None = None,
                      tool_choice: Any = "auto", reasoning_inline: bool = False) -> OutputFormat:
        """How to parse what the model generates after ``prompt`` (the text ``render``
        returned): tool calls in this model's format when tools are offered (and
        ``tool_choice`` is not "none"), ``<think>`` split off for reasoning templates
        unless ``reasoning_inline``. ``tool_choice`` "required" or a named function means
        a grammar enforces calls: the output is calls only (a cut-off call is dropped)."""
        names = offered_tool_names(tools, tool_choice)
        reasoning = self.has_reasoning and not reasoning_inline
        enforced = tool_choice == "required" or isinstance(tool_choice, Mapping)
        return OutputFormat(tool_family=self.tool_family if names is not None else None,
                            tool_names=names, reasoning=reasoning,
                            starts_in_reasoning=reasoning and starts_in_reasoning(prompt),
                            calls_only=names is not None and enforced)

    def reasoning_mode(self, prompt: str) -> ReasoningMode:
        """What an enforced-output grammar must allow before the constrained part: nothing
        ("none"), an optional ``<think>`` block (a reasoning template), or the rest of a block
        the prompt already opened ("open")."""
        if not self.has_reasoning:
            return "none"
        return "open" if starts_in_reasoning(prompt) else "optional"

    def _render(self, messages: list[dict[str, Any]], tools: list[Mapping[str, Any]] | None,
                add_generation_prompt: bool, extra: Mapping[str, Any] | None) -> str:
        # enable_thinking: true unless a request says otherwise, as llama-server renders
        # (a template testing "not enable_thinking" would otherwise close the think block)
        # date_string: today, as llama-server passes it (Llama 3.x templates print it)
        variables: dict[str, Any] = {"enable_thinking": True,
                                     "date_string": datetime.date.today().strftime("%d %b %Y"),
                                     **(extra or {})}
        variables.update(messages=messages, add_generation_prompt=add_generation_prompt,
                         bos_token=self.bos_token, eos_token=self.eos_token)
        if tools is not None:
            # Left undefined otherwise: templates test "tools is defined" far more often
            # than they survive iterating a None.
            variables["tools"] = tools
        try:
            return str(_compile(self.source).render(**variables))
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, AttributeError, LookupError) as error:
            # A template that breaks on this conversation is the request's problem (400),
            # not a server failure.
            raise ChatTemplateError(f"chat template failed: {error}") from error
