"""Text tables of a comparison: every figure per server, the ratio ours / baseline, and our
throughput as a share of the raw batched-decode limit."""
from __future__ import annotations

from benchmarks.metrics import LevelResult

# (field, label, higher_is_better)
FIGURES = (("output_tok_s", "output tok/s", True), ("requests_per_s", "requests/s", True),
           ("ttft_p50_ms", "TTFT p50 ms", False), ("ttft_p99_ms", "TTFT p99 ms", False),
           ("itl_p50_ms", "ITL p50 ms", False), ("itl_p99_ms", "ITL p99 ms", False),
           ("errors", "errors", False), ("reconnects", "reconnects (idle connection dropped)", False))


def raw_limit(raw_tok_s: dict[int, float], concurrency: int, parallel: int) -> float | None:
    """The raw limit that applies at a level: the server decodes at most ``parallel`` rows."""
    return raw_tok_s.get(min(concurrency, parallel)) if parallel else raw_tok_s.get(concurrency)


def ratio_table(results: dict[str, list[LevelResult]], ours: str = "kolosal",
                baseline: str = "llama-server") -> str:
    names = list(results)
    has_ratio = ours in results and baseline in results
    lines = []
    for field, label, higher_better in FIGURES:
        better = "higher" if higher_better else "lower"
        lines.append(f"\n{label} ({better} is better)")
        header = f"{'C':>4} " + " ".join(f"{n:>16}" for n in names)
        lines.append(header + (f" {'ratio ' + ours + '/' + baseline:>24}" if has_ratio else ""))
        for index, row in enumerate(results[names[0]]):
            values = [float(getattr(results[n][index], field)) for n in names]
            line = f"{row.concurrency:>4} " + " ".join(f"{v:>16.1f}" for v in values)
            if has_ratio:
                mine = getattr(results[ours][index], field)
                theirs = getattr(results[baseline][index], field)
                line += f" {mine / theirs:>24.2f}" if theirs else f" {'-':>24}"
            lines.append(line)
    return "\n".join(lines)


def raw_share_table(rows: list[LevelResult], raw_tok_s: dict[int, float], parallel: int,
                    name: str = "kolosal") -> str:
    lines = [f"\n{name} output tok/s as % of the raw batched-decode limit"]
    for row in rows:
        limit = raw_limit(raw_tok_s, row.concurrency, parallel)
        if limit:
            rows_decoded = min(row.concurrency, parallel) if parallel else row.concurrency
            lines.append(f"{row.concurrency:>4} {100 * row.output_tok_s / limit:>6.1f}%  "
                         f"({row.output_tok_s:.1f} of raw {limit:.1f} tok/s at B={rows_decoded})")
    return "\n".join(lines) if len(lines) > 1 else ""


def markdown_summary(results: dict[str, list[LevelResult]], raw_tok_s: dict[int, float],
                     parallel: int, ours: str = "kolosal", baseline: str = "llama-server") -> str:
    """The headline table for RESULTS.md: throughput, TTFT and ITL side by side with ratios,
    and our share of the raw decode limit."""
    if baseline not in results:
        return ""
    header = ("| C | ours tok/s | llama-server tok/s | ratio | ours TTFT p50 ms | llama-server TTFT p50 ms "
              "| ours ITL p50 ms | llama-server ITL p50 ms | raw limit tok/s | ours % of raw |")
    lines = [header, "|" + "---|" * 10]
    for mine, theirs in zip(results[ours], results[baseline], strict=True):
        limit = raw_limit(raw_tok_s, mine.concurrency, parallel)
        ratio = f"{mine.output_tok_s / theirs.output_tok_s:.2f}x" if theirs.output_tok_s else "-"
        share = f"{100 * mine.output_tok_s / limit:.0f}%" if limit else "-"
        lines.append(f"| {mine.concurrency} | {mine.output_tok_s:.1f} | {theirs.output_tok_s:.1f} | {ratio} "
                     f"| {mine.ttft_p50_ms:.0f} | {theirs.ttft_p50_ms:.0f} | {mine.itl_p50_ms:.1f} "
                     f"| {theirs.itl_p50_ms:.1f} | {f'{limit:.1f}' if limit else '-'} | {share} |")
    return "\n".join(lines)
