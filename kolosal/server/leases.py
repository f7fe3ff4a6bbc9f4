"""The engine a request runs on: leased from the registry for as long as the handler needs
it, or, for llama-server's endpoints that name no model, the default one."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from quart import current_app

from ..engine import AsyncEngine, EngineState
from .caller import may_use
from .errors import MODEL_NOT_FOUND, NO_ENGINE, from_engine_error


@contextlib.asynccontextmanager
async def held_engine(model: str) -> AsyncIterator[AsyncEngine]:
    """The request's engine, loaded (an idle-unloaded one is reloaded transparently) and
    held until the block ends: it cannot be unloaded while the request tokenizes and
    submits. Its streams hold it themselves after that. An engine the caller's key may not
    use is not found."""
    if not may_use(model):  # an engine this key may not use does not exist for it
        raise MODEL_NOT_FOUND.error(model)
    async with contextlib.AsyncExitStack() as stack:
        try:  # only the lease's own failures map here, not the block's
            engine = await stack.enter_async_context(current_app.config["REGISTRY"].lease(model))
        except Exception as error:
            raise from_engine_error(error, subject=model) from None
        yield engine


def default_model() -> str:
    """The engine a request without ``model`` uses: the first ready engine in load order,
    else the first listed one (an unloaded engine is reloaded). llama-server serves one
    model, so its clients never name one."""
    entries = [entry for entry in current_app.config["REGISTRY"].list() if may_use(entry.engine_id)]
    if not entries:
        raise NO_ENGINE.error()
    ready = [entry for entry in entries if entry.state == EngineState.READY]
    return str((ready or entries)[0].engine_id)
