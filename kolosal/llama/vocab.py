"""Tokenizer access: text <-> token ids, token pieces as bytes (text is made above)."""
from __future__ import annotations

from typing import Any


class TokenOutOfRangeError(ValueError):
    """A token id outside the vocabulary: libllama would throw across its C API (an abort)."""


class Vocab:
    """Borrowed view of a model's llama_vocab; valid while the model is open. Every call
    that takes token ids checks them first: libllama indexes its token table with
    ``.at()``, and the exception it throws for a bad id ends the process."""

    def __init__(self, ffi: Any, lib: Any, ptr: Any) -> None:
        self._ffi, self._lib, self._ptr = ffi, lib, ptr
        self.n_tokens = int(lib.llama_vocab_n_tokens(ptr))
        self.bos = int(lib.llama_vocab_bos(ptr))
        self.eos = int(lib.llama_vocab_eos(ptr))
        self.eot = int(lib.llama_vocab_eot(ptr))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(ptr))
        self._pieces: dict[int, bytes] = {}
        self._eog: tuple[int, ...] | None = None  # every end-of-generation id, found once
        self._eog_set: frozenset[int] = frozenset()

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Tokenize text; ``add_special`` adds BOS when the model wants it, ``parse_special``
        turns control-token text (e.g. ``<start_of_turn>``) into control tokens."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = self._ffi.new("llama_token[]", capacity)
        count = self._lib.llama_tokenize(self._ptr, data, len(data), tokens, capacity,
                                         add_special, parse_special)
        if count < 0:
            if count == -(2**31):
                raise ValueError("text is too long to tokenize")
            capacity = -count
            tokens = self._ffi.new("llama_token[]", capacity)
            count = self._lib.llama_tokenize(self._ptr, data, len(data), tokens, capacity,
                                             add_special, parse_special)
        return list(self._ffi.unpack(tokens, count))

    def _check(self, token: int) -> None:
        if not 0 <= token < self.n_tokens:
            raise TokenOutOfRangeError(f"token id {token} is outside the vocabulary (0-{self.n_tokens - 1})")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached: called once per generated token)."""
        if not special:
            cached = self._pieces.get(token)
            if cached is not None:
                return cached
        self._check(token)
        buf = self._ffi.new("char[]", 64)
        size = self._lib.llama_token_to_piece(self._ptr, token, buf, 64, 0, special)
        if size < 0:
            buf = self._ffi.new("char[]", -size)
            size = self._lib.llama_token_to_piece(self._ptr, token, buf, -size, 0, special)
        piece = bytes(self._ffi.buffer(buf, size))
        if not special:
            self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: list[int], remove_special: bool = False,
                   unparse_special: bool = False) -> bytes:
        if tokens:
            self._check(min(tokens))
            self._check(max(tokens))
        array = self._ffi.new("llama_token[]", tokens)
        capacity = max(16, len(tokens) * 8)
        buf = self._ffi.new("char[]", capacity)
        size = self._lib.llama_detokenize(self._ptr, array, len(tokens), buf, capacity,
                                          remove_special, unparse_special)
        if size < 0:
            capacity = -size
            buf = self._ffi.new("char[]", capacity)
            size = self._lib.llama_detokenize(self._ptr, array, len(tokens), buf, capacity,
                                              remove_special, unparse_special)
        return bytes(self._ffi.buffer(buf, size))

    def is_eog(self, token: int) -> bool:
        """End-of-generation (EOS, EOT, ...): one of ``eog_tokens``."""
        self._check(token)
        self.eog_tokens()
        return token in self._eog_set

    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token id, ascending: libllama is asked about each id once
        (a large vocabulary takes some tens of ms), on first use."""
        if self._eog is None:
            is_eog, ptr = self._lib.llama_vocab_is_eog, self._ptr
            self._eog = tuple(token for token in range(self.n_tokens) if is_eog(ptr, token))
            self._eog_set = frozenset(self._eog)
        return self._eog

    def token_text(self, token: int) -> str:
        self._check(token)
        text = self._ffi.string(self._lib.llama_vocab_get_text(self._ptr, token))
        return str(text.decode("utf-8", "replace"))
