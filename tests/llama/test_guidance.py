"""llguidance through its C ABI (kolosal/llama/guidance.py): the grammar tokenizer of a real
vocabulary is built with the GIL released, and its matchers accept exactly the documents of
their grammar."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from kolosal.llama.grammar import build_grammar_tokenizer, token_bytes_for_grammar
from kolosal.llama.guidance import ParserLimits, new_matcher, new_tokenizer
from kolosal.toolcalls.grammar import json_schema_grammar

pytestmark = pytest.mark.model

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}


@pytest.fixture(scope="module")
def tokenizer(llama_model: Any) -> Any:
    vocab = llama_model.vocab
    return build_grammar_tokenizer(vocab, [vocab.eos])


def test_building_the_tokenizer_lets_other_python_threads_run(llama_model: Any) -> None:
    """The C call that builds the trie and the slicer's partitions (~0.5-1 s for Gemma's 262k
    tokens) runs without the GIL: a Python thread counting in a loop keeps counting during
    it. Through the pyo3 constructor the count stayed where it was for the whole build."""
    vocab = llama_model.vocab
    tokens = token_bytes_for_grammar(vocab)  # the Python part, before the C call
    counted = [0]
    running = threading.Event()
    stop = threading.Event()

    def count() -> None:
        running.set()
        while not stop.is_set():
            counted[0] += 1

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    running.wait()
    before = counted[0]
    built = new_tokenizer(tokens, [vocab.eos], None, 0)
    during = counted[0] - before
    stop.set()
    counter.join()
    assert built.vocab_size == vocab.n_tokens
    # Holding the GIL, the counter gets at most a switch interval's worth in before the call
    # takes it; released, it counts for the whole build (millions of iterations).
    assert during > 100_000, during


def test_a_matcher_accepts_its_documents_and_refuses_others(llama_model: Any, tokenizer: Any) -> None:
    vocab = llama_model.vocab
    grammar = json_schema_grammar(SCHEMA)
    good = new_matcher(tokenizer, grammar, ParserLimits())
    assert not good.is_error, good.error
    assert good.consume_tokens(vocab.tokenize('{"n": 42}', False, False))
    assert good.is_accepting and good.is_stopped

    bad = new_matcher(tokenizer, grammar, ParserLimits())
    assert not bad.consume_tokens(vocab.tokenize('{"m": 42}', False, False))
    assert bad.is_error and bad.error


def test_the_mask_allows_exactly_the_tokens_that_can_come_next(llama_model: Any, tokenizer: Any) -> None:
    vocab = llama_model.vocab
    matcher = new_matcher(tokenizer, json_schema_grammar(SCHEMA), ParserLimits())
    mask = np.zeros(tokenizer.mask_words, dtype=np.int32)
    assert matcher.fill_mask(mask.ctypes.data)
    allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab.n_tokens])
    assert len(allowed) > 0
    # The grammar's compact JSON forces '{"n":' first, tokenized as the model would: each
    # allowed token is a piece of that text (llguidance allows the canonical tokenization)
    for token in allowed.tolist():
        assert b'{"n":'.startswith(vocab.token_to_piece(token)), (token, vocab.token_to_piece(token))
    refused = vocab.tokenize("[", False, False)
    assert refused[0] not in allowed.tolist()


def test_a_tokenizer_needs_an_end_of_generation_token(llama_model: Any) -> None:
    with pytest.raises(ValueError, match="end-of-generation"):
        new_tokenizer([b"a", b"b"], [], None, 0)
