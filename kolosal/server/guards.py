"""Request checks that run before any handler: the client is still there, POST bodies are
JSON, and a browser page on another site cannot drive a server that has no API key.

* **Client gone.** Every request's ``http.disconnect`` is recorded as it passes to Quart,
  and ``raise_if_client_gone()`` ends the handler before its work is submitted. Quart
  cancels the handler on a disconnect, but on Python < 3.12 ``asyncio.wait_for`` swallows
  that cancellation when the awaited body is already complete, which is exactly the case
  of a request reset or closed in the same write that sent it (HTTP/2 rapid reset,
  CVE-2023-44487, and the HTTP/1.1 send-and-close): the handler would go on to run its
  whole generation for nobody. A request cancelled this way is logged as 499.
* **415** unless a POST says ``Content-Type: application/json``: HTML forms and
  ``fetch`` "simple requests" (text/plain, form-encoded, multipart) can be sent
  cross-origin by any page without a CORS preflight.
* **403** when no API key is configured, for every method that changes something: an
  ``Origin`` that is neither this server nor in ``--cors-origins``, and, on a loopback
  bind, a ``Host`` that is not a loopback name or an IP address (DNS rebinding: a page on
  ``evil.example`` whose name now resolves to 127.0.0.1). Clients that are not browsers
  send no ``Origin`` and are not affected.
"""
from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from quart import Quart, g, request

from ..config import ServerSettings
from .errors import APIError

CLIENT_GONE = "kolosal.client_gone"   # scope key: an asyncio.Event set on http.disconnect
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


# -- client gone ------------------------------------------------------------------------------
def watch_disconnects(app: Quart) -> None:
    """Wrap the ASGI entry: note each request's ``http.disconnect`` in its scope."""
    inner = app.asgi_app

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        gone = asyncio.Event()
        scope[CLIENT_GONE] = gone

        async def watched_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        await inner(scope, watched_receive, send)

    app.asgi_app = asgi_app  # type: ignore[method-assign]


def client_gone() -> bool:
    """Whether the current request's client has disconnected (its stream was reset or its
    connection closed)."""
    gone: asyncio.Event | None = request.scope.get(CLIENT_GONE)  # type: ignore[assignment]
    return gone is not None and gone.is_set()


def raise_if_client_gone() -> None:
    """Called before a request takes an engine slot: a client that is already gone gets
    nothing queued for it. The handler ends as cancelled, which it semantically is."""
    if client_gone():
        raise asyncio.CancelledError("the client disconnected")


# -- content type, origin, host ----------------------------------------------------------------
def unsupported_media_type(content_type: str) -> APIError:
    shown = content_type[:100] or "none"
    return APIError(415, f"Content-Type must be application/json (got {shown})",
                    code="unsupported_media_type")


def is_ip_or_loopback_name(host: str) -> bool:
    """An IP literal cannot be rebound; a loopback name is this machine."""
    name = host.lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> host (lowercase)."""
    try:
        return (urlsplit("//" + authority).hostname or "").lower()
    except ValueError:  # e.g. an unbalanced '['
        return ""


def is_loopback_bind(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BrowserGuard:
    """The 403 checks for servers without API keys (see the module docstring)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.enabled = not settings.api_keys
        self.check_host = is_loopback_bind(settings.host)
        self.any_origin = "*" in settings.cors_origins
        self.origins = {origin.rstrip("/").lower() for origin in settings.cors_origins}

    def check(self, method: str, host: str, origin: str | None) -> None:
        if not self.enabled or method in SAFE_METHODS:
            return
        if self.check_host and host and not is_ip_or_loopback_name(hostname(host)):
            raise APIError(403, "Host header is not this server's address: state-changing "
                           "requests to a server without an API key must name it by a loopback "
                           "name or an IP address (DNS rebinding defence)",
                           type="permission_error", code="host_forbidden")
        if origin is None or self.origin_allowed(origin, host):
            return  # not sent by a browser page, or an allowed one
        raise APIError(403, f"Origin {origin[:100]!r} may not change this server: it has no "
                       "API key, and the origin is neither this server nor in --cors-origins",
                       type="permission_error", code="origin_forbidden")


    def origin_allowed(self, origin: str, host: str) -> bool:
        """Every origin allowed, this one listed, or the server's own (e.g. the chat page)."""
        normalized = origin.rstrip("/").lower()
        if self.any_origin or normalized in self.origins:
            return True
        parts = urlsplit(normalized) if normalized != "null" else None
        return parts is not None and bool(parts.netloc) and parts.netloc == host.lower()


def install(app: Quart, settings: ServerSettings) -> None:
    """Register the checks on ``app`` (after the API-key check)."""
    browser = BrowserGuard(settings)
    watch_disconnects(app)

    @app.before_request
    async def check_request() -> None:
        raise_if_client_gone()  # an HTTP/2 stream opened and reset in one write ends here
        if request.url_rule is None:  # 404/405 answer as they are
            return
        browser.check(request.method, request.headers.get("Host", ""), request.headers.get("Origin"))
        if request.method == "POST" and request.mimetype != JSON_TYPE:
            raise unsupported_media_type(request.headers.get("Content-Type", ""))

    @app.teardown_request
    async def log_cancelled(error: BaseException | None) -> None:
        # A handler cancelled because its client left never reaches after_request.
        record = g.get("record")
        if isinstance(error, asyncio.CancelledError) and record is not None:
            record.finish(499)
