"""Incremental JSON prefix scanner: is this text a complete JSON object/array, a prefix
of one, or neither?

Streaming tool-call parsing has to decide, one text delta at a time, whether the bytes
after a marker can still become a valid call. ``json.loads`` cannot say "valid so far";
this scanner can, and it keeps its state between feeds so a long call costs O(length)
in total rather than a re-parse per token. It is strict RFC 8259 (no NaN, no comments,
no trailing commas), the same language ``json.loads`` accepts minus its extensions.
"""
from __future__ import annotations

import enum

WHITESPACE = " \t\n\r"
_ESCAPES = '"\\/bfnrt'
_HEX = "0123456789abcdefABCDEF"
_DIGITS = "0123456789"
_NUMBER_END = ",}]" + WHITESPACE


class ScanStatus(enum.Enum):
    INCOMPLETE = "incomplete"  # a valid prefix: more text may complete it
    COMPLETE = "complete"      # one whole value; ``end`` is just past it
    INVALID = "invalid"        # no continuation can make it valid JSON


class _S(enum.Enum):
    VALUE = enum.auto()          # a value is expected
    FIRST_ITEM = enum.auto()     # right after '[': a value or ']'
    FIRST_KEY = enum.auto()      # right after '{': a key or '}'
    KEY = enum.auto()            # after ',' in an object: a key
    COLON = enum.auto()          # after a key
    AFTER_VALUE = enum.auto()    # after a value in a container: ',' or the closer
    STRING = enum.auto()
    ESCAPE = enum.auto()
    UNICODE = enum.auto()
    NUMBER = enum.auto()
    LITERAL = enum.auto()


# Number sub-states, by what was read last; the terminal ones may end the number.
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_TERMINAL = {_N_ZERO, _N_INT, _N_FRAC, _N_EXP}


