"""The grammars on the default model's own vocabulary (the llguidance tokenizer the engine
builds from the GGUF): each family's call, as the model's tokenizer splits it, is accepted,
and markers that are not special tokens there are spelled out in text."""
from __future__ import annotations

import json
from typing import Any

import pytest

from kolosal.llama.guidance import ParserLimits, new_matcher
from kolosal.toolcalls import (
    ToolFamily,
    format_tool_calls,
    markers,
    response_format_grammar,
    special_token_ids,
    tool_call_grammar,
)

TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def vocab_and_tokenizer(llama_model: Any) -> tuple[Any, Any]:
    from kolosal.llama.grammar import CONTROL_PREFIX, build_grammar_tokenizer, token_bytes_for_grammar

    vocab = llama_model.vocab
    pieces = token_bytes_for_grammar(vocab)
    special = {token for token, piece in enumerate(pieces) if piece.startswith(CONTROL_PREFIX)}
    return (vocab, special), build_grammar_tokenizer(vocab, [vocab.eos])


def accepted(tokenizer: Any, grammar: str, ids: list[int]) -> bool:
    matcher = new_matcher(tokenizer, grammar, ParserLimits())
    return matcher.consume_tokens(ids) and matcher.is_accepting


@pytest.mark.parametrize("family", list(ToolFamily))
def test_each_family_on_the_real_vocabulary(family: ToolFamily, vocab_and_tokenizer: Any) -> None:
    (vocab, special), tokenizer = vocab_and_tokenizer
    found = special_token_ids(markers(family, reasoning=True),
                              lambda text: vocab.tokenize(text, add_special=False, parse_special=True),
                              special.__contains__)
    assert found == {}  # Gemma 3 has none of these markers as a token
    grammar = tool_call_grammar(family, TOOLS, reasoning="optional", special_tokens=found)
    text = format_tool_calls(family, [("get_weather", '{"city": "Paris"}')])
    assert accepted(tokenizer, grammar, vocab.tokenize(text, add_special=False))
    assert accepted(tokenizer, grammar, vocab.tokenize("<think>Paris.</think>\n" + text, add_special=False))
    assert not accepted(tokenizer, grammar, vocab.tokenize("Sure! " + text, add_special=False))


def test_json_schema_on_the_real_vocabulary(vocab_and_tokenizer: Any) -> None:
    (vocab, _), tokenizer = vocab_and_tokenizer
    grammar = response_format_grammar({"type": "json_schema", "json_schema": {
        "name": "w", "schema": TOOLS[0]["function"]["parameters"]}})
    assert grammar is not None
    assert accepted(tokenizer, grammar, vocab.tokenize(json.dumps({"city": "Paris"}), add_special=False))
    assert not accepted(tokenizer, grammar, vocab.tokenize('{"town": "Paris"}', add_special=False))


def test_special_token_ids_keeps_single_special_tokens_only() -> None:
    vocabulary = {"<tool_call>": [7], "[TOOL_CALLS]": [1, 2], "<think>": [9]}
    found = special_token_ids(vocabulary, vocabulary.__getitem__, lambda token: token != 9)
    assert found == {"<tool_call>": 7}
