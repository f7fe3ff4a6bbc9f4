"""Context.interrupt: libllama's abort callback stops a decode, which then leaves nothing in
the KV cache, and the same batch decoded after ``resume`` gives the logits an uninterrupted
context gives."""
from __future__ import annotations

import threading

import numpy as np

from kolosal.llama import Batch, Context, ContextParams, DecodeStatus, Model

PROMPT = "Once upon a time there was a lighthouse keeper who"


def fill(batch: Batch, model: Model) -> list[int]:
    ids = model.vocab.tokenize(PROMPT)
    flags = [0] * (len(ids) - 1) + [1]
    batch.fill(np.array(ids), np.arange(len(ids)), np.zeros(len(ids), dtype=np.int32), np.array(flags))
    return ids


def test_an_interrupted_decode_leaves_nothing_and_runs_again(llama_model: Model) -> None:
    params = ContextParams(n_ctx=512, n_seq_max=1, n_threads=2)
    with Context(llama_model, params) as plain, Batch(512) as batch:
        fill(batch, llama_model)
        assert plain.decode(batch) == DecodeStatus.OK
        expected = plain.logits_row(batch.n_tokens - 1).copy()
    with Context(llama_model, params) as context, Batch(512) as batch:
        ids = fill(batch, llama_model)
        context.interrupt()
        assert context.decode(batch) == DecodeStatus.ABORTED
        assert context.seq_pos_max(0) == -1  # libllama dropped the batch's positions
        assert context.decode(batch) == DecodeStatus.ABORTED  # until resumed
        context.resume()
        assert context.decode(batch) == DecodeStatus.OK
        assert context.seq_pos_max(0) == len(ids) - 1
        np.testing.assert_array_equal(context.logits_row(batch.n_tokens - 1), expected)


def test_another_thread_stops_a_decode_in_flight(llama_model: Model) -> None:
    """A long prompt batch, stopped from another thread once it runs (or, on a machine fast
    enough to finish first, the next decode is stopped at its first node)."""
    params = ContextParams(n_ctx=4096, n_batch=2048, n_ubatch=2048, n_seq_max=1, n_threads=2)
    with Context(llama_model, params) as context, Batch(2048) as batch:
        ids = (llama_model.vocab.tokenize(PROMPT) * 200)[:2000]
        batch.fill(np.array(ids), np.arange(len(ids)), np.zeros(len(ids), dtype=np.int32),
                   np.array([0] * (len(ids) - 1) + [1]))
        timer = threading.Timer(0.01, context.interrupt)
        timer.start()
        status = context.decode(batch)
        timer.join()
        if status == DecodeStatus.OK:
            context.seq_remove(0)
            status = context.decode(batch)
        assert status == DecodeStatus.ABORTED
        assert context.seq_pos_max(0) == -1
