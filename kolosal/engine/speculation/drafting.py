"""Speculative decoding without a draft model: prompt lookup (n-gram) drafting from a
sequence's own prompt and output, an engine-wide record of how drafts fare by how long a
match they continue, and a step cost model that decides how many draft rows a step can
afford. Pure Python + numpy.

A draft is read from the context: the last n tokens (n = 8, else 3, else 2) are looked up
where they occurred before, and the tokens that followed that occurrence are the draft. How
far back the context matches that occurrence (the match length) predicts the draft: on
Gemma 3 270M's greedy ``echo`` outputs, the token after a 2-token match was right 58 % of
the time, after 5 or more 96-100 % (``benchmarks/match_odds.py``). ``MatchOdds`` learns
these odds per engine from every verified draft. Drafts cost batch rows (each with a logits
row), so the scheduler verifies as many draft tokens as maximise the step's expected tokens
per second (``best_draft_length``), with the step's time by row count measured as the
engine runs (``StepCost``).
"""
from __future__ import annotations

import bisect
import math

import numpy as np

NGRAM_SIZES = (8, 3, 2)        # longest first: a longer match predicts better
HASH_MULTIPLIER = 0x9E3779B97F4A7C15  # an n-gram's key: a 64-bit polynomial hash of its tokens
HASH_MASK = (1 << 64) - 1             # (a collision only makes a draft that verification rejects)
MAX_MATCH = 12                 # match lengths are counted up to this

# MatchOdds: per match-length bucket (2, 3, 4, 5, 6, 7-11, 12+), for greedy and for sampled
# requests, accepted and rejected draft tokens on top of a prior (0.6); old evidence is
# halved once a bucket holds MAX_EVIDENCE, so the odds follow the current load. A bucket
# whose odds are not worth a row still gets a one-token draft every EXPLORE_STEPS-th time,
# where a sure draft (SURE_CHANCE) would pay, so that its odds stay current.
PRIOR_HITS, PRIOR_MISSES = 1.2, 0.8
MAX_EVIDENCE = 512.0
SURE_CHANCE = 0.95
# A sequence whose drafts fail MAX_FAILURES times in a row (nothing accepted) pauses its
# drafts for BACKOFF_STEPS steps, doubling up to MAX_BACKOFF_STEPS while it keeps failing.
MAX_FAILURES = 3
BACKOFF_STEPS, MAX_BACKOFF_STEPS = 16, 512
# Where other streams share the step, the engine's drafts may make it at most this much
# longer than its decode rows alone: each of them waits for the step (their ITL).
DRAFT_STEP_SHARE = 0.5
MIN_FIXED_SHARE = 0.5          # StepCost: the fixed part of a step is at least half a row
MAX_TABLE_ROWS = 320           # StepCost times row counts up to this one by their own steps ...
MIN_SAMPLES = 2                # ... once seen this often
TABLE_WEIGHT = 0.2             # each new step's share of its row count's mean
# Padding (StepCost.padding): a step of r rows may take up to MAX_PAD_ROWS more when their
# measured time is at least PAD_MARGIN below r's (so noise between equal counts does not pad).
MAX_PAD_ROWS = 3
PAD_MARGIN = 0.03
# DraftPayoff: realised tokens per second of steps with and without drafts, per number of
# decoding sequences; drafting stops where it realises less, but is let through every
# EXPLORE_STEPS-th step there so that the comparison stays current.
PAYOFF_WEIGHT = 0.1
PAYOFF_MIN_SAMPLES = 4
EXPLORE_STEPS = 32
MAX_PAYOFF_ROWS = 64           # more decoding sequences than this share one record


def _key(tokens: list[int], start: int, size: int) -> int:
    key = 0
    for token in tokens[start:start + size]:
        key = (key * HASH_MULTIPLIER + token) & HASH_MASK
    return key


def match_bucket(length: int) -> int:
    """The odds bucket of a match length: 2..6 each its own, 7-11 and 12+ shared."""
    return length if length <= 6 else (7 if length < MAX_MATCH else 8)


