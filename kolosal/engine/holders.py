"""Who holds an engine: shared by the registry's entry (unload and eviction decisions)
and the loaded engine (its streams). A leaf module, so both can import it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Holders:
    """Requests holding an engine: from the moment one is resolved (its prompt may still be
    tokenizing) to the end of its last stream. A held engine is never unloaded or evicted.
    Shared by the entry (registry decisions) and the loaded engine (its streams)."""
    count: int = 0
    last_used: float = field(default_factory=time.monotonic)  # idle unload and LRU eviction

    @property
    def idle(self) -> bool:
        return self.count == 0

    def hold(self) -> None:
        self.count += 1
        self.last_used = time.monotonic()

    def release(self) -> None:
        self.count -= 1
        self.last_used = time.monotonic()
