"""The ``speculative`` request extension maps onto SamplingParams.speculative (pure)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from kolosal.engine.request import SPECULATE_ON
from kolosal.server.completions.protocol import CompletionRequest


def drafts(value: object) -> int | None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "speculative": value})
    return body.sampling_params(16).speculative


def test_the_speculative_switch() -> None:
    assert drafts(None) is None  # the engine's setting
    assert drafts(False) == 0
    assert drafts(True) == SPECULATE_ON
    assert drafts({"n_max": 4}) == 4
    assert drafts({"n_max": 0}) == 0


@pytest.mark.parametrize("value", ["yes", 1, {"n_max": -1}, {"n_max": 65}, {"n": 4}])
def test_a_malformed_switch_is_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        drafts(value)
