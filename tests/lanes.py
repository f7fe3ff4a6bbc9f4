"""Which lane this pytest run is: the pure lane (``pytest -m "not model"``, or any marker
expression that deselects the model tests; meant to take seconds) runs the property tests
with a fifth of their examples (at least 5); every other run, CI's whole suite above all,
runs them all. Set by conftest.pytest_configure before any test module is imported."""
from __future__ import annotations

pure_lane = False


def examples(full: int) -> int:
    """Examples (hypothesis's, or random draws) for a property test that runs ``full`` in
    the whole suite."""
    return max(5, full // 5) if pure_lane else full
