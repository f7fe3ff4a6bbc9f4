"""<think> blocks: split into reasoning and content (whole and streamed, identically), the
prompt-opened case, unclosed blocks, and keeping reasoning inline."""
from __future__ import annotations

import itertools
import random

import pytest

from kolosal.toolcalls import (
    OutputFormat,
    ParsedOutput,
    ReasoningSplitter,
    parse_output,
    split_reasoning,
    starts_in_reasoning,
)

from .helpers import random_cuts

QWEN3 = ("<think>\nOkay, the user is asking for 17 * 23. 17 * 20 = 340, 17 * 3 = 51, "
         "so 391.\n</think>\n\n17 × 23 = **391**.")
R1_OPENED = "Let me compute: 17 * 23 = 391.\n</think>\n\nThe answer is 391."

CASES = [
    # (text, starts_open, reasoning, content)
    (QWEN3, False, "Okay, the user is asking for 17 * 23. 17 * 20 = 340, 17 * 3 = 51, so 391.",
     "17 × 23 = **391**."),
    (R1_OPENED, True, "Let me compute: 17 * 23 = 391.", "The answer is 391."),
    ("<think>\n\n</think>\n\nHi!", False, None, "Hi!"),              # Qwen3 with thinking off
    ("</think>Hello, world!", True, None, "Hello, world!"),          # opened, nothing thought
    ("<think>I keep thinking and then the output was cut", False,
     "I keep thinking and then the output was cut", ""),
    ("still thinking </thi", True, "still thinking </thi", ""),      # unclosed, cut mid-tag
    ("  \n<think>a</think>b", False, "a", "b"),
    ("<think>\nSure\n</think>", True, "Sure", ""),                   # re-opened by the model
    ("Hello <think>not at the start</think>", False, None, "Hello <think>not at the start</think>"),
    ("  plain answer  ", False, None, "  plain answer  "),
    ("<thinking>is not the tag</thinking>", False, None, "<thinking>is not the tag</thinking>"),
    ("<thi", False, None, "<thi"),
    ("", False, None, ""),
    ("", True, None, ""),
]


@pytest.mark.parametrize(("text", "starts_open", "reasoning", "content"), CASES)
def test_split_reasoning(text: str, starts_open: bool, reasoning: str | None, content: str) -> None:
    assert split_reasoning(text, starts_open) == (reasoning, content)


@pytest.mark.parametrize(("text", "starts_open", "reasoning", "content"), CASES)
def test_streamed_splits_equal_whole(text: str, starts_open: bool, reasoning: str | None,
                                     content: str) -> None:
    rng = random.Random(text)
    for attempt in range(40):
        cuts = random_cuts(rng, len(text)) if attempt else list(range(1, len(text)))
        splitter = ReasoningSplitter(starts_open)
        parts = [splitter.feed(text[a:b]) for a, b in itertools.pairwise([0, *cuts, len(text)])]
        parts.append(splitter.finish())
        streamed_reasoning = "".join(p[0] for p in parts)
        assert (streamed_reasoning or None, "".join(p[1] for p in parts)) == (reasoning, content)


def test_reasoning_streams_live_and_holds_only_a_possible_tag() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<thi") == ("", "")
    assert splitter.feed("nk>\nStep one.") == ("Step one.", "")
    assert splitter.feed(" Step two.\n</th") == (" Step two.", "")
    assert splitter.feed("ink>\n\nDone") == ("", "Done")
    assert splitter.feed(" now.") == ("", " now.")
    assert splitter.finish() == ("", "")


def test_prompt_that_opened_think() -> None:
    assert starts_in_reasoning("<｜User｜>Hi<｜Assistant｜><think>\n")
    assert not starts_in_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not starts_in_reasoning("<|im_start|>assistant\n")


def test_inline_keeps_the_block_in_content() -> None:
    assert parse_output(QWEN3, OutputFormat(reasoning=False)) == ParsedOutput(QWEN3)
    assert parse_output(QWEN3, OutputFormat(reasoning=True)) == ParsedOutput(
        "17 × 23 = **391**.", [],
        "Okay, the user is asking for 17 * 23. 17 * 20 = 340, 17 * 3 = 51, so 391.")
