"""Text tables of a comparison: every figure per server, the ratio ours / baseline, our
throughput as a share of the raw batched-decode limit, and the spread of the repeats."""
from __future__ import annotations

from benchmarks.metrics import LevelResult

# (field, label, higher_is_better)
FIGURES = (("output_tok_s", "output tok/s", True), ("requests_per_s", "requests/s", True),
           ("ttft_p50_ms", "TTFT p50 ms", False), ("ttft_p99_ms", "TTFT p99 ms", False),
           ("itl_p50_ms", "ITL p50 ms", False), ("itl_p99_ms", "ITL p99 ms", False),
           ("errors", "errors", False), ("reconnects", "reconnects (idle connection dropped)", False),
           ("cached_share", "prompt tokens from the prefix cache, share", True))
# what the markdown spread table shows per server: (field, header, format)
SPREAD_FIGURES = (("output_tok_s", "tok/s", "{:.1f}"), ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
                  ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"), ("itl_p50_ms", "ITL p50 ms", "{:.1f}"),
                  ("itl_p99_ms", "ITL p99 ms", "{:.1f}"), ("cached_share", "cached %", "{:.0%}"))


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
            shown = "{:>16.3f}" if field == "cached_share" else "{:>16.1f}"
            line = f"{row.concurrency:>4} " + " ".join(shown.format(v) for v in values)
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


def spread(values: list[float], shown: str) -> str:
    """The median of the repeats with their range: "281.7 (250.1-290.0)"."""
    ordered = sorted(values)
    middle = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    if len(ordered) == 1:
        return shown.format(middle)
    return f"{shown.format(middle)} ({shown.format(ordered[0])}–{shown.format(ordered[-1])})"


def markdown_spread(runs: dict[str, list[list[LevelResult]]], ours: str = "kolosal",
                    baseline: str = "llama-server") -> str:
    """One row per level and server: each figure's median over the repeats and their range
    (min–max), and a ratio row ours / baseline of the medians."""
    header = "| C | server | " + " | ".join(label for _, label, _ in SPREAD_FIGURES) + " | errors |"
    lines = [header, "|" + "---|" * (len(SPREAD_FIGURES) + 3)]
    names = list(runs)
    for index in range(len(runs[names[0]])):
        level = runs[names[0]][index][0].concurrency
        for name in names:
            repeats = runs[name][index]
            cells = [spread([float(getattr(r, field)) for r in repeats], shown)
                     for field, _, shown in SPREAD_FIGURES]
            lines.append(f"| {level} | {name} | " + " | ".join(cells)
                         + f" | {sum(r.errors for r in repeats)} |")
        if ours in runs and baseline in runs:
            ratios = []
            for field, _, _ in SPREAD_FIGURES:
                mine = _median([float(getattr(r, field)) for r in runs[ours][index]])
                theirs = _median([float(getattr(r, field)) for r in runs[baseline][index]])
                ratios.append(f"{mine / theirs:.2f}x" if theirs else "-")
            lines.append(f"| {level} | ratio {ours}/{baseline} | " + " | ".join(ratios) + " | |")
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
