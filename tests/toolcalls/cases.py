"""What real models write when they call tools (and when they do not), per family, with
the content and calls each text must parse to. Shared by the whole-text and the
streaming tests, which must agree on every one of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kolosal.toolcalls import ToolFamily

H, L, M, MA, G, J = (ToolFamily.HERMES, ToolFamily.LLAMA3, ToolFamily.MISTRAL,
                     ToolFamily.MISTRAL_ARGS, ToolFamily.GEMMA, ToolFamily.JSON)

TOOL_NAMES = frozenset({"get_current_temperature", "get_temperature_date", "get_weather",
                        "get_stock_fundamentals", "str_replace_editor", "search", "get_time"})


@dataclass(frozen=True)
class Case:
    name: str
    family: ToolFamily
    text: str
    content: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


QWEN_PARALLEL = (
    '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": '
    '"San Francisco, CA, USA"}}\n</tool_call>\n<tool_call>\n{"name": "get_temperature_date", '
    '"arguments": {"location": "San Francisco, CA, USA", "date": "2024-10-01"}}\n</tool_call>')
SF = {"location": "San Francisco, CA, USA"}
SF_DATE = {"location": "San Francisco, CA, USA", "date": "2024-10-01"}

CASES = [
    # Hermes / Qwen 2.5 / Qwen 3: <tool_call> JSON blocks.
    Case("qwen-parallel", H, QWEN_PARALLEL, "",
         [("get_current_temperature", SF), ("get_temperature_date", SF_DATE)]),
    Case("qwen-content-first", H,
         "I'll check the current weather in Paris for you.\n\n<tool_call>\n"
         '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
         "I'll check the current weather in Paris for you.",
         [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    Case("hermes2pro-arguments-first", H,
         '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n'
         "</tool_call>", "", [("get_stock_fundamentals", {"symbol": "TSLA"})]),
    Case("hermes-no-newlines-no-close", H,
         '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}', "",
         [("get_weather", {"city": "Oslo"})]),
    Case("hermes-arguments-as-string", H,
         '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>',
         "", [("get_weather", {"city": "Rome"})]),
    Case("hermes-text-after-call", H,
         '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\nThen I will answer.',
         "\nThen I will answer.", [("get_time", {})]),
    Case("hermes-python-dict-is-content", H,
         "<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n</tool_call>",
         "<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n</tool_call>"),
    Case("hermes-truncated-is-content", H,
         'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
         'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'),
    Case("hermes-unknown-tool-is-content", H,
         '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',
         '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>'),
    Case("hermes-plain-answer", H, "  The answer is <b>42</b>. Use `<tool_` tags {like this}.\n\n",
         "  The answer is <b>42</b>. Use `<tool_` tags {like this}.\n\n"),
    Case("hermes-marker-prefix-at-end", H, "Almost a marker: <tool_ca", "Almost a marker: <tool_ca"),
    # Llama 3.1 / 3.2 / 3.3: a bare JSON object with "parameters".
    Case("llama31-json", L,
         '{"name": "get_weather", "parameters": {"city": "San Francisco, CA", "unit": "fahrenheit"}}',
         "", [("get_weather", {"city": "San Francisco, CA", "unit": "fahrenheit"})]),
    Case("llama-python-tag", L,
         '<|python_tag|>{"name": "search", "parameters": {"query": "llama.cpp release"}}', "",
         [("search", {"query": "llama.cpp release"})]),
    Case("llama32-typed", L,
         '{"type": "function", "name": "get_weather", "parameters": {"city": "Lima"}}', "",
         [("get_weather", {"city": "Lima"})]),
    Case("llama-semicolon-parallel", L,
         '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
         '{"name": "get_weather", "parameters": {"city": "Tokyo"}}', "",
         [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]),
    Case("llama-json-content-stays", L,
         'Here is the data: {"name": "Alice", "age": 30} and {"x": [1, 2]}.',
         'Here is the data: {"name": "Alice", "age": 30} and {"x": [1, 2]}.'),
    Case("llama-pythonic-is-content", L, '[get_weather(city="Paris")]', '[get_weather(city="Paris")]'),
    # Mistral Nemo (v3 tokenizer): a JSON list after [TOOL_CALLS].
    Case("mistral-nemo-list", M,
         '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "format": "celsius"}, '
         '"id": "a1B2c3D4e"}, {"name": "get_time", "arguments": {}, "id": "f5G6h7I8j"}]', "",
         [("get_weather", {"city": "Paris", "format": "celsius"}), ("get_time", {})]),
    Case("mistral-content-first", M,
         'Sure.[TOOL_CALLS] [{"name": "search", "arguments": {"query": "weather"}}]', "Sure.",
         [("search", {"query": "weather"})]),
    Case("mistral-bad-list-is-content", M, '[TOOL_CALLS][{"name": "get_time"}, oops]',
         '[TOOL_CALLS][{"name": "get_time"}, oops]'),
    # Mistral Small 3.2 / Devstral / Magistral (v11+): name[ARGS]{...}.
    Case("mistral-small-call-id", MA,
         '[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "Paris"}', "",
         [("get_weather", {"city": "Paris"})]),
    Case("devstral-parallel", MA,
         'Let me look.[TOOL_CALLS]str_replace_editor[ARGS]{"command": "view", "path": "/repo"}'
         '[TOOL_CALLS]search[ARGS]{"query": "def main"}', "Let me look.",
         [("str_replace_editor", {"command": "view", "path": "/repo"}),
          ("search", {"query": "def main"})]),
    Case("mistral-args-bad-json-is-content", MA, "[TOOL_CALLS]search[ARGS]{query: 1}",
         "[TOOL_CALLS]search[ARGS]{query: 1}"),
    # Gemma (our built-in format): a ```tool_call fenced JSON block.
    Case("gemma-fence", G,
         'I will look it up.\n```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
         "\n```", "I will look it up.", [("get_weather", {"city": "Paris"})]),
    Case("gemma-two-fences", G,
         '```tool_call\n{"name": "get_time", "arguments": {}}\n```\n```tool_call\n'
         '{"name": "search", "arguments": {"query": "news"}}\n```', "",
         [("get_time", {}), ("search", {"query": "news"})]),
    Case("gemma-code-fence-stays", G, "```python\nprint('hi')\n```", "```python\nprint('hi')\n```"),
    Case("gemma-tool-code-is-content", G, "```tool_code\nget_weather(city='Paris')\n```",
         "```tool_code\nget_weather(city='Paris')\n```"),
    # Plain JSON fallback.
    Case("json-object", J, '{"name": "get_weather", "arguments": {"city": "Paris"}}', "",
         [("get_weather", {"city": "Paris"})]),
    Case("json-pretty", J, '{\n  "name": "search",\n  "arguments": {\n    "query": "x"\n  }\n}\n', "",
         [("search", {"query": "x"})]),
    Case("json-two-lines", J,
         '{"name": "get_time", "arguments": {}}\n{"name": "search", "arguments": {"query": "y"}}', "",
         [("get_time", {}), ("search", {"query": "y"})]),
    Case("json-content-object", J, '{"answer": 42}', '{"answer": 42}'),
]