class Drafter:
    """Prompt-lookup drafting for one sequence, and its pause after failed drafts."""

    __slots__ = ("n_max", "asked", "_index", "_indexed", "match", "failures", "backoff", "resume_at",
                 "proposed", "accepted")

    def __init__(self, n_max: int, asked: bool = False) -> None:
        self.n_max = n_max
        self.asked = asked         # the request asked for drafts: no cost check (still pauses on failures)
        self._index: tuple[dict[int, int], ...] = tuple({} for _ in NGRAM_SIZES)
        self._indexed = 0          # n-grams ending before this position are indexed
        self.match = 0             # the match length of the latest proposal
        self.failures = 0          # drafts in a row with nothing accepted
        self.backoff = BACKOFF_STEPS
        self.resume_at = 0         # no drafts before this step (after failures)
        self.proposed = 0          # totals, for the stats
        self.accepted = 0

    def paused(self, step: int) -> bool:
        return step < self.resume_at

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        sequence's last n-gram (the longest n that has one); ``match`` is then how many
        tokens before that occurrence match the context's last ones (up to MAX_MATCH). When
        the occurrence runs into the end of the sequence (a loop), the draft repeats its
        period."""
        self.match = 0
        if limit <= 0:
            return []
        self._catch_up(tokens)
        length = len(tokens)
        for size, index in zip(NGRAM_SIZES, self._index, strict=True):
            if length <= size:
                continue
            start = index.get(_key(tokens, length - size, size))
            if start is not None:
                match = size
                while match < MAX_MATCH and start > match and tokens[start - 1 - match] == tokens[-1 - match]:
                    match += 1
                self.match = match
                period = length - start
                if period >= limit:
                    return tokens[start:start + limit]
                return [tokens[start + i % period] for i in range(limit)]
        return []

    def record(self, proposed: int, accepted: int, step: int) -> None:
        """A verified draft: ``accepted`` of its ``proposed`` tokens matched."""
        self.proposed += proposed
        self.accepted += accepted
        if accepted:
            self.failures, self.backoff = 0, BACKOFF_STEPS
            return
        self.failures += 1
        if self.failures >= MAX_FAILURES:  # keeps failing: pause, longer each time
            self.resume_at = step + self.backoff
            self.backoff = min(2 * self.backoff, MAX_BACKOFF_STEPS)
            self.failures = 0

    def _catch_up(self, tokens: list[int]) -> None:
        """Index the n-grams that end at positions [indexed, len - 1): each maps to the
        position after it (a later occurrence replaces an earlier one)."""
        end = len(tokens) - 1
        first = self._indexed
        if first >= end:
            return
        if end - first > 32:  # a prompt: vectorised
            low = max(0, first - max(NGRAM_SIZES) + 1)
            array = np.asarray(tokens[low:end], dtype=np.uint64)
            multiplier = np.uint64(HASH_MULTIPLIER)
            for size, index in zip(NGRAM_SIZES, self._index, strict=True):
                count = len(array) - size + 1
                if count <= 0:
                    continue
                keys = array[:count].copy()
                for offset in range(1, size):
                    keys = keys * multiplier + array[offset:offset + count]  # wraps mod 2**64, like _key
                ends = np.arange(low + size - 1, low + size - 1 + count)
                keep = ends >= first
                index.update(zip(keys[keep].tolist(), (ends[keep] + 1).tolist(), strict=True))
        else:
            for position in range(first, end):
                for size, index in zip(NGRAM_SIZES, self._index, strict=True):
                    if position + 1 >= size:
                        index[_key(tokens, position + 1 - size, size)] = position + 1
        self._indexed = end


class MatchOdds:
    """The engine's record of how draft tokens fare by the match length they continue:
    draft token i (0-based) of a draft whose context matched ``match`` tokens continues a
    match of ``match + i``. Kept apart for greedy and sampled requests (a sampled token
    matches a draft less often)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[bool, int], tuple[float, float]] = {}  # (sampled, bucket) -> (hits, misses)
        self._held_back: dict[tuple[bool, int], int] = {}  # ... -> drafts not worth a row since the last try

    def chance(self, match: int, sampled: bool) -> float:
        hits, misses = self._counts.get((sampled, match_bucket(match)), (0.0, 0.0))
        return (hits + PRIOR_HITS) / (hits + misses + PRIOR_HITS + PRIOR_MISSES)

    def chances(self, match: int, count: int, sampled: bool) -> list[float]:
        """Per draft token, the chance that it and every one before it are accepted."""
        chances, joint = [], 1.0
        for i in range(count):
            joint *= self.chance(match + i, sampled)
            chances.append(joint)
        return chances

    def record(self, match: int, proposed: int, accepted: int, sampled: bool) -> None:
        """A verified draft: its first ``accepted`` tokens hit, the next one (if any) missed,
        the rest were never tested."""
        for i in range(min(proposed, accepted + 1)):
            key = (sampled, match_bucket(match + i))
            hits, misses = self._counts.get(key, (0.0, 0.0))
            hits, misses = hits + (i < accepted), misses + (i >= accepted)
            if hits + misses > MAX_EVIDENCE:
                hits, misses = hits / 2, misses / 2
            self._counts[key] = (hits, misses)

    def explore(self, match: int, sampled: bool) -> bool:
        """For a draft not worth a row on these odds: whether to try one token anyway (every
        EXPLORE_STEPS-th time per bucket), so odds that were low can recover."""
        key = (sampled, match_bucket(match))
        held = self._held_back.get(key, 0) + 1
        self._held_back[key] = 0 if held >= EXPLORE_STEPS else held
        return held >= EXPLORE_STEPS


