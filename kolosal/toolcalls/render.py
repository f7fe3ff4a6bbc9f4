"""Tools and tool-call history in the prompt.

Two paths, chosen by whether the chat template renders tools itself:

* Tool-aware templates (Qwen, Llama 3.1+, Mistral, Hermes ...) get the request's tools in
  their ``tools`` variable and the messages in Hugging Face's shape (``normalize_messages``):
  call arguments as objects, not JSON strings; ``content: null`` as ``""``; Mistral call
  ids as the 9 alphanumerics its templates insist on.
* Templates without tool support (our built-in Gemma / Llama 3 / ChatML fallbacks, and
  any GGUF template that ignores ``tools``) get plain text (``builtin_tool_messages``): a
  system-prompt block listing the tools and the exact call format of the model's family,
  earlier calls written back in that format, and tool results as a user turn of
  ``<tool_response>`` blocks.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .families import ToolFamily, mistral_call_id

Message = dict[str, Any]

_MISTRAL = (ToolFamily.MISTRAL, ToolFamily.MISTRAL_ARGS)

# What each family's call looks like, as the built-in system prompt shows it.
_CALL_SHAPES = {
    ToolFamily.HERMES: '<tool_call>\n{"name": "<function name>", "arguments": <arguments object>}\n'
                       '</tool_call>',
    ToolFamily.LLAMA3: '{"name": "<function name>", "parameters": <arguments object>}',
    ToolFamily.MISTRAL: '[TOOL_CALLS][{"name": "<function name>", "arguments": <arguments object>}]',
    ToolFamily.MISTRAL_ARGS: "[TOOL_CALLS]<function name>[ARGS]<arguments object>",
    ToolFamily.GEMMA: '```tool_call\n{"name": "<function name>", "arguments": <arguments object>}\n```',
    ToolFamily.JSON: '{"name": "<function name>", "arguments": <arguments object>}',
}
_SEVERAL_CALLS = {
    ToolFamily.HERMES: "For several calls, write one block after another.",
    ToolFamily.LLAMA3: "For several calls, write one object per line.",
    ToolFamily.MISTRAL: "For several calls, put them all in that one list.",
    ToolFamily.MISTRAL_ARGS: "For several calls, repeat it once per call.",
    ToolFamily.GEMMA: "For several calls, write one block after another.",
    ToolFamily.JSON: "For several calls, write one object per line.",
}


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], family: ToolFamily,
                        parallel: bool = True) -> str:
    """The built-in tools block for templates that do not render tools themselves."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    several = _SEVERAL_CALLS[family] if parallel else "Make at most one call."
    return ("# Tools\n\n"
            "You can call these functions. Each line gives one function's name, description "
            "and the JSON Schema of its arguments:\n"
            f"<tools>\n{listing}\n</tools>\n\n"
            "To call a function, reply with exactly this, the arguments being a JSON object "
            f"that matches the function's schema:\n{_CALL_SHAPES[family]}\n"
            f"{several} Call only the functions listed above. When no function is needed, "
            "answer normally.")


def _arguments_object(arguments: Any) -> Any:
    """OpenAI's JSON-string arguments as the object Hugging Face templates expect (a
    string that is not a JSON object is left as it is)."""
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return arguments
        return value if isinstance(value, dict) else arguments
    return arguments


def format_tool_calls(family: ToolFamily, calls: Sequence[tuple[str, Any]]) -> str:
    """``(name, arguments)`` calls written exactly as a model of ``family`` writes them
    (and as the enforced-call grammar makes it write them)."""
    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    objects = [(name, _arguments_object(arguments)) for name, arguments in calls]
    if family is ToolFamily.MISTRAL:
        return "[TOOL_CALLS]" + dumps([{"name": n, "arguments": a} for n, a in objects])
    if family is ToolFamily.MISTRAL_ARGS:
        return "".join(f"[TOOL_CALLS]{n}[ARGS]{dumps(a)}" for n, a in objects)
    key = "parameters" if family is ToolFamily.LLAMA3 else "arguments"
    bodies = [dumps({"name": n, key: a}) for n, a in objects]
    if family is ToolFamily.HERMES:
        bodies = [f"<tool_call>\n{body}\n</tool_call>" for body in bodies]
    elif family is ToolFamily.GEMMA:
        bodies = [f"```tool_call\n{body}\n```" for body in bodies]
    return "\n".join(bodies)


