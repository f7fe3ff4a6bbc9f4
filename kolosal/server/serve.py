"""Run the app under Hypercorn (HTTP/1.1, h2c with prior knowledge, h2 over TLS) and
drain gracefully on SIGINT/SIGTERM; SIGHUP re-reads the keys file."""
from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from ..config import ServerSettings
from ..engine import EngineRegistry
from . import auth, connections
from .app import create_app
from .drain import Drain

logger = logging.getLogger(__name__)
FLUSH_TIMEOUT_S = 5.0  # after the engines stop: time for their final error events to go out


def hypercorn_config(settings: ServerSettings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = settings.http_keep_alive_s
    config.graceful_timeout = 10
    connections.configure(config)  # header sizes, streams and resets per connection
    if settings.ssl_certfile:
        config.certfile = settings.ssl_certfile
        config.keyfile = settings.ssl_keyfile
    return config


async def run_server(settings: ServerSettings, registry: EngineRegistry,
                     ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain: keep listening, answer readiness and new
    work with 503 (a balancer moves on), give in-flight requests ``drain_timeout_s`` to
    finish, end what still runs with an error event, free every engine, and return. A
    second signal cuts the drain short."""
    app = create_app(registry, settings)
    drain: Drain = app.config["DRAIN"]
    shutdown, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (hurry if shutdown.is_set() else shutdown).set()

    loop = asyncio.get_running_loop()
    handlers = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal,
                signal.SIGHUP: lambda: auth.reload_keys(app, settings)}  # keys file again
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass

    async def shutdown_trigger() -> None:
        await shutdown.wait()
        drain.begin()
        logger.info("draining: %d requests in flight, up to %gs to finish", drain.in_flight,
                    settings.drain_timeout_s)
        if not await drain.wait_idle(settings.drain_timeout_s, interrupt=hurry):
            logger.warning("drain over: ending %d requests still in flight", drain.in_flight)
        await registry.close_all()  # what still runs ends with an error event
        await drain.wait_idle(FLUSH_TIMEOUT_S, interrupt=hurry)  # ...that reaches its client
        logger.info("shutting down")

    config = hypercorn_config(settings)
    scheme = "https" if settings.ssl_certfile else "http"
    logger.info("Kolosal Server listening on %s://%s:%d", scheme, settings.host, settings.port)
    if ready is not None:
        ready.set()
    try:
        await serve(app, config, shutdown_trigger=shutdown_trigger)
    finally:
        await registry.close_all()