class JsonScanner:
    """Feed text that starts with ``{`` or ``[``; ``status`` says where it stands.

    Text after the end of the value is not consumed: ``end`` is the offset (in everything
    fed so far) just past the closing bracket. ``first_key`` is the raw text of the
    top-level object's first key once it has been read (escapes left as written).
    """

    __slots__ = ("status", "end", "first_key", "_pos", "_state", "_stack", "_in_key",
                 "_key_chars", "_unicode_left", "_number", "_literal")

    def __init__(self) -> None:
        self.status = ScanStatus.INCOMPLETE
        self.end = -1
        self.first_key: str | None = None
        self._pos = 0                 # characters consumed so far
        self._state = _S.VALUE
        self._stack: list[str] = []   # open containers, '{' or '['
        self._in_key = False
        self._key_chars: list[str] | None = None  # collecting the first top-level key
        self._unicode_left = 0
        self._number = _N_SIGN
        self._literal = ""            # the rest of true/false/null still expected

    def feed(self, text: str) -> ScanStatus:
        for char in text:
            if self.status is not ScanStatus.INCOMPLETE:
                break
            self._step(char)
        return self.status

    def _fail(self) -> None:
        self.status = ScanStatus.INVALID

    def _step(self, char: str) -> None:
        state = self._state
        self._pos += 1
        if state is _S.STRING:
            self._string_char(char)
        elif state is _S.ESCAPE:
            self._collect(char)
            if char == "u":
                self._state, self._unicode_left = _S.UNICODE, 4
            elif char in _ESCAPES:
                self._state = _S.STRING
            else:
                self._fail()
        elif state is _S.UNICODE:
            self._collect(char)
            if char not in _HEX:
                self._fail()
            else:
                self._unicode_left -= 1
                if not self._unicode_left:
                    self._state = _S.STRING
        elif state is _S.NUMBER:
            self._number_char(char)
        elif state is _S.LITERAL:
            if char != self._literal[0]:
                self._fail()
            else:
                self._literal = self._literal[1:]
                if not self._literal:
                    self._value_done()
        elif char in WHITESPACE and self._stack:
            pass  # whitespace between tokens (never before the top-level value)
        else:
            self._structural(char)

    def _structural(self, char: str) -> None:
        state = self._state
        if state in (_S.VALUE, _S.FIRST_ITEM):
            if state is _S.FIRST_ITEM and char == "]":
                self._close("[")
            else:
                self._value_start(char)
        elif state in (_S.FIRST_KEY, _S.KEY):
            self._key_start(state, char)
        elif state is _S.COLON:
            if char == ":":
                self._state = _S.VALUE
            else:
                self._fail()
        elif state is _S.AFTER_VALUE:
            self._after_value(char)

    def _key_start(self, state: _S, char: str) -> None:
        if state is _S.FIRST_KEY and char == "}":
            self._close("{")
        elif char == '"':
            self._state, self._in_key = _S.STRING, True
            if len(self._stack) == 1 and self.first_key is None and self._key_chars is None:
                self._key_chars = []
        else:
            self._fail()

    def _after_value(self, char: str) -> None:
        if char == ",":
            self._state = _S.KEY if self._stack[-1] == "{" else _S.VALUE
        elif char in "}]":
            self._close("{" if char == "}" else "[")
        else:
            self._fail()

    def _value_start(self, char: str) -> None:
        if not self._stack and char not in "{[":
            self._fail()  # the top-level value must be an object or an array
        elif char == "{":
            self._stack.append("{")
            self._state = _S.FIRST_KEY
        elif char == "[":
            self._stack.append("[")
            self._state = _S.FIRST_ITEM
        elif char == '"':
            self._state, self._in_key = _S.STRING, False
        elif char == "-":
            self._state, self._number = _S.NUMBER, _N_SIGN
        elif char in _DIGITS:
            self._state, self._number = _S.NUMBER, (_N_ZERO if char == "0" else _N_INT)
        elif char in "tfn":
            self._state = _S.LITERAL
            self._literal = {"t": "rue", "f": "alse", "n": "ull"}[char]
        else:
            self._fail()

    def _collect(self, char: str) -> None:
        if self._in_key and self._key_chars is not None:
            self._key_chars.append(char)

    def _string_char(self, char: str) -> None:
        if char == '"':
            if self._in_key:
                if self._key_chars is not None:
                    self.first_key = "".join(self._key_chars)
                    self._key_chars = None
                self._state = _S.COLON
            else:
                self._value_done()
        elif char == "\\":
            self._collect(char)
            self._state = _S.ESCAPE
        elif ord(char) < 0x20:
            self._fail()  # control characters must be escaped
        else:
            self._collect(char)

    def _number_char(self, char: str) -> None:
        n = self._number
        if char in _DIGITS:
            self._number_digit(n, char)
        elif char == "." and n in (_N_ZERO, _N_INT):
            self._number = _N_DOT
        elif char in "eE" and n in (_N_ZERO, _N_INT, _N_FRAC):
            self._number = _N_E
        elif char in "+-" and n == _N_E:
            self._number = _N_ESIGN
        elif char in _NUMBER_END and n in _N_TERMINAL:
            # The number ended one character ago; this character belongs to the container.
            self._value_done()
            if char not in WHITESPACE:
                self._structural(char)
        else:
            self._fail()

    def _number_digit(self, n: int, char: str) -> None:
        if n == _N_SIGN:
            self._number = _N_ZERO if char == "0" else _N_INT
        elif n == _N_ZERO:
            self._fail()  # no leading zeros
        elif n == _N_DOT:
            self._number = _N_FRAC
        elif n in (_N_E, _N_ESIGN):
            self._number = _N_EXP
        # _N_INT, _N_FRAC, _N_EXP: more digits of the same part

    def _value_done(self) -> None:
        self._state = _S.AFTER_VALUE

    def _close(self, opener: str) -> None:
        if not self._stack or self._stack[-1] != opener:
            self._fail()
            return
        self._stack.pop()
        if self._stack:
            self._value_done()
        else:
            self.status = ScanStatus.COMPLETE
            self.end = self._pos
