"""PNG plots of a comparison: throughput vs concurrency (with the raw decode limit), TTFT
vs concurrency, and per workload the figures its bars are about (tail latencies for mixed,
prefix-cache hits for chat). matplotlib is optional: without it, no plots and a note."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.metrics import LevelResult

# (figure, axis label, file, log y axis): TTFT spans 40 ms to 10 s once clients queue
PLOTS = (("output_tok_s", "output tokens/s (higher is better)", "throughput.png", False),
         ("ttft_p50_ms", "TTFT p50, ms, log scale (lower is better)", "ttft.png", True))
EXTRA_PLOTS = {
    "mixed": (("ttft_p99_ms", "TTFT p99, ms, log scale (lower is better)", "ttft_p99.png", True),
              ("itl_p99_ms", "ITL p99, ms (lower is better)", "itl_p99.png", False)),
    "chat": (("ttft_p99_ms", "TTFT p99, ms, log scale (lower is better)", "ttft_p99.png", True),
             ("cached_share", "share of prompt tokens from the prefix cache", "cached.png", False)),
}


def plot_comparison(results: dict[str, list[LevelResult]], raw_tok_s: dict[int, float],
                    out_dir: Path, title: str = "", workload: str = "short") -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for figure, label, filename, log_y in PLOTS + EXTRA_PLOTS.get(workload, ()):
        fig, axis = plt.subplots(figsize=(6.4, 4.2))
        for name, rows in results.items():
            axis.plot([r.concurrency for r in rows], [getattr(r, figure) for r in rows], marker="o",
                      label=name)
        if figure == "output_tok_s" and raw_tok_s:
            sizes = sorted(raw_tok_s)
            axis.plot(sizes, [raw_tok_s[b] for b in sizes], linestyle="--", color="gray",
                      label="raw batched decode (limit)")
        levels = sorted({r.concurrency for rows in results.values() for r in rows})
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        if log_y:
            axis.set_yscale("log")
        axis.minorticks_off()
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        if title:
            axis.set_title(title, fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.legend()
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
