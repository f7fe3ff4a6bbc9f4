"""Runs a StepPlan on libllama: apply the step's LoRA adapter set (when it differs from the
context's), fill the batch, decode, then read each output row: logprobs (rows that asked),
grammar masks (constrained rows), sampling. The only engine module that imports
kolosal.llama."""
from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..llama import Batch, Context, DecodeStatus, LoraAdapter, Model, Sampler, SamplerSettings
from ..llama.grammar import build_grammar_tokenizer, is_grammar_special
from ..llama.model import ProgressCallback
from ..llama.sampler import SampleScratch
from .config import EngineConfig
from .constraint import GrammarEngine
from .lora import BASE_MODEL, LoraSpec, LoraTable
from .plan import StepOutput, StepPlan
from .request import Request, SamplerLike, SamplingParams, TokenLogprob
from .scheduler import SchedulerPolicy

# A step's sampled rows are spread over this many threads once there are MIN_ROWS_PER_THREAD
# rows for each (one row costs ~0.1-0.6 ms in C, its Python wrapping ~15 us).
SAMPLE_THREADS = min(4, os.cpu_count() or 1)
MIN_ROWS_PER_THREAD = 4

Job = tuple[int, SamplerLike, int, "np.ndarray | None"]  # index in the step, sampler, row, grammar mask


@dataclass(slots=True)
class StepResult:
    status: DecodeStatus
    output: StepOutput = field(default_factory=lambda: StepOutput(np.empty(0, dtype=np.int32)))
    decode_s: float = 0.0
    sample_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == DecodeStatus.OK

    @property
    def no_kv_slot(self) -> bool:
        return self.status == DecodeStatus.NO_KV_SLOT

    @property
    def stopped(self) -> bool:
        """Interrupted on purpose (``interrupts.py``): nothing of it remains."""
        return self.status == DecodeStatus.ABORTED

    @property
    def status_name(self) -> str:
        return self.status.name


def load_adapters(model: Model, specs: tuple[LoraSpec, ...]) -> list[LoraAdapter]:
    """The engine's LoRA adapters, in order (an adapter's id is its position); when one
    fails (AdapterLoadError) those already loaded are freed."""
    adapters: list[LoraAdapter] = []
    try:
        for spec in specs:
            adapters.append(LoraAdapter(model, spec.path))
    except BaseException:
        for adapter in adapters:
            adapter.close()
        raise
    return adapters


