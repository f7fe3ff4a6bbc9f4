"""Shared test helpers: a tiny byte-level tokenizer for llguidance (no libllama needed),
grammar acceptance checks and random generation under a grammar's token masks."""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

TEMPLATES = Path(__file__).parent / "templates"
EOS = 256

# Markers some vocabularies hold as single special tokens (ids after the 256 bytes + EOS).
SPECIALS = {"<tool_call>": 257, "</tool_call>": 258, "<think>": 259, "</think>": 260,
            "[TOOL_CALLS]": 261, "[ARGS]": 262}


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


class _ByteVocab:
    """Tokens 0-255 are the single bytes, 256 is EOS, then the special markers (llguidance
    marks special tokens with a leading 0xFF byte)."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [b"\xff<eos>"]
        self.tokens += [b"\xff" + marker.encode() for marker in SPECIALS]
        self.eos_token_id = EOS
        self.bos_token_id = None
        self.special_token_ids = list(range(EOS, EOS + 1 + len(SPECIALS)))

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


TOKENIZER = LLTokenizer(TokenizerWrapper(_ByteVocab()))


def tokens(text: str, specials: Mapping[str, int] | None = None) -> list[int]:
    """Bytes, except markers listed in ``specials``, which become their token."""
    out: list[int] = []
    index = 0
    while index < len(text):
        for marker, token in (specials or {}).items():
            if text.startswith(marker, index):
                out.append(token)
                index += len(marker)
                break
        else:
            out.extend(text[index].encode())
            index += 1
    return out


def accepts(grammar: str, text: str, specials: Mapping[str, int] | None = None) -> bool:
    """Is ``text`` (then EOS) a complete string of the grammar?"""
    matcher = LLMatcher(TOKENIZER, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    if not matcher.consume_tokens(tokens(text, specials)):
        return False
    return matcher.is_accepting() and matcher.consume_token(EOS)


_CLOSERS = set(b'"}],:0123456789\n')
_MARKER_TEXT = {token: marker for marker, token in SPECIALS.items()}


def sample(grammar: str, rng: random.Random, max_tokens: int = 4000) -> str | None:
    """A random string of the grammar, drawn token by token under its masks (favouring
    closing characters so strings end); None if it did not finish in ``max_tokens``."""
    matcher = LLMatcher(TOKENIZER, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    out = bytearray()
    for _ in range(max_tokens):
        bias = matcher.compute_logit_bias()
        allowed = [token for token, value in enumerate(bias) if value]
        assert allowed, "the grammar left no token to choose"
        if EOS in allowed and rng.random() < 0.5:
            assert matcher.consume_token(EOS)
            return out.decode("utf-8")
        closers = [token for token in allowed if token in _CLOSERS]
        pool = closers if closers and rng.random() < 0.4 else allowed
        token = rng.choice([t for t in pool if t != EOS] or pool)
        if token == EOS:
            assert matcher.consume_token(EOS)
            return out.decode("utf-8")
        assert matcher.consume_token(token), matcher.get_error()
        out += _MARKER_TEXT[token].encode() if token in _MARKER_TEXT else bytes([token])
        if matcher.is_stopped():
            return out.decode("utf-8")
    return None


def random_cuts(rng: random.Random, length: int, most: int = 12) -> list[int]:
    """Sorted, distinct positions strictly inside a text of ``length`` characters."""
    if length < 2:
        return []
    return sorted(rng.sample(range(1, length), k=rng.randint(1, min(most, length - 1))))
