"""The grammar engine's view of a model's vocabulary: an llguidance tokenizer built from
the GGUF's own tokens (bytes from libllama, never a downloaded tokenizer)."""
from __future__ import annotations

from .guidance import GrammarTokenizer, new_tokenizer
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


def build_grammar_tokenizer(vocab: Vocab, eog_tokens: list[int]) -> GrammarTokenizer:
    """The vocabulary's llguidance tokenizer, tokenizing with libllama's own llama_tokenize
    (through ``kolosal_llg_tokenize``). About a second for a 262k vocabulary, with the GIL
    released for all but collecting the token bytes: build once per model, in a worker.
    A vocabulary whose tokenizer changes a lone "a" (a leading space added) is tokenized
    greedily over the trie instead, as llguidance's own binding would need a sentinel for."""
    ffi, native_lib = vocab._ffi, vocab._lib
    round_trip = b"".join(vocab.token_to_piece(t) for t in vocab.tokenize("a", False, False))
    tokenize_fn = (int(ffi.cast("uintptr_t", ffi.addressof(native_lib, "kolosal_llg_tokenize")))
                   if round_trip == b"a" else None)
    return new_tokenizer(token_bytes_for_grammar(vocab), eog_tokens, tokenize_fn,
                         int(ffi.cast("uintptr_t", vocab._ptr)), keep=(vocab,))
