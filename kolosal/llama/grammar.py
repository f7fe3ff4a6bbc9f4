"""The grammar engine's view of a model's vocabulary: an llguidance tokenizer built from
the GGUF's own tokens (bytes from libllama, never a downloaded tokenizer)."""
from __future__ import annotations

from typing import Any

from .vocab import Vocab

CONTROL_PREFIX = b"\xff"  # llguidance's marker for special tokens, which text never matches


def token_bytes_for_grammar(vocab: Vocab) -> list[bytes]:
    """Every token's bytes, control tokens (and ``<...>`` user-defined ones) marked as
    special so that a grammar can only produce them by name."""
    native_lib, ffi = vocab._lib, vocab._ffi
    control = native_lib.LLAMA_TOKEN_ATTR_CONTROL
    user_defined = native_lib.LLAMA_TOKEN_ATTR_USER_DEFINED
    buffer = ffi.new("char[]", 1024)
    tokens: list[bytes] = []
    for token in range(vocab.n_tokens):
        size = native_lib.llama_token_to_piece(vocab._ptr, token, buffer, 1024, 0, True)
        piece = bytes(ffi.buffer(buffer, max(size, 0)))
        attr = int(native_lib.llama_vocab_get_attr(vocab._ptr, token))
        if _is_special(attr, piece, control, user_defined):
            piece = CONTROL_PREFIX + piece
        tokens.append(piece)
    return tokens


def _is_special(attr: int, piece: bytes, control: int, user_defined: int) -> bool:
    return bool(attr & control or (attr & user_defined and piece.startswith(b"<") and piece.endswith(b">")))


def is_grammar_special(vocab: Vocab, token: int) -> bool:
    """Whether the grammar tokenizer marks this token special (grammars name it by id)."""
    native_lib = vocab._lib
    vocab._check(token)
    attr = int(native_lib.llama_vocab_get_attr(vocab._ptr, token))
    return _is_special(attr, vocab.token_to_piece(token, special=True),
                       native_lib.LLAMA_TOKEN_ATTR_CONTROL, native_lib.LLAMA_TOKEN_ATTR_USER_DEFINED)


def build_lltokenizer(vocab: Vocab, eog_tokens: list[int]) -> Any:
    """An ``llguidance.LLTokenizer`` that tokenizes with libllama's own llama_tokenize.
    Takes about a second for a 262k vocabulary: build once per model, off the event loop."""
    import llguidance

    ffi, native_lib = vocab._ffi, vocab._lib
    tokenize_address = int(ffi.cast("uintptr_t", ffi.addressof(native_lib, "llama_tokenize")))
    vocab_address = int(ffi.cast("uintptr_t", vocab._ptr))
    return llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=token_bytes_for_grammar(vocab), vocab_ptr=vocab_address,
        tokenize_fptr=tokenize_address, eos_token=eog_tokens, slices=None)
