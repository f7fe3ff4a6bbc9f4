"""Which tool-call format a model writes, chosen from its chat template and architecture.

Models are trained on one way of writing a call; the chat template that shipped with the
GGUF shows which (it renders earlier calls in that same syntax). Detection looks for each
family's markers in the template text, most specific first, and falls back on the
architecture when the template says nothing (our built-in templates included).
"""
from __future__ import annotations

import enum
import hashlib
import secrets
import string
from collections.abc import Callable, Iterable

_ALNUM = string.ascii_letters + string.digits


class ToolFamily(enum.Enum):
    """A tool-call output format (see the README's "Tool calling and reasoning formats")."""
    HERMES = "hermes"              # <tool_call>{"name": .., "arguments": {..}}</tool_call>  (Qwen, Hermes)
    LLAMA3 = "llama3"              # [<|python_tag|>]{"name": .., "parameters": {..}}
    MISTRAL = "mistral"            # [TOOL_CALLS][{"name": .., "arguments": {..}}, ..]      (Nemo, v3)
    MISTRAL_ARGS = "mistral_args"  # [TOOL_CALLS]name[ARGS]{..}                  (Small 3.2, Devstral)
    GEMMA = "gemma"                # ```tool_call\n{"name": .., "arguments": {..}}\n```  (ours)
    JSON = "json"                  # a bare {"name": .., "arguments": {..}} object


# Marker texts of each family's calls. Some vocabularies hold them as single special
# tokens: the grammar must then ask for that token, and the engine must render it as text
# (libllama's token_to_piece drops control tokens unless asked) for the parser to see it.
TOOL_MARKERS: dict[ToolFamily, tuple[str, ...]] = {
    ToolFamily.HERMES: ("<tool_call>", "</tool_call>"),
    ToolFamily.LLAMA3: ("<|python_tag|>",),
    ToolFamily.MISTRAL: ("[TOOL_CALLS]",),
    ToolFamily.MISTRAL_ARGS: ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    ToolFamily.GEMMA: (),
    ToolFamily.JSON: (),
}
REASONING_MARKERS = ("<think>", "</think>")


def markers(family: ToolFamily | None, reasoning: bool) -> tuple[str, ...]:
    """The marker texts a generation in this format may contain (and its grammars may
    use): look each up in the vocabulary; those that are one special token go in the
    grammars' ``special_tokens`` and must be detokenized as text."""
    found = TOOL_MARKERS[family] if family is not None else ()
    return found + (REASONING_MARKERS if reasoning else ())


def special_token_ids(texts: Iterable[str], tokenize: Callable[[str], list[int]],
                      is_special: Callable[[int], bool]) -> dict[str, int]:
    """Which marker texts are one special token of the model: ``tokenize`` must parse
    special tokens (libllama's ``parse_special=True``) and ``is_special`` say whether the
    grammar tokenizer marks a token special. The result is the grammars'
    ``special_tokens``; the engine must render these ids as text."""
    found: dict[str, int] = {}
    for text in texts:
        ids = tokenize(text)
        if len(ids) == 1 and is_special(ids[0]):
            found[text] = ids[0]
    return found


def detect_tool_family(template: str | None, architecture: str = "") -> ToolFamily:
    """The format to parse (and, for templates without tool support, to ask for).

    ``template`` is the chat template source actually rendered (a built-in one included);
    ``architecture`` is the GGUF's ``general.architecture``.
    """
    source = template or ""
    if "[TOOL_CALLS]" in source:
        return ToolFamily.MISTRAL_ARGS if "[ARGS]" in source else ToolFamily.MISTRAL
    if "<tool_call>" in source:
        return ToolFamily.HERMES
    if "<|python_tag|>" in source or "<|start_header_id|>" in source:
        return ToolFamily.LLAMA3
    if "<start_of_turn>" in source:
        return ToolFamily.GEMMA
    if "<|im_start|>" in source:
        return ToolFamily.HERMES  # ChatML models (Qwen and most fine-tunes) know <tool_call>
    if "[INST]" in source:
        return ToolFamily.MISTRAL
    if architecture.startswith("gemma"):
        return ToolFamily.GEMMA
    if architecture.startswith("qwen"):
        return ToolFamily.HERMES
    return ToolFamily.JSON


def template_has_reasoning(template: str | None) -> bool:
    """Templates of reasoning models (Qwen3, QwQ, DeepSeek-R1 distills) handle
    ``<think>`` blocks; output is split into reasoning and content only for them."""
    return bool(template) and "</think>" in (template or "")


def starts_in_reasoning(prompt: str) -> bool:
    """True when the rendered prompt already opened ``<think>`` (DeepSeek-R1 distills, QwQ):
    the generation then starts inside the reasoning block, without the opening tag."""
    tail = prompt.rstrip()
    return tail.endswith("<think>")


def new_call_id(family: ToolFamily | None = None) -> str:
    """A fresh tool-call id: ``call_`` + 24 random characters (OpenAI's shape), or 9
    alphanumerics for Mistral, whose templates refuse any other id length."""
    if family in (ToolFamily.MISTRAL, ToolFamily.MISTRAL_ARGS):
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def mistral_call_id(call_id: str) -> str:
    """A client's call id as Mistral templates accept it (9 alphanumerics): kept when it
    already is one, otherwise a stable hash of it, so a call and its result still match."""
    if len(call_id) == 9 and call_id.isascii() and call_id.isalnum():
        return call_id
    digest = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        digest, rest = divmod(digest, len(_ALNUM))
        chars.append(_ALNUM[rest])
    return "".join(chars)
