"""llguidance's C ABI, bound with cffi: the grammar engine's tokenizer and matchers with
the GIL released for every call.

The ``llguidance`` Python package ships one Rust library that exports both its pyo3 classes
and the C ABI of ``llguidance.h``. The pyo3 constructors hold the GIL for their whole run:
building the tokenizer of a 262k vocabulary (its token trie and the slicer's partitions)
held it for 0.8-1.6 s, long enough for every request, stream and ``/health/live`` probe of
the server to stall. Through the C ABI the same code runs while the event loop and the
other engines go on. The pyo3 API stays in use for what needs no tokenizer (schema and Lark
compilation, validation: ``kolosal.toolcalls``).

Struct layouts are those of llguidance 1.9 (``parser/llguidance.h``); the version is checked
when the library is first used, and so is the layout (the library's own defaults read back
through our declaration), so a different build is refused with a clear error instead of
corrupting memory.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi

_CDEF = """
typedef struct LlgTokenizer LlgTokenizer;
typedef struct LlgMatcher LlgMatcher;
typedef uint32_t LlgToken;
typedef size_t (*LlgTokenizeFn)(const void *user_data, const uint8_t *bytes, size_t bytes_len,
                                uint32_t *output_tokens, size_t output_tokens_len);
typedef struct LlgParserLimits {
  size_t max_items_in_row;
  uint64_t initial_lexer_fuel;
  uint64_t step_lexer_fuel;
  size_t step_max_items;
  size_t max_lexer_states;
  size_t max_grammar_size;
  bool precompute_large_lexemes;
  bool verbose_errors;
} LlgParserLimits;
typedef struct LlgConstraintInit {
  const LlgTokenizer *tokenizer;
  uint32_t log_buffer_level;
  uint32_t log_stderr_level;
  bool ff_tokens_ok;
  bool backtrack_ok;
  LlgParserLimits limits;
} LlgConstraintInit;
typedef struct LlgTokenizerInitV2 {
  size_t struct_size;
  uint32_t vocab_size;
  LlgToken tok_eos;
  const uint32_t *token_lens;
  const uint8_t *token_bytes;
  const char *tokenizer_json;
  bool tokenize_assumes_string;
  LlgTokenizeFn tokenize_fn;
  bool use_approximate_greedy_tokenize_fn;
  const void *tokenize_user_data;
  const char *const *slices;
  const LlgToken *tok_eos_extra;
  uint32_t tok_eos_extra_count;
} LlgTokenizerInitV2;
const char *llg_get_version(void);
void llg_constraint_init_set_defaults(LlgConstraintInit *init, const LlgTokenizer *tokenizer);
LlgTokenizer *llg_new_tokenizer_v2(const LlgTokenizerInitV2 *tok_init, char *error_string,
                                   size_t error_string_len);
void llg_free_tokenizer(LlgTokenizer *tok);
LlgMatcher *llg_new_matcher(const LlgConstraintInit *init, const char *constraint_type,
                            const char *data);
