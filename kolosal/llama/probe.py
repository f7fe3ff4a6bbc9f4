"""The child process of the isolated model-file check:
``python -m kolosal.llama.probe PATH N_CTX N_BATCH N_SEQ_MAX``.

libllama aborts the whole process (GGML_ASSERT, SIGABRT) on some inconsistent files, e.g. a
``block_count`` of 0 or 100000, and an abort cannot be caught. So before a server loads a
file, this short-lived child loads it the way libllama's own memory-fit pass does: the
hyper-parameters, vocabulary and tensor table, with no weight allocated or read (no_alloc,
on the CPU), then a context of the given shape, which builds its compute graphs. If that
kills anything, it kills only this child, and the server refuses the file.

Then it decodes: the weights mapped, a small context on all cores, one prompt step of 8
tokens and one single-token step, with the kernels the engine will run. A library built for
another CPU (or ggml's AMX kernels, which die on AMX CPUs) dies here with SIGILL, not in the
server on its first request. ``DECODING_LINE`` on stderr marks this second phase.

Exit status: 0 loadable; 3 libllama refused the file (the last stderr line, after
``REFUSED_PREFIX``, says why); anything else or a signal: it crashed.
"""
from __future__ import annotations

import logging
import os
import sys

REFUSED_PREFIX = "kolosal-probe: refused: "
DECODING_LINE = "kolosal-probe: decoding"
EXIT_REFUSED = 3
DECODE_TOKENS = 8  # a prompt step of several rows (gemm kernels), then one row (gemv)


class _LoadError(logging.Handler):
    """Keeps libllama's reason for refusing a file: its "error loading model" line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "error loading model: " in message:
            self.reason = message.split("error loading model: ", 1)[1]
        elif not self.reason:
            self.reason = message


def _no_core_dumps() -> None:
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):  # not on this platform: nothing to turn off
        pass


def probe(path: str, n_ctx: int, n_batch: int, n_seq_max: int) -> int:
    from .context import Context, ContextParams
    from .model import Model, ModelLoadError, ModelParams

    last_error = _LoadError()
    logging.getLogger("kolosal.libllama").addHandler(last_error)
    try:
        model = Model(path, ModelParams(n_gpu_layers=0, use_mmap=False, no_alloc=True))
    except (ModelLoadError, ValueError, OSError) as error:
        reason = " ".join((last_error.reason or str(error)).split())
        print(REFUSED_PREFIX + reason, file=sys.stderr, flush=True)
        return EXIT_REFUSED
    with model:
        try:
            with Context(model, ContextParams(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                              n_seq_max=n_seq_max, n_threads=1)):
                pass
        except RuntimeError:
            # no crash: the real load meets the same refusal and reports it with its own error
            return 0
    print(DECODING_LINE, file=sys.stderr, flush=True)
    decode_check(path)
    return 0


def decode_check(path: str) -> None:
    """Decode a few tokens with the real weights on all cores. Only a crash matters here: a
    refusal (an encoder-only model, a failed allocation) is the real load's to report."""
    import numpy as np

    from .batch import Batch
    from .context import Context, ContextParams
    from .model import Model, ModelParams

    try:
        model = Model(path, ModelParams(n_gpu_layers=0))
    except (RuntimeError, ValueError, OSError):
        return
    with model:
        n_tokens = min(DECODE_TOKENS, model.vocab.n_tokens)
        try:
            context = Context(model, ContextParams(n_ctx=64, n_batch=16, n_ubatch=16, n_seq_max=1))
        except RuntimeError:
            return
        with context, Batch(16) as batch:
            steps = [np.arange(n_tokens), np.array([n_tokens - 1])]
            position = 0
            for tokens in steps:
                rows = len(tokens)
                logits = np.zeros(rows, dtype=np.int8)
                logits[-1] = 1
                batch.fill(tokens, np.arange(position, position + rows), np.zeros(rows), logits)
                try:
                    context.decode(batch)
                except (RuntimeError, ValueError):  # an error code, not a crash
                    return
                position += rows


def main(argv: list[str]) -> int:
    _no_core_dumps()
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # no gdb attach on an abort: just die
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(message)s")
    path, n_ctx, n_batch, n_seq_max = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    return probe(path, n_ctx, n_batch, n_seq_max)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
