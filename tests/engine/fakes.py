"""Stand-ins for libllama's side of the engine (KV memory, vocabulary, runner), shared by
the pure engine tests: they drive the scheduler and the engine thread with no library."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kolosal.engine.plan import StepOutput, StepPlan
from kolosal.engine.request import SamplingParams
from kolosal.engine.scheduler import SchedulerPolicy


class FakeMemory:
    """Records what the scheduler removes and copies; ``pos_min`` fakes cells that a
    sliding window let libllama reuse."""

    def __init__(self) -> None:
        self.removed: list[tuple[int, int, int]] = []
        self.copied: list[tuple[int, int]] = []
        self.copied_ranges: list[tuple[int, int, int, int]] = []
        self.pos_min: dict[int, int] = {}  # a sequence whose oldest cells libllama reused

    def seq_remove(self, seq_id: int, start: int = 0, end: int = -1) -> bool:
        self.removed.append((seq_id, start, end))
        return True

    def seq_copy(self, src: int, dst: int, start: int = 0, end: int = -1) -> None:
        self.copied.append((src, dst))
        self.copied_ranges.append((src, dst, start, end))

    def seq_pos_min(self, seq_id: int) -> int:
        return self.pos_min.get(seq_id, 0)


class FakeContext(FakeMemory):
    n_ctx = 12

    def interrupt(self) -> None:
        pass

    def resume(self) -> None:
        pass


class FakeVocab:
    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        return b"x"

    def is_eog(self, token: int) -> bool:
        return False


@dataclass
class FakeResult:
    output: StepOutput
    ok: bool = True
    no_kv_slot: bool = False
    stopped: bool = False
    status_name: str = "OK"
    decode_s: float = 0.0
    sample_s: float = 0.0


@dataclass
class FakeRunner:
    """Samples token 5 for every row."""

    context: FakeContext = field(default_factory=FakeContext)
    vocab: FakeVocab = field(default_factory=FakeVocab)
    policy: SchedulerPolicy = field(default_factory=SchedulerPolicy)

    def make_sampler(self, params: SamplingParams) -> None:
        return None

    def run(self, plan: StepPlan) -> FakeResult:
        return FakeResult(StepOutput(np.full(len(plan.sampled), 5, dtype=np.int32)))
