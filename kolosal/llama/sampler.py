"""Per-sequence sampling in C (native/kolosal_helpers.c), one call per row."""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .context import Context
from .loader import load

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed


@dataclass(frozen=True, slots=True)
class SamplerSettings:
    temperature: float = 1.0
    top_k: int = 0              # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = DEFAULT_SEED
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def is_greedy(self) -> bool:
        """Plain argmax suffices: no temperature and nothing that reshapes the logits."""
        return (self.temperature <= 0.0 and not self.logit_bias
                and self.repeat_penalty == 1.0 and self.presence_penalty == 0.0
                and self.frequency_penalty == 0.0)


class SampleScratch:
    """The candidate buffer ``kolosal_sample`` orders survivors in (n_vocab entries, 8 bytes
    each): one per thread that samples, shared by all the samplers it runs."""

    def __init__(self, n_vocab: int) -> None:
        native = load()
        self.buffer = native.ffi.new("kolosal_candidate[]", n_vocab)


class Sampler:
    """penalties -> logit bias -> top-k -> top-p -> min-p -> temperature -> dist (or
    greedy), the order llama-server uses by default, computed by ``kolosal_sample`` in C
    (native/kolosal_helpers.c) on the row in place: the filters by a histogram of distances
    below the max instead of ordering the vocabulary. The randomness is one uniform draw per
    token from this sampler's own generator, seeded by the request: the same seed and logits
    give the same tokens alone or beside other requests. Penalties count the tokens this
    sampler produced, the last ``penalty_last_n`` of them."""

    def __init__(self, settings: SamplerSettings, n_vocab: int, scratch: SampleScratch | None = None) -> None:
        native = load()
        self._ffi, self._lib = native.ffi, native.lib
        self.settings = settings
        self.n_vocab = n_vocab
        for token in settings.logit_bias:
            if not 0 <= token < n_vocab:
                raise ValueError(f"logit_bias token {token} is outside the vocabulary")
        self._scratch = scratch or SampleScratch(n_vocab)
        self._rng = random.Random(None if settings.seed == DEFAULT_SEED else settings.seed)
        self._penalized = (settings.repeat_penalty != 1.0 or settings.presence_penalty != 0.0
                           or settings.frequency_penalty != 0.0) and settings.penalty_last_n != 0
        window = settings.penalty_last_n if settings.penalty_last_n > 0 else None  # -1: all
        self._recent: deque[int] = deque(maxlen=window)
        bias = settings.logit_bias
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int32, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))

    def sample(self, context: Context, row: int, scratch: SampleScratch | None = None,
               allowed: np.ndarray | None = None) -> int:
        """Sample from batch row ``row`` of the last decode and count the token (``scratch``:
        the calling thread's, when several threads sample one step's rows). ``allowed``: a
        grammar's llguidance bitmask (uint32 words): the filters judge the model's own
        distribution, the draw is among their survivors the grammar allows, and only when
        it allows none of them are the filters applied to the allowed tokens alone (the row
        is then left masked); see ``kolosal_sample``."""
        s, ffi = self.settings, self._ffi
        ids: np.ndarray = _EMPTY_INT
        counts: np.ndarray = _EMPTY_INT
        if self._penalized and self._recent:
            seen, times = np.unique(np.fromiter(self._recent, dtype=np.int32, count=len(self._recent)),
                                    return_counts=True)
            ids, counts = seen.astype(np.int32), times.astype(np.int32)
        token = int(self._lib.kolosal_sample(
            context.logits_pointer(row), self.n_vocab,
            ffi.from_buffer("int32_t[]", ids), ffi.from_buffer("int32_t[]", counts), len(ids),
            s.repeat_penalty, s.frequency_penalty, s.presence_penalty,
            ffi.from_buffer("int32_t[]", self._bias_ids), ffi.from_buffer("float[]", self._bias_values),
            len(self._bias_ids), s.temperature, s.top_k, s.top_p, s.min_p, self._rng.random(),
            (scratch or self._scratch).buffer,
            ffi.NULL if allowed is None else ffi.from_buffer("uint32_t[]", allowed)))
        if token < 0:
            raise MemoryError("kolosal_sample could not allocate")
        if self._penalized:
            self._recent.append(token)
        return token

    def close(self) -> None:
        """Nothing native to free (kept for the engine's release path)."""

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_EMPTY_INT = np.zeros(0, dtype=np.int32)
