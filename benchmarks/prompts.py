"""The prompt mix: short questions and ~1k-token documents, deterministic per request index.

Every prompt is distinct (an index is part of it), so a prefix cache only ever helps with a
shared template, never with a whole prompt seen before.
"""
from __future__ import annotations

import random

SHORT_PROMPTS = ("Write a story about a lighthouse keeper.", "Explain how rainbows form.",
                 "List some facts about the ocean.", "Describe a busy market in the morning.",
                 "What makes a good cup of coffee?", "Tell me about the history of bicycles.")

VOCABULARY = ("river", "mountain", "engine", "garden", "signal", "harbor", "lantern", "copper",
              "meadow", "circuit", "violin", "glacier", "market", "thunder", "orchard", "canvas")

LONG_WORDS = 900  # about 1,000 Gemma tokens with the header and the question


def short_prompt(index: int) -> str:
    return f"{SHORT_PROMPTS[index % len(SHORT_PROMPTS)]} (request {index})"


def long_prompt(index: int, words: int = LONG_WORDS) -> str:
    """About 1k tokens of varied text (distinct per index, so no whole-prompt cache hits)."""
    rng = random.Random(index)
    body = " ".join(rng.choice(VOCABULARY) for _ in range(words))
    return f"Document {index}: {body}\nSummarize the document above."


def pick_prompt(index: int, long_fraction: float, seed: int = 0) -> str:
    """Request ``index``'s prompt: long with probability ``long_fraction`` (deterministic)."""
    if long_fraction > 0 and random.Random(seed * 1_000_003 + index).random() < long_fraction:
        return long_prompt(seed * 1_000_003 + index)
    return short_prompt(seed * 1_000_003 + index)
