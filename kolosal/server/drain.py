"""Graceful drain, for load balancers and orchestrators.

SIGTERM calls ``Drain.begin()`` (see serve.py): from then on the readiness probe answers 503
(server/engines/routes.py), new work gets 503 ``server_draining`` with ``Retry-After`` (a
balancer retries it on another replica), and ``wait_idle()`` tells when the requests already
in flight, streams included, have ended."""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from quart import Quart, Response, request

from .errors import APIError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})   # still answered while draining
DRAIN_RETRY_AFTER_S = 1


class Drain:
    """The server's drain state and the HTTP requests in flight (counted at the ASGI
    boundary, so a stream counts until its last byte is sent or its client is gone)."""

    def __init__(self) -> None:
        self.draining = False
        self.started = 0.0
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        if not self.draining:
            self.draining, self.started = True, time.monotonic()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float, interrupt: asyncio.Event | None = None) -> bool:
        """True once nothing is in flight; False after ``timeout`` seconds or on ``interrupt``."""
        waits = [asyncio.ensure_future(self._idle.wait())]
        if interrupt is not None:
            waits.append(asyncio.ensure_future(interrupt.wait()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wait
        return self._idle.is_set()


def count_in_flight(app: Quart, drain: Drain) -> None:
    """Wrap the app's ASGI entry: every HTTP request is in flight until its handler,
    body included, has returned."""
    inner = app.asgi_app

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        drain.enter()
        try:
            await inner(scope, receive, send)
        finally:
            drain.leave()

    app.asgi_app = asgi_app  # type: ignore[method-assign]


def draining_error() -> APIError:
    return APIError(503, "The server is shutting down and takes no new requests; retry on "
                         "another replica.", type="server_error", code="server_draining",
                    headers={"Retry-After": str(DRAIN_RETRY_AFTER_S), "x-should-retry": "true"})


def install(app: Quart) -> Drain:
    """Install the drain refusal and the in-flight counter on ``app``."""
    drain = Drain()
    app.config["DRAIN"] = drain
    count_in_flight(app, drain)

    @app.before_request
    async def refuse_while_draining() -> None:
        if drain.draining and request.method not in SAFE_METHODS:
            raise draining_error()

    @app.after_request
    async def close_while_draining(response: Response) -> Response:
        # HTTP/1.1 clients reconnect (through their balancer, to another replica);
        # HTTP/2 forbids the header and hypercorn sends GOAWAY when the drain ends.
        if drain.draining and request.http_version.startswith("1"):
            response.headers["Connection"] = "close"
        return response

    return drain