def _text(content: Any) -> str:
    """Message content as text: None is "", a list of parts is its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, Mapping) and part.get("type") == "text")
    return str(content)


def normalize_messages(messages: Sequence[Mapping[str, Any]], family: ToolFamily) -> list[Message]:
    """Messages in the shape Hugging Face chat templates expect (see module doc)."""
    out: list[Message] = []
    for message in messages:
        copy = dict(message)
        copy["content"] = _text(message.get("content"))
        if message.get("tool_calls"):
            copy["tool_calls"] = [_hf_call(call, family) for call in message["tool_calls"]]
        if family in _MISTRAL and isinstance(message.get("tool_call_id"), str):
            copy["tool_call_id"] = mistral_call_id(message["tool_call_id"])
        out.append(copy)
    return out


def _hf_call(call: Mapping[str, Any], family: ToolFamily) -> Message:
    function = dict(call.get("function") or {})
    function["arguments"] = _arguments_object(function.get("arguments", {}))
    hf: Message = {"type": call.get("type", "function"), "function": function}
    if "id" in call:
        hf["id"] = mistral_call_id(str(call["id"])) if family in _MISTRAL else call["id"]
    return hf


def builtin_tool_messages(messages: Sequence[Mapping[str, Any]],
                          tools: Sequence[Mapping[str, Any]] | None, family: ToolFamily, *,
                          parallel: bool = True, system_in_user: bool = False) -> list[Message]:
    """Messages with tools, calls and results written as plain text (see module doc).

    ``system_in_user``: put the tools block at the start of the first user message, for
    templates that refuse a system message. Messages without tool parts pass unchanged.
    """
    names_by_id: dict[str, str] = {}
    out: list[Message] = []
    results: list[str] = []  # consecutive tool results, merged into one user turn
    for message in messages:
        role = message.get("role")
        if role == "tool":
            results.append(_tool_response(message, names_by_id))
            continue
        copy = dict(message)
        copy["content"] = _text(message.get("content"))
        if results:
            merged = "\n".join(results)
            results = []
            if role == "user":
                copy["content"] = merged + "\n\n" + copy["content"]
            else:
                out.append({"role": "user", "content": merged})
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                names_by_id[str(call.get("id", ""))] = str(function.get("name", ""))
                calls.append((str(function.get("name", "")), function.get("arguments", "{}")))
            copy.pop("tool_calls")
            written = format_tool_calls(family, calls)
            copy["content"] = f"{copy['content']}\n{written}" if copy["content"] else written
        out.append(copy)
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    if tools:
        _add_tools_block(out, tools_system_prompt(tools, family, parallel), system_in_user)
    return out


def _tool_response(message: Mapping[str, Any], names_by_id: Mapping[str, str]) -> str:
    name = names_by_id.get(str(message.get("tool_call_id", ""))) or message.get("name")
    body: dict[str, Any] = {"name": name} if name else {}
    body["content"] = _text(message.get("content"))
    return f"<tool_response>\n{json.dumps(body, ensure_ascii=False)}\n</tool_response>"


def _add_tools_block(messages: list[Message], block: str, in_user: bool) -> None:
    if messages and messages[0].get("role") == "system":
        if not in_user:
            messages[0]["content"] = f"{messages[0]['content']}\n\n{block}"
            return
        system = messages.pop(0)  # fold the system text into the first user turn too
        block = f"{system['content']}\n\n{block}"
    if in_user:
        for message in messages:
            if message.get("role") == "user":
                message["content"] = f"{block}\n\n{message['content']}"
                return
    messages.insert(0, {"role": "system", "content": block})