void llg_free_matcher(LlgMatcher *matcher);
int32_t llg_matcher_compute_mask_into(LlgMatcher *matcher, uint32_t *mask_dest, size_t mask_byte_len);
size_t llg_matcher_get_mask_byte_size(const LlgMatcher *matcher);
int32_t llg_matcher_consume_token(LlgMatcher *matcher, uint32_t token);
int32_t llg_matcher_consume_tokens(LlgMatcher *matcher, const uint32_t *tokens, size_t n_tokens);
const char *llg_matcher_get_error(LlgMatcher *matcher);
bool llg_matcher_is_error(const LlgMatcher *matcher);
bool llg_matcher_is_accepting(LlgMatcher *matcher);
bool llg_matcher_is_stopped(const LlgMatcher *matcher);
"""

SUPPORTED_VERSION = "1.9."  # the layouts above
# llg_constraint_init_set_defaults' documented limits: read back through our layout, they
# prove it matches the library's.
_DEFAULT_LIMITS = {"max_items_in_row": 2000, "initial_lexer_fuel": 1_000_000,
                   "step_lexer_fuel": 200_000, "step_max_items": 50_000,
                   "max_lexer_states": 250_000, "max_grammar_size": 500_000}


class GuidanceLibraryError(RuntimeError):
    """The installed llguidance does not have the C ABI this module was written for."""


@dataclass(frozen=True)
class ParserLimits:
    """What one grammar may cost (llguidance's ParserLimits); None keeps the default."""

    step_lexer_fuel: int | None = None
    step_max_items: int | None = None
    max_grammar_size: int | None = None
    verbose_errors: bool = True


_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_lib: Any = None
_lib_lock = threading.Lock()


def _library() -> Any:
    global _lib
    with _lib_lock:
        if _lib is None:
            import llguidance

            path = next(Path(llguidance.__file__).parent.glob("_lib*.so"), None)
            if path is None:
                raise GuidanceLibraryError("llguidance's native library (_lib*.so) was not found")
            lib = _ffi.dlopen(str(path))
            _check(lib)
            _lib = lib
        return _lib


def _check(lib: Any) -> None:
    version = _ffi.string(lib.llg_get_version()).decode()  # "llguidance@1.9.1 derivre@0.3.13"
    if not version.split()[0].removeprefix("llguidance@").startswith(SUPPORTED_VERSION):
        raise GuidanceLibraryError(f"{version} is installed; kolosal binds llguidance "
                                   f"{SUPPORTED_VERSION}x's C ABI (pip install 'llguidance~=1.9.1')")
    init = _ffi.new("LlgConstraintInit *")
    lib.llg_constraint_init_set_defaults(init, _ffi.NULL)
    read = {name: int(getattr(init.limits, name)) for name in _DEFAULT_LIMITS}
    if read != _DEFAULT_LIMITS:
        raise GuidanceLibraryError(f"{version}: LlgConstraintInit's layout differs from the "
                                   f"declared one (defaults read back as {read})")


class GrammarTokenizer:
    """A model's vocabulary as llguidance sees it (token trie, slicer partitions)."""

    def __init__(self, handle: Any, vocab_size: int, keep: tuple[Any, ...]) -> None:
        self._handle = _ffi.gc(handle, _library().llg_free_tokenizer)
        self.vocab_size = vocab_size
        self.mask_words = (vocab_size + 31) // 32
        self._keep = keep  # what the tokenize callback reads (the model's vocabulary)

    @property
    def handle(self) -> Any:
        return self._handle


def new_tokenizer(tokens: list[bytes], eos_tokens: list[int], tokenize_fn: int | None,
                  tokenize_user_data: int, keep: tuple[Any, ...] = ()) -> GrammarTokenizer:
    """A tokenizer from each token's bytes (special tokens prefixed with 0xFF) and the
    end-of-generation tokens. ``tokenize_fn`` is the address of an ``LlgTokenizeFn`` that
    tokenizes text exactly as the model does, with ``tokenize_user_data`` its first argument;
    None tokenizes greedily over the trie instead (llguidance then never forces tokens).
    Takes about a second for a 262k vocabulary, without the GIL. Raises ValueError."""
    if not tokens or not eos_tokens:
        raise ValueError("a grammar tokenizer needs tokens and at least one end-of-generation token")
    lib = _library()
    lens = _ffi.new("uint32_t[]", [len(token) for token in tokens])
    joined = _ffi.from_buffer(b"".join(tokens))
    extra = _ffi.new("LlgToken[]", eos_tokens[1:]) if len(eos_tokens) > 1 else _ffi.NULL
    init = _ffi.new("LlgTokenizerInitV2 *")
    init.struct_size = _ffi.sizeof("LlgTokenizerInitV2")
    init.vocab_size = len(tokens)
    init.tok_eos = eos_tokens[0]
    init.token_lens = lens
    init.token_bytes = _ffi.cast("const uint8_t *", joined)
    init.tok_eos_extra = extra
    init.tok_eos_extra_count = len(eos_tokens) - 1
    if tokenize_fn is None:
        init.use_approximate_greedy_tokenize_fn = True
    else:
        init.tokenize_fn = _ffi.cast("LlgTokenizeFn", tokenize_fn)
        init.tokenize_user_data = _ffi.cast("const void *", tokenize_user_data)
        init.tokenize_assumes_string = True  # invalid UTF-8 goes greedy over the trie
    error = _ffi.new("char[]", 1024)
    handle = lib.llg_new_tokenizer_v2(init, error, 1024)
    if handle == _ffi.NULL:
        reason = _ffi.string(error).decode("utf-8", "replace")
        raise ValueError(f"llguidance refused the vocabulary: {reason}")
    return GrammarTokenizer(handle, len(tokens), keep)


class Matcher:
    """One grammar's state over a tokenizer: which tokens may come next."""

    __slots__ = ("_handle", "_tokenizer", "mask_bytes")

    def __init__(self, handle: Any, tokenizer: GrammarTokenizer) -> None:
        lib = _library()
        self._handle = _ffi.gc(handle, lib.llg_free_matcher)
        self._tokenizer = tokenizer  # freed after every matcher built on it
        self.mask_bytes = int(lib.llg_matcher_get_mask_byte_size(handle))

    def fill_mask(self, address: int) -> bool:
        """The next-token bitmask (one bit a token) into ``mask_bytes`` bytes at ``address``;
        False on a grammar error (see ``error``)."""
        dest = _ffi.cast("uint32_t *", address)
        return bool(_lib.llg_matcher_compute_mask_into(self._handle, dest, self.mask_bytes) == 0)

    def consume(self, token: int) -> bool:
        return bool(_lib.llg_matcher_consume_token(self._handle, token) == 0)

    def consume_tokens(self, tokens: list[int]) -> bool:
        return bool(_lib.llg_matcher_consume_tokens(self._handle, tokens, len(tokens)) == 0)

    @property
    def is_error(self) -> bool:
        return bool(_lib.llg_matcher_is_error(self._handle))

    @property
    def error(self) -> str:
        message = _lib.llg_matcher_get_error(self._handle)
        return "" if message == _ffi.NULL else _ffi.string(message).decode("utf-8", "replace")

    @property
    def is_accepting(self) -> bool:
        return bool(_lib.llg_matcher_is_accepting(self._handle))

    @property
    def is_stopped(self) -> bool:
        return bool(_lib.llg_matcher_is_stopped(self._handle))


def new_matcher(tokenizer: GrammarTokenizer, grammar: str, limits: ParserLimits) -> Matcher:
    """A matcher for an llguidance grammar (the JSON/Lark grammar string that
    ``kolosal.toolcalls.grammar`` compiles). Check ``is_error`` before use."""
    lib = _library()
    init = _ffi.new("LlgConstraintInit *")
    lib.llg_constraint_init_set_defaults(init, tokenizer.handle)
    init.log_buffer_level = 0
    init.log_stderr_level = 0
    for name in ("step_lexer_fuel", "step_max_items", "max_grammar_size"):
        value = getattr(limits, name)
        if value is not None:
            setattr(init.limits, name, value)
    init.limits.verbose_errors = limits.verbose_errors
    handle = lib.llg_new_matcher(init, b"llguidance", grammar.encode())
    return Matcher(handle, tokenizer)