class ModelRunner:
    """The model, its LoRA adapters and one context. The context applies one adapter set
    at a time; ``run`` changes it only when a step's set differs (libllama then re-plans
    its compute graph once)."""

    def __init__(self, config: EngineConfig, progress: ProgressCallback | None = None) -> None:
        self.model = Model(config.model_path, config.model_params(), progress=progress)
        self.adapters: list[LoraAdapter] = []
        try:
            self.adapters = load_adapters(self.model, config.lora)
            self.context = Context(self.model, config.context_params())
        except Exception:
            self._free_adapters()
            self.model.close()
            raise
        self._applied = BASE_MODEL  # the adapter set the context applies
        self.lora = LoraTable(config.lora)  # ids, paths and default scales, for requests
        self.batch = Batch(self.context.n_batch)
        self.vocab = self.model.vocab
        self.num_slots = config.resolved_parallel
        self.policy = SchedulerPolicy(prefill_budget=config.prefill_budget,
                                      draft_max=config.resolved_spec_draft_max, swa_window=self.model.n_swa,
                                      pad_rows=config.pads_rows)
        self._grammar: GrammarEngine | None = None
        self._sample_scratch: SampleScratch | None = None
        self._sample_pool: ThreadPoolExecutor | None = None  # helpers for a step's sampled rows
        self._helper_scratches: list[SampleScratch] = []    # one per helper thread
        self._grammar_lock = threading.Lock()
        self._eog_ids = np.array(self.vocab.eog_tokens(), dtype=np.intp)  # for ignore_eos

    def close(self) -> None:
        if self._sample_pool is not None:
            self._sample_pool.shutdown(wait=True)
        if self._grammar is not None:
            self._grammar.close()
        self.batch.close()
        self.context.close()
        self._free_adapters()  # after the context that applied them, before their model
        self.model.close()

    def _free_adapters(self) -> None:
        for adapter in self.adapters:
            adapter.close()

    def grammar(self) -> GrammarEngine:
        """The model's grammar engine, built on first use (about a second for a large
        vocabulary, the GIL released for most of it: call from a worker thread)."""
        with self._grammar_lock:
            if self._grammar is None:
                eog = [t for t in (self.vocab.eos, self.vocab.eot) if t >= 0]
                eog += [t for t in self.vocab.eog_tokens() if t not in eog]
                self._grammar = GrammarEngine(build_grammar_tokenizer(self.vocab, eog), self.num_slots)
            return self._grammar

    def special_tokens(self, texts: Iterable[str]) -> dict[str, int]:
        """Which of ``texts`` are one special token of this vocabulary (tokenized with
        special tokens parsed, and marked special for grammars): text -> token id."""
        vocab = self.vocab
        found: dict[str, int] = {}
        for text in texts:
            ids = vocab.tokenize(text, False, True)
            if len(ids) == 1 and is_grammar_special(vocab, ids[0]):
                found[text] = ids[0]
        return found

    def make_sampler(self, params: SamplingParams) -> Sampler | None:
        """None means greedy: argmax in numpy over all greedy rows, no sampler chain."""
        settings = SamplerSettings(
            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
            min_p=params.min_p,
            seed=params.seed if params.seed is not None else random.getrandbits(32),
            repeat_penalty=params.repeat_penalty, presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, logit_bias=dict(params.logit_bias))
        if settings.is_greedy:
            return None
        if self._sample_scratch is None:  # samplers run on the engine thread, one at a time
            self._sample_scratch = SampleScratch(self.context.n_vocab)
        return Sampler(settings, self.context.n_vocab, self._sample_scratch)

    def run(self, plan: StepPlan) -> StepResult:
        if plan.adapters != self._applied:
            self.context.set_adapters([(self.adapters[index], scale) for index, scale in plan.adapters])
            self._applied = plan.adapters
        self.batch.fill(plan.tokens, plan.positions, plan.seq_ids, plan.logits)
        started = time.perf_counter()
        status = self.context.decode(self.batch)
        decoded = time.perf_counter()
        if status != DecodeStatus.OK:
            return StepResult(status, decode_s=decoded - started)
        output = StepOutput(np.empty(len(plan.sampled), dtype=np.int32))
        if plan.prompt_rows:
            output.prompt_logprobs = [(request, self._prompt_logprobs(request, first_row, start, plan))
                                      for request, first_row, start in plan.prompt_rows]
        self._sample(plan.sampled, plan.output_rows, output)
        if plan.drafts:
            output.drafted = [self._verify(plan, index, first, count, int(output.tokens[index]))
                              for index, first, count in plan.drafts]
        return StepResult(status, output, decoded - started, time.perf_counter() - decoded)

    def _verify(self, plan: StepPlan, index: int, first: int, count: int, token: int) -> list[int]:
        """Walk a sequence's draft rows: while the token sampled so far equals the next
        draft token, that draft token is accepted and the token after it is sampled from
        its row. Returns the tokens sampled after the first (one per accepted draft token).

        Greedy rows take the argmax. Sampled rows draw with the request's own sampler chain
        (temperature, top-k/p, min-p, penalties, bias; it also records each token for the
        penalties). For a deterministic draft (q = 1 on the drafted token) that is exactly
        the speculative acceptance rule: the draft is accepted with probability p(draft),
        and a rejection's draw is distributed as p without the draft token, renormalised
        (the residual). Each emitted token consumes one draw, as without speculation."""
        request = plan.sampled[index]
        sampler = request.sampler
        after: list[int] = []
        for row in range(first, first + count):
            if token != int(plan.tokens[row]):
                break
            self._never_eog(request, row)
            if sampler is None:
                token = int(self.context.logits_row(row).argmax())
            else:
                token = sampler.sample(self.context, row)
            after.append(token)
        return after

    def _never_eog(self, request: Request, row: int) -> None:
        """``ignore_eos`` as llama-server has it: the end-of-generation tokens are never
        sampled (their logits -inf, before any filter), so the model never sees one and the
        output runs to max_tokens. Under a grammar they stay: they are how it ends."""
        if request.params.ignore_eos and request.constraint is None:
            self.context.ban_tokens(row, self._eog_ids)

    def _sample(self, requests: list[Request], rows: np.ndarray, output: StepOutput) -> None:
        """Logprobs first (the raw distribution), then ``ignore_eos``'s ban and the grammar
        masks, then the tokens: a greedy constrained row is masked, then its argmax taken; a
        sampled one gives its mask to its sampler (``Sampler.sample``: the filters judge the
        model's own distribution before the grammar restricts it)."""
        facts = {index: self.context.row_logprobs(int(rows[index]), request.params.logprobs)
                 for index, request in enumerate(requests) if request.params.logprobs is not None}
        for index, request in enumerate(requests):
            self._never_eog(request, int(rows[index]))
        masks = self._grammar_masks(requests, rows)
        tokens = output.tokens
        self._greedy(requests, rows, facts, tokens)
        jobs = [(index, request.sampler, int(rows[index]), masks.get(index))
                for index, request in enumerate(requests) if request.sampler is not None]
        if jobs:
            self._sample_rows(jobs, tokens)
        if facts:
            output.logprobs = [None] * len(requests)
            for index, (lse, top_ids, top_logprobs) in facts.items():
                row, token = int(rows[index]), int(tokens[index])
                output.logprobs[index] = TokenLogprob(
                    token, self.context.logit(row, token) - lse,
                    tuple(zip(top_ids.tolist(), top_logprobs.tolist(), strict=True)))

    def _grammar_masks(self, requests: list[Request], rows: np.ndarray) -> dict[int, np.ndarray]:
        """Each constrained row's allowed tokens, computed now: greedy rows are masked in
        place (their argmax then sees only allowed tokens); the masks of sampled rows are
        returned by index, for their samplers."""
        constrained = [(index, r.constraint, r.seq_id) for index, r in enumerate(requests)
                       if r.constraint is not None]
        if not constrained:
            return {}
        grammar = self.grammar()
        grammar.fill_masks([(constraint, seq_id) for _, constraint, seq_id in constrained])
        masks: dict[int, np.ndarray] = {}
        for index, _, seq_id in constrained:
            if requests[index].sampler is None:
                self.context.mask_row(int(rows[index]), grammar.mask(seq_id))
            else:
                masks[index] = grammar.mask(seq_id)
        return masks

    def _greedy(self, requests: list[Request], rows: np.ndarray,
                facts: dict[int, tuple[float, np.ndarray, np.ndarray]], tokens: np.ndarray) -> None:
        """The argmax of each greedy row: the best token a logprobs row already found
        (argmax's tie rule) when nothing changed the row since, else one C pass over the
        rows."""
        greedy = []
        for index, request in enumerate(requests):
            if request.sampler is not None:
                continue
            fact = facts.get(index)
            unchanged = request.constraint is None and not request.params.ignore_eos
            if fact is not None and len(fact[1]) and unchanged:
                tokens[index] = fact[1][0]
            else:
                greedy.append(index)
        if greedy:
            tokens[greedy] = self.context.argmax_rows(rows[greedy])

    def _sample_rows(self, jobs: list[Job], tokens: np.ndarray) -> None:
        """Each (index, sampler, row, grammar mask or None): its token into tokens[index].
        Many rows are spread over SAMPLE_THREADS threads (the C call releases the GIL; the
        cores are idle between decodes); each draw is the sampler's own, so the tokens do
        not depend on the split."""
        threads = min(SAMPLE_THREADS, len(jobs) // MIN_ROWS_PER_THREAD)
        if threads <= 1:
            for index, sampler, row, allowed in jobs:
                tokens[index] = sampler.sample(self.context, row, None, allowed)
            return
        if self._sample_pool is None:
            self._sample_pool = ThreadPoolExecutor(SAMPLE_THREADS - 1, thread_name_prefix="sample")
            self._helper_scratches = [SampleScratch(self.context.n_vocab)
                                      for _ in range(SAMPLE_THREADS - 1)]

        def run(part: list[Job], scratch: SampleScratch | None) -> None:
            for index, sampler, row, allowed in part:
                tokens[index] = sampler.sample(self.context, row, scratch, allowed)

        parts = [jobs[start::threads] for start in range(threads)]
        helpers = [self._sample_pool.submit(run, part, scratch)
                   for part, scratch in zip(parts[1:], self._helper_scratches, strict=False)]
        run(parts[0], None)  # this thread: each sampler's own (the runner's) scratch
        for helper in helpers:
            helper.result()

    def _prompt_logprobs(self, request: Request, first_row: int, start: int,
                         plan: StepPlan) -> list[TokenLogprob]:
        """Logprob of each prompt token given the ones before it, for the rows of this
        step's chunk (row r at position p predicts prompt token p + 1)."""
        count = next(c for r, c in plan.scheduled if r is request)
        k = request.params.logprobs or 0
        logprobs = []
        for offset in range(count):
            position = start + offset
            if position + 1 >= request.num_prompt:
                break
            row = first_row + offset
            token = request.prompt_ids[position + 1]
            lse, top_ids, top_logprobs = self.context.row_logprobs(row, k)
            logprobs.append(TokenLogprob(token, self.context.logit(row, token) - lse,
                                         tuple(zip(top_ids.tolist(), top_logprobs.tolist(), strict=True))))
        return logprobs
