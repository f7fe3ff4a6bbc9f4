"""``FenceStripper``: a JSON answer's Markdown fence and surrounding whitespace are dropped
as the text streams, however the text is split, and nothing of the JSON is lost or held
back past the point where it is known to be JSON."""
from __future__ import annotations

import json

import pytest

from kolosal.toolcalls.fence import MAX_HELD, FenceStripper
from kolosal.toolcalls.output import OutputFormat, OutputParser, parse_output
from kolosal.toolcalls.types import ContentDelta

ANSWER = '{"text": "a ``` b\\n", "list": [1, 2],\n  "end": "` "}'


def stripped(chunks: list[str]) -> str:
    fence = FenceStripper()
    return "".join(fence.feed(chunk) for chunk in chunks) + fence.finish()


@pytest.mark.parametrize("output", [
    ANSWER, f"\n{ANSWER}\n", f"```json\n{ANSWER}\n```", f"\n\n```json{ANSWER}```",
    f"```json\n  \n{ANSWER}\n\n  ```", f" {ANSWER} \n  "])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_json_alone_however_the_text_is_split(output: str, size: int) -> None:
    chunks = [output[start:start + size] for start in range(0, len(output), size)]
    assert stripped(chunks) == ANSWER
    json.loads(stripped(chunks))


def test_json_is_released_as_soon_as_it_is_known() -> None:
    fence = FenceStripper()
    assert fence.feed("\n``") == ""           # may become the fence
    assert fence.feed("`json\n") == ""        # it did
    assert fence.feed('{"a": "x ') == '{"a": "x'  # the space may be the closing whitespace
    assert fence.feed("`") == ""                  # ... and this a closing fence
    assert fence.feed('y"}') == ' `y"}'           # it was not: released in order
    assert fence.feed("\n```") == ""
    assert fence.finish() == ""


def test_an_output_cut_off_keeps_what_it_had() -> None:
    fence = FenceStripper()
    assert fence.feed('```json\n{"a": [1, ') + fence.finish() == '{"a": [1,'
    assert stripped(["```js"]) == "" and stripped(["\n \n"]) == ""


def test_the_parser_strips_the_fence_streamed_and_whole() -> None:
    fmt = OutputFormat(fenced=True)
    assert not fmt.is_plain
    text = f"```json\n{ANSWER}\n```"
    parser = OutputParser(fmt)
    events = [event for start in range(0, len(text), 4) for event in parser.feed(text[start:start + 4])]
    events += parser.finish()
    assert all(isinstance(event, ContentDelta) for event in events)
    assert "".join(event.text for event in events if isinstance(event, ContentDelta)) == ANSWER
    assert parse_output(text, fmt).content == ANSWER
    assert parse_output(text, OutputFormat()).content == text  # not fenced: as it is


def test_a_long_whitespace_run_inside_the_json_is_not_held_back() -> None:
    """Hostile: a string of 50,000 spaces, a token each. Only the last MAX_HELD characters
    can be the closing run, so only they wait: the rest is released as it comes (each
    feed's work is bounded, never the whole run again)."""
    fence = FenceStripper()
    released = [fence.feed('{"a": "')]
    for _ in range(50_000):
        released.append(fence.feed(" "))
    assert len("".join(released)) >= len('{"a": "') + 50_000 - MAX_HELD
    assert "".join(released) + fence.feed('"}') + fence.finish() == '{"a": "' + " " * 50_000 + '"}'