class StepCost:
    """Decode time of a step by its number of rows, for steps whose every row has logits
    (decode rows and draft rows), learned online.

    The time is far from a line in the rows: measured on a 2-core CPU with Gemma 3 270M
    (``benchmarks/row_cost.py``), 8 rows took 58 ms, 9 rows 79 and 10 rows 70 (ggml's CPU
    matmul kernels work on blocks of rows). A row count seen ``MIN_SAMPLES`` times is timed
    from its own steps (exponentially weighted); the others are estimated (``seconds``),
    with the help of a line ``a + b * rows`` fitted on every step (exponentially weighted
    least squares) whose slope leans on a prior of one row costing as much as the fixed
    part (b = a) until the row counts vary enough, and takes a row as at most twice the
    fixed part. (Timing the row counts when the engine loads was tried: steps on an idle
    engine with an empty cache misled the decision under real load.)"""

    def __init__(self, decay: float = 0.98, prior_weight: float = 4.0) -> None:
        self.decay = decay
        self.prior_weight = prior_weight
        self._w = self._r = self._rr = self._t = self._rt = 0.0
        self._by_rows: dict[int, tuple[float, int]] = {}  # rows -> (weighted mean seconds, samples)
        self._measured: list[int] = []  # sorted: the row counts seen MIN_SAMPLES times

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self._w = self._w * d + 1.0
        self._r = self._r * d + rows
        self._rr = self._rr * d + rows * rows
        self._t = self._t * d + seconds
        self._rt = self._rt * d + rows * seconds
        if rows <= MAX_TABLE_ROWS:
            mean, samples = self._by_rows.get(rows, (seconds, 0))
            self._by_rows[rows] = (mean + TABLE_WEIGHT * (seconds - mean) if samples else seconds,
                                   samples + 1)
            if samples + 1 == MIN_SAMPLES:
                bisect.insort(self._measured, rows)

    def line(self) -> tuple[float, float]:
        """(a, b): fixed seconds per step and seconds per row (b > 0). (1, 1) with no data:
        only their ratio matters to the decision."""
        if self._w <= 0.0:
            return 1.0, 1.0
        mean_r, mean_t = self._r / self._w, self._t / self._w
        prior_b = mean_t / (mean_r + 1.0)
        var_r = self._rr - self._r * mean_r
        cov = self._rt - self._r * mean_t
        b = (cov + self.prior_weight * prior_b) / (var_r + self.prior_weight)
        b = max(b, 0.05 * prior_b, 1e-9)
        b = min(b, mean_t / (mean_r + MIN_FIXED_SHARE))
        a = max(mean_t - b * mean_r, MIN_FIXED_SHARE * b)
        return a, b

    def measured(self, rows: int) -> bool:
        return self._by_rows.get(rows, (0.0, 0))[1] >= MIN_SAMPLES

    def seconds(self, rows: int, explore: bool = False) -> float:
        """Expected decode time of a step of ``rows`` rows, all with logits: its own mean.
        A row count not measured yet costs the nearest smaller one measured, plus the line's
        slope for each further row, or, to ``explore``, nothing more (as if the extra rows
        were free: so a draft tries it, and after ``MIN_SAMPLES`` steps its own time
        decides). With nothing measured at or below ``rows``, the line."""
        below = bisect.bisect_right(self._measured, min(rows, MAX_TABLE_ROWS))
        if below:
            known = self._measured[below - 1]
            mean = self._by_rows[known][0]
            return mean if known == rows or explore else mean + self.line()[1] * (rows - known)
        a, b = self.line()
        return a + b * rows

    def padding(self, rows: int, most: int) -> int:
        """How many rows (at most ``most``) to add to a step of ``rows`` rows, all with
        logits, to make it cheaper: ggml's CPU matmul kernels take output rows in tiles, and
        a count that does not fill them costs an extra pass over the weights (on a 2-core
        AVX2 CPU, 9 rows took 89 ms and 10 rows 77: ``benchmarks/row_cost.py``). Decided on
        measured times only; a count one above a measured one is tried (``MIN_SAMPLES``
        steps) before it is known. Never for one row: a single stream's steps stay as they
        are; nor beyond the row counts the table times."""
        if rows < 2 or most <= 0 or rows >= MAX_TABLE_ROWS or not self.measured(rows):
            return 0
        if not self.measured(rows + 1):
            return 1
        best, best_seconds = 0, self.seconds(rows) * (1.0 - PAD_MARGIN)
        for extra in range(1, min(most, MAX_PAD_ROWS) + 1):
            if self.measured(rows + extra) and self.seconds(rows + extra) < best_seconds:
                best, best_seconds = extra, self.seconds(rows + extra)
        return best


