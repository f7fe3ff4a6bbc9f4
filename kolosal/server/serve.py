"""Run the app under Hypercorn (HTTP/1.1, h2c with prior knowledge, h2 over TLS) and
shut down gracefully on SIGINT/SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from ..config import ServerSettings
from ..engine import EngineRegistry
from .app import create_app

logger = logging.getLogger(__name__)


def hypercorn_config(settings: ServerSettings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = settings.http_keep_alive_s
    config.graceful_timeout = 10
    if settings.ssl_certfile:
        config.certfile = settings.ssl_certfile
        config.keyfile = settings.ssl_keyfile
    return config


async def run_server(settings: ServerSettings, registry: EngineRegistry,
                     ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, end in-flight streams with an error
    chunk (engines shut down), and free every engine."""
    app = create_app(registry, settings)
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, shutdown.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass

    async def shutdown_trigger() -> None:
        await shutdown.wait()
        logger.info("shutting down: stopping engines")
        await registry.close_all()

    config = hypercorn_config(settings)
    scheme = "https" if settings.ssl_certfile else "http"
    logger.info("Kolosal Server listening on %s://%s:%d", scheme, settings.host, settings.port)
    if ready is not None:
        ready.set()
    try:
        await serve(app, config, shutdown_trigger=shutdown_trigger)
    finally:
        await registry.close_all()
