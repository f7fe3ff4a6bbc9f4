"""The model-format layer of tool calling and reasoning (pure Python; no libllama, no server).

* ``families``: which call format a model writes (``detect_tool_family``), reasoning
  detection, call ids.
* ``render``: tools and tool-call history in the prompt (used by ``ChatTemplate.render``).
* ``output``: parse a generation into content, reasoning and tool calls, whole
  (``parse_output``) or streamed (``OutputParser``), identically.
* ``grammar``: llguidance grammars for enforced tool calls, response_format and GBNF.
"""
from .families import (
    ToolFamily,
    detect_tool_family,
    markers,
    mistral_call_id,
    new_call_id,
    special_token_ids,
    starts_in_reasoning,
    template_has_reasoning,
)
from .grammar import (
    GrammarError,
    ReasoningMode,
    gbnf_grammar,
    json_schema_grammar,
    response_format_grammar,
    tool_call_grammar,
    validate,
)
from .output import OutputFormat, OutputParser, offered_tool_names, parse_output
from .reasoning import ReasoningSplitter, split_reasoning
from .render import builtin_tool_messages, format_tool_calls, normalize_messages, tools_system_prompt
from .schema_bounds import JSON_OPTIONS
from .stream import ToolCallStreamParser, parse_tool_calls
from .types import (
    ContentDelta,
    ParsedOutput,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    aggregate,
)

__all__ = [
    "JSON_OPTIONS", "ContentDelta", "GrammarError", "OutputFormat", "OutputParser",
    "ParsedOutput", "ReasoningDelta", "ReasoningMode", "ReasoningSplitter", "StreamEvent",
    "ToolCall", "ToolCallArguments", "ToolCallStart", "ToolCallStreamParser", "ToolFamily",
    "aggregate", "builtin_tool_messages", "detect_tool_family", "format_tool_calls",
    "gbnf_grammar", "json_schema_grammar", "markers", "mistral_call_id", "new_call_id",
    "normalize_messages", "offered_tool_names", "parse_output", "parse_tool_calls",
    "response_format_grammar", "special_token_ids", "split_reasoning", "starts_in_reasoning",
    "template_has_reasoning", "tool_call_grammar", "tools_system_prompt", "validate",
]
