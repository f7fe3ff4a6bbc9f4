"""A progress bar on stderr: tqdm when installed, a one-line counter otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self._started = time.perf_counter()
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=label, unit="req", file=sys.stderr, leave=False,
                                 dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def advance(self, tokens: int, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.tokens += tokens if ok else 0
        if not self.enabled:
            return
        rate = self.tokens / max(time.perf_counter() - self._started, 1e-9)
        if self._bar is not None:
            self._bar.set_postfix(tok_s=f"{rate:.1f}", err=self.failed, refresh=False)
            self._bar.update(1)
        else:
            print(f"\r  {self.label} {self.done}/{self.total} requests  {rate:.1f} tok/s  "
                  f"{self.failed} errors", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)
