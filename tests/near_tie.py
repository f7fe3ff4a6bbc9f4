"""The one rule for comparing greedy outputs across batch shapes, cache states or servers.

libllama's CPU kernels are not batch-invariant: a row's logits move in the last bits with the
rows around it, the KV cells it sits in and the CPU's kernels (AVX2, AVX-512 and AMX machines
pick different ones). Where the best two tokens are that close, greedy picks can flip. So two
greedy outputs must be equal up to a first divergence, and there the token the other run took
must be a near tie in the reference run: within NEAR_TIE_LOGITS of the reference's own pick,
measured from the reference's logprobs (a log-probability gap is the logit gap). A real bug
(mixed-up rows, slots, positions or cells) picks tokens far below the top, and fails.

A reference is a list of steps: each the bytes of the picked token, its logprob and the top
alternatives (bytes, logprob). ``engine_steps`` and ``api_steps`` build it from the engine's
TokenLogprob events and from an OpenAI-style ``logprobs.content`` list.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# Batch shapes move this model's top logprobs by up to ~1.1 and first divergences were
# measured at gaps up to 0.41 (tests/server/test_structured.py, 16 rows beside 16): a
# wrong row or position lands far below the top, usually outside the top 5.
NEAR_TIE_LOGITS = 0.5
TOP_LOGPROBS = 5  # alternatives a reference run asks for

Step = tuple[bytes, float, Sequence[tuple[bytes, float]]]


def engine_steps(logprobs: Iterable[Any], piece: Callable[[int], bytes]) -> list[Step]:
    """Steps from the engine's TokenLogprob records (token, logprob, top)."""
    return [(piece(lp.token), float(lp.logprob), [(piece(t), float(v)) for t, v in lp.top])
            for lp in logprobs]


def api_steps(content: Sequence[Mapping[str, Any]]) -> list[Step]:
    """Steps from an OpenAI ``logprobs.content`` list (each entry with ``bytes``)."""
    return [(bytes(entry["bytes"]), float(entry["logprob"]),
             [(bytes(alt["bytes"]), float(alt["logprob"])) for alt in entry["top_logprobs"]])
            for entry in content]


def legacy_steps(logprobs: Mapping[str, Any]) -> list[Step]:
    """Steps from a text completion's legacy ``logprobs`` (tokens as text, ``top_logprobs``
    a {token: logprob} object per step)."""
    return [(token.encode(), float(logprob), [(alt.encode(), float(value)) for alt, value in top.items()])
            for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                           logprobs["top_logprobs"], strict=True)]


def near_tie_gap(reference: Sequence[Step], other: str | bytes) -> float | None:
    """None when ``other`` is the reference's text; else the logit gap at the first step
    where they part (``inf`` when the other run's token is not among the alternatives)."""
    text = other.encode() if isinstance(other, str) else other
    done = b""
    for picked, logprob, top in reference:
        if text.startswith(done + picked):
            done += picked
            continue
        rest = text[len(done):]
        if picked.startswith(rest):  # the other run stopped here (a stop string cuts tokens)
            return None
        gaps = [logprob - value for alt, value in top
                if alt != picked and alt and (rest.startswith(alt) or alt.startswith(rest))]
        return min(gaps, default=float("inf"))
    return None if text == done else float("inf")


def assert_same_or_near_tie(reference: Sequence[Step], other: str | bytes, what: str = "") -> None:
    gap = near_tie_gap(reference, other)
    assert gap is None or gap < NEAR_TIE_LOGITS, (
        f"{what}: the outputs part where the reference's pick leads by {gap:.3f} logits "
        f"(a near tie is < {NEAR_TIE_LOGITS}): {b''.join(s[0] for s in reference)!r} vs {other!r}")