def best_draft_length(chances: list[float], rows: int, expected: float, cost: StepCost,
                      explore: bool = False, max_seconds: float = math.inf) -> int:
    """How many of a draft's tokens to verify in a step that has ``rows`` rows and is
    expected to yield ``expected`` tokens: the count that maximises the step's expected
    tokens per second, token i (1-based) being accepted with probability ``chances[i-1]``
    (its own and every earlier one's). 0 when no count beats the step without the draft.
    Every count is tried, not just while each next row pays: when the step time falls from
    an odd row count to the next even one, two rows can pay where one would not.
    ``explore``: row counts not measured yet are taken optimistically (``StepCost.seconds``).
    Counts whose step would take longer than ``max_seconds`` are not taken."""
    best, best_rate = 0, expected / cost.seconds(rows, explore)
    for count, chance in enumerate(chances, start=1):
        expected += chance
        seconds = cost.seconds(rows + count, explore)
        rate = expected / seconds
        if rate > best_rate and seconds <= max_seconds:
            best, best_rate = count, rate
    return best


def draft_length(chances: list[float], match: int, sampled: bool, odds: MatchOdds, rows: int,
                 expected: float, cost: StepCost, explore: bool = False,
                 max_seconds: float = math.inf) -> int:
    """How many of an engine draft's tokens a step verifies: ``best_draft_length``, or, for a
    draft not worth a row where a sure one (``SURE_CHANCE``) would pay, one token every
    ``EXPLORE_STEPS``-th time for its match length (``MatchOdds.explore``), so that odds that
    were low can recover."""
    count = best_draft_length(chances, rows, expected, cost, explore, max_seconds)
    if count == 0 and best_draft_length([SURE_CHANCE], rows, expected, cost, explore, max_seconds) \
            and odds.explore(match, sampled):
        return 1
    return count


class DraftPayoff:
    """Does drafting pay at this many decoding sequences, in what it realises? The cost
    model decides from estimates (acceptance from a sequence's recent drafts, step times
    by row count from earlier steps), which other load or a change in the text can put
    off. This record compares the tokens per second that steps with drafts actually
    yielded (decode rows plus accepted draft tokens) with steps without, per number of
    decoding sequences, and stops the engine's own drafting where drafts realise less: so
    speculation, switched on, cannot keep losing."""

    def __init__(self) -> None:
        self._rates: dict[tuple[int, bool], tuple[float, int]] = {}  # (rows, drafted) -> (rate, samples)
        self._held_back: dict[int, int] = {}  # rows -> steps whose drafts were stopped since the last try

    def observe(self, decode_rows: int, drafted: bool, tokens: int, seconds: float) -> None:
        if seconds <= 0.0 or decode_rows <= 0:
            return
        key = (min(decode_rows, MAX_PAYOFF_ROWS), drafted)
        rate = tokens / seconds
        mean, samples = self._rates.get(key, (rate, 0))
        self._rates[key] = (mean + PAYOFF_WEIGHT * (rate - mean) if samples else rate, samples + 1)

    def allows(self, decode_rows: int) -> bool:
        """Whether this step may draft (call once per step that has a draft to propose).
        Each side needs ``PAYOFF_MIN_SAMPLES`` steps first: drafts are let through until
        they have them, then held back until plain steps have them too (with many
        sequences, nearly every step would otherwise carry some draft)."""
        rows = min(decode_rows, MAX_PAYOFF_ROWS)
        with_drafts, tried = self._rates.get((rows, True), (0.0, 0))
        without, plain = self._rates.get((rows, False), (0.0, 0))
        if tried < PAYOFF_MIN_SAMPLES:
            return True
        if plain < PAYOFF_MIN_SAMPLES:
            return False
        if with_drafts >= without:
            return True
        held = self._held_back.get(rows, 0) + 1
        self._held_back[rows] = 0 if held >= EXPLORE_STEPS else held
        return held >= EXPLORE_STEPS
