"""Per-request records and the per-level summary the load generator reports."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    ok: bool = False
    ttft_s: float = 0.0                # request sent -> first non-empty text chunk
    latency_s: float = 0.0             # request sent -> stream end
    prompt_tokens: int = 0
    completion_tokens: int = 0         # from usage when the server sends it, else chunks
    chunks: int = 0
    inter_token_s: list[float] = field(default_factory=list)  # gaps between text chunks
    error: str = ""
    reconnects: int = 0                # resent after the server dropped an idle connection
    cached_tokens: int = 0             # prompt tokens served from the server's prefix cache
    turn: int = 0                      # the call's place in its session (chat turns)
    reply: str = ""                    # choice 0's text (a conversation's next assistant message)


@dataclass(frozen=True, slots=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    output_tokens: int
    output_tok_s: float                # all completion tokens / level wall time
    requests_per_s: float
    mean_prompt_tokens: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float                  # gap between streamed chunks
    itl_p99_ms: float
    tpot_p50_ms: float                 # (latency - TTFT) / (tokens - 1), per request
    latency_p50_ms: float
    error_samples: tuple[str, ...] = ()
    reconnects: int = 0
    prompt_tokens: int = 0             # all prompt tokens of the successful requests
    cached_tokens: int = 0             # ... of which the server reused from its prefix cache

    @property
    def cached_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values): p99 of 64 values is the 64th."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(concurrency: int, records: list[RequestRecord], wall_s: float) -> LevelResult:
    good = [r for r in records if r.ok]
    ttfts = [r.ttft_s * 1000 for r in good]
    itls = [gap * 1000 for r in good for gap in r.inter_token_s]
    tpots = [(r.latency_s - r.ttft_s) * 1000 / (r.completion_tokens - 1)
             for r in good if r.completion_tokens > 1]
    tokens = sum(r.completion_tokens for r in good)
    wall = max(wall_s, 1e-9)
    samples = tuple(dict.fromkeys(r.error for r in records if not r.ok))[:5]
    return LevelResult(
        concurrency=concurrency, requests=len(records), errors=len(records) - len(good),
        wall_s=round(wall_s, 3), output_tokens=tokens, output_tok_s=round(tokens / wall, 2),
        requests_per_s=round(len(good) / wall, 3),
        mean_prompt_tokens=round(sum(r.prompt_tokens for r in good) / len(good), 1) if good else 0.0,
        ttft_p50_ms=round(percentile(ttfts, 50), 1), ttft_p99_ms=round(percentile(ttfts, 99), 1),
        itl_p50_ms=round(percentile(itls, 50), 1), itl_p99_ms=round(percentile(itls, 99), 1),
        tpot_p50_ms=round(percentile(tpots, 50), 1),
        latency_p50_ms=round(percentile([r.latency_s * 1000 for r in good], 50), 1),
        error_samples=samples, reconnects=sum(r.reconnects for r in records),
        prompt_tokens=sum(r.prompt_tokens for r in good), cached_tokens=sum(r.cached_tokens for r in good))


def level_from_dict(data: dict) -> LevelResult:
    """Inverse of ``dataclasses.asdict`` (for results read back from JSON)."""
    return LevelResult(**{**data, "error_samples": tuple(data.get("error_samples", ()))})


def median_result(results: list[LevelResult]) -> LevelResult:
    """Repeats of one level folded into one row: the median of every figure (errors and
    reconnects summed), so one noisy repeat on a shared machine does not decide a ratio."""
    if len(results) == 1:
        return results[0]
    summed = ("requests", "errors", "output_tokens", "reconnects", "prompt_tokens", "cached_tokens")
    values: dict[str, object] = {"concurrency": results[0].concurrency}
    for name in LevelResult.__dataclass_fields__:
        if name in values or name == "error_samples":
            continue
        column = [getattr(r, name) for r in results]
        values[name] = sum(column) if name in summed else statistics.median(column)
    samples = tuple(dict.fromkeys(s for r in results for s in r.error_samples))[:5]
    return LevelResult(**values, error_samples=samples)  # type: ignore[arg-type]
