"""The registry's engine record without a model: every lifecycle transition and the table
that allows them. The loaded engine is a stand-in: only the entry's bookkeeping is tested."""
from __future__ import annotations

from typing import Any, cast

import pytest

from kolosal.engine import AsyncEngine, EngineConfig, EngineEntry, EngineState
from kolosal.engine.entry import TRANSITIONS, IllegalTransitionError
from kolosal.engine.holders import Holders


class LoadedStandIn:
    info = "model facts"

    def stats(self) -> dict[str, Any]:
        return {"slots_busy": 0}


def loaded(entry: EngineEntry) -> EngineEntry:
    entry.begin_load()
    entry.loaded(cast(AsyncEngine, LoadedStandIn()), seconds=1.5)
    return entry


def new_entry() -> EngineEntry:
    return EngineEntry(EngineConfig("e", "/models/e.gguf"))


def test_a_new_entry_loads_to_ready() -> None:
    entry = new_entry()
    assert entry.state == EngineState.LOADING and entry.engine is None and entry.stats() == {}
    loaded(entry)
    assert entry.state == EngineState.READY and entry.has_loaded
    assert entry.load_progress == 1.0 and entry.load_seconds == 1.5
    assert entry.stats() == {"slots_busy": 0} and entry.info == "model facts"


def test_a_new_engine_that_fails_is_failed_one_that_served_stays_reloadable() -> None:
    entry = new_entry()
    entry.begin_load()
    entry.load_failed(OSError("no such file"))
    assert entry.state == EngineState.FAILED and entry.error == "no such file"

    served = loaded(new_entry())
    assert served.begin_unload() is not None
    served.unloaded()
    served.begin_load()
    assert served.state == EngineState.LOADING and served.error is None
    served.load_failed(RuntimeError("context failed"))
    assert served.state == EngineState.UNLOADED and served.error == "context failed"
    served.load_failed(RuntimeError("estimate failed"))  # before its load began: stays UNLOADED
    assert served.state == EngineState.UNLOADED


def test_unload_and_reload_keep_the_model_facts() -> None:
    entry = loaded(new_entry())
    engine = entry.begin_unload()
    assert isinstance(engine, LoadedStandIn) and entry.state == EngineState.UNLOADING
    assert entry.engine is None and entry.stats() == {}
    entry.unloaded()
    assert entry.state == EngineState.UNLOADED and entry.load_progress == 0.0
    assert entry.info == "model facts"  # the status still describes the model
    loaded(entry)
    assert entry.state == EngineState.READY


def test_removal_from_every_resting_state() -> None:
    failed = new_entry()
    failed.load_failed(ValueError("bad"))
    unloaded = loaded(new_entry())
    unloaded.begin_unload()
    unloaded.unloaded()
    for entry in (new_entry(), loaded(new_entry()), failed, unloaded):
        entry.begin_unload()
        assert entry.state == EngineState.UNLOADING


@pytest.mark.parametrize("state", list(EngineState))
def test_edges_outside_the_table_are_refused(state: EngineState) -> None:
    for target in set(EngineState) - TRANSITIONS[state] - {state}:
        entry = new_entry()
        entry.state = state
        with pytest.raises(IllegalTransitionError, match=f"{state.value} -> {target.value}"):
            entry._move(target)


def test_ready_cannot_be_loaded_again_nor_unloaded_twice() -> None:
    entry = loaded(new_entry())
    with pytest.raises(IllegalTransitionError):
        entry.begin_load()
    entry.begin_unload()
    with pytest.raises(IllegalTransitionError):
        entry.begin_unload()


def test_holders_count_and_touch() -> None:
    holders = Holders(last_used=0.0)
    assert holders.idle
    holders.hold()
    holders.hold()
    assert holders.count == 2 and not holders.idle and holders.last_used > 0
    holders.release()
    holders.last_used = 0.0
    holders.release()
    assert holders.idle and holders.last_used > 0  # the end of a request counts as use
