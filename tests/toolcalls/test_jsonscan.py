"""The incremental JSON scanner agrees with json.loads: every prefix of a JSON document is
INCOMPLETE, the whole is COMPLETE where it ends, and text no continuation could fix is
INVALID, however the text is fed."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolosal.toolcalls.jsonscan import JsonScanner, ScanStatus

from ..lanes import examples

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                       max_size=4),
    max_leaves=12)
containers = st.lists(json_values, max_size=4) | st.dictionaries(st.text(max_size=5), json_values,
                                                                  max_size=4)
styles = st.sampled_from([{}, {"indent": 2}, {"separators": (",", ":")}, {"ensure_ascii": False}])


def scan(text: str, step: int = 0) -> JsonScanner:
    scanner = JsonScanner()
    if step:
        for start in range(0, len(text), step):
            scanner.feed(text[start:start + step])
    else:
        scanner.feed(text)
    return scanner


@settings(max_examples=examples(200), deadline=None)
@given(containers, styles, st.integers(0, 3))
def test_documents_prefixes_and_trailing_text(value: object, style: dict[str, object], step: int) -> None:
    text = json.dumps(value, **style)  # type: ignore[arg-type]
    one_by_one = JsonScanner()
    for char in text[:-1]:
        assert one_by_one.feed(char) is ScanStatus.INCOMPLETE
    assert one_by_one.feed(text[-1]) is ScanStatus.COMPLETE
    assert scan(text[:len(text) // 2], step).status is ScanStatus.INCOMPLETE
    scanner = scan(text + ' ]}, trailing "text"', step)
    assert scanner.status is ScanStatus.COMPLETE and scanner.end == len(text)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(alphabet='{}[]",:0123456789.eE+-tfnrulase \\\n', max_size=30).map(lambda t: "{" + t))
def test_agrees_with_json_loads(text: str) -> None:
    scanner = scan(text)
    if scanner.status is ScanStatus.COMPLETE:
        json.loads(text[:scanner.end])
    else:
        with pytest.raises(ValueError):
            json.loads(text)


@pytest.mark.parametrize("text", [
    "{'a': 1}", '{"a": 1,}', '{"a": tru }', "[01]", '{"a": "\x01"}', '{"a": NaN}', "[1 2]",
    '{"a" 1}', '{"a": -}', '{"a": 1.}', '{"a": 1e}', '{"a": "\\x"}', '{"a": "\\u12g4"}', "[}",
    '"top-level string"', "42", ' {"leading": "space"}', "{,}", '{"a": [1, 2}',
])
def test_invalid(text: str) -> None:
    assert scan(text).status is ScanStatus.INVALID


def test_first_key_is_read_as_soon_as_it_closes() -> None:
    scanner = JsonScanner()
    scanner.feed('{ "na')
    assert scanner.first_key is None
    scanner.feed('me": {"inner": 1}, "other": 2')
    assert scanner.first_key == "name" and scanner.status is ScanStatus.INCOMPLETE
    assert scan('[{"a": 1}]').first_key is None
