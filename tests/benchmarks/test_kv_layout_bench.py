"""benchmarks/kv_layout.py's core on a tiny configuration (no timing assertions)."""
from __future__ import annotations

import pytest

from benchmarks.kv_layout import measure
from kolosal.llama import Model

pytestmark = pytest.mark.model  # every test here needs the model: the pure lane skips the file


def test_both_layouts_decode_the_same_rows(llama_model: Model) -> None:
    cases = measure(llama_model, threads=2, rows=2, parked=[0, 300], steps=2, cells=1024, slots=4)
    assert [(c.layout, c.parked_cells) for c in cases] == [("streams", 0), ("streams-gaps", 0),
                                                          ("unified", 0), ("unified", 300)]
    assert all(c.rows == 2 and c.step_ms > 0 for c in cases)
    with pytest.raises(ValueError, match="below 4"):
        measure(llama_model, threads=2, rows=4, parked=[0], steps=1, cells=1024, slots=4)
