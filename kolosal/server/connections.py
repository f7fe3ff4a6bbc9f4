"""Connection-level protections, as small subclasses of Hypercorn's protocol classes.

* **HTTP/1.1: a hang-up is seen while the response is being made.** Hypercorn stops
  reading a connection from the moment a request is complete until its response has been
  sent (h11 is PAUSED), so a client that closed its connection was only noticed when a
  write failed: a request sent and closed at once ran its whole generation for nobody.
  Here the connection is read on; what a client sends ahead (pipelining) is kept up to
  ``h11_max_incomplete_size`` bytes, then reading stops as before. End of input is a
  disconnect, as in nginx and uvicorn (a client that half-closes is taken as gone). A
  request head over that size is answered 431 however it arrived.
* **HTTP/1.1: a hang-up ends every request the connection carried.** Once the client is
  gone (end of input, a failed write, or a reset), the request in progress is cancelled
  and the requests pipelined behind it never start (Hypercorn went on to answer each of
  them for nobody). While reading is stopped (more than that bound sent ahead), the socket
  is polled every ``HANGUP_POLL_S`` for the peer's FIN or reset (``POLLRDHUP``, Linux;
  elsewhere a hang-up is seen at the next write, after the request in progress).
* **HTTP/2: rapid reset (CVE-2023-44487).** A client may reset streams at a sustained
  ``RESET_RATE_PER_S`` (bursts of ``RESET_BURST``); beyond that the connection gets GOAWAY
  (ENHANCE_YOUR_CALM) and is closed, and nothing after the offending frame is processed.
  Handlers still running for a connection's streams, reset ones included, are capped at
  twice ``h2_max_concurrent_streams``: a new stream beyond that is refused (REFUSED_STREAM,
  which clients may retry), so resets cannot pile up work behind the advertised limit.

``configure()`` sets the limits below on Hypercorn's config and puts the subclasses where
its ``ProtocolWrapper`` looks them up (written against Hypercorn 0.17-0.18; the tests in
tests/server/test_hardening_http.py fail if a Hypercorn release changes what they rely on).
"""
from __future__ import annotations

import asyncio
import contextlib
import select
import time
from dataclasses import dataclass, field
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h11
import hypercorn.protocol
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Body, EndBody
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol

MAX_HEADER_BYTES = 16 * 1024           # request line + headers (HTTP/1.1), header list (HTTP/2)
MAX_STREAMS_PER_CONNECTION = 100       # HTTP/2 concurrent streams, and live handlers
# No cap on requests per connection: Hypercorn's (1000 by default) answers the next request
# on an HTTP/2 connection with GOAWAY and moves h2 to CLOSED, so the streams still in flight
# can no longer send, and the client's next frame gets the socket closed (a broken pipe
# for a client busy with hundreds of streams). Resets and live handlers are bounded instead.
REQUESTS_PER_CONNECTION = 2**62
HANDLERS_PER_STREAM_SLOT = 2          # live handlers per connection: 2 x the stream limit
RESET_BURST = 200        # client stream resets a connection may send at once...
RESET_RATE_PER_S = 20.0  # ...and per second after that
HANGUP_POLL_S = 0.25     # how often a connection whose reading is stopped is checked
HANGUP_EVENTS = getattr(select, "POLLRDHUP", 0)  # the peer's FIN, even behind unread bytes


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    per_second: float
    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.capacity
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def head_size(request: h11.Request) -> int:
    """Bytes of a request line and headers, as sent (give or take whitespace)."""
    return (len(request.method) + len(request.target) + 12
            + sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items()))


class HangupAwareH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, reading on while a response is in progress."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paused = False  # the events loop stopped at h11.PAUSED until the response ends
        self._gone = False    # the client hung up: nothing more starts on this connection

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):
            self._gone = True  # what was sent ahead is dropped with the connection
            await super().handle(event)  # the request in progress gets http.disconnect
        elif self._gone:
            return
        elif isinstance(event, RawData) and self._paused:
            self.connection.receive_data(event.data)  # kept for the next request cycle
            if len(self.connection.trailing_data[0]) > self.config.h11_max_incomplete_size:
                await self._stall()  # too much sent ahead: stop reading until then
        else:
            await super().handle(event)

    async def _stall(self) -> None:
        """Wait for the response in progress to end without reading on, watching the
        socket meanwhile: a client that hangs up ends the connection and its requests."""
        fileno = self._fileno()
        resumed = asyncio.ensure_future(self.can_read.wait())
        try:
            while not resumed.done():
                await asyncio.wait({resumed}, timeout=HANGUP_POLL_S if fileno >= 0 else None)
                if not resumed.done() and peer_hung_up(fileno):
                    await self.handle(Closed())
                    await self.send(Closed())  # the transport too: the reader stops
                    return
        finally:
            resumed.cancel()

    def _fileno(self) -> int:
        """The connection's socket, -1 when not known. Hypercorn's asyncio TCPServer hands
        its bound ``protocol_send`` to the protocol; its writer holds the transport."""
        writer = getattr(getattr(self.send, "__self__", None), "writer", None)
        sock = writer.get_extra_info("socket") if writer is not None else None
        return sock.fileno() if sock is not None and HANGUP_EVENTS else -1

    async def _maybe_recycle(self) -> None:
        if self._gone:  # the response ended for nobody: close, start nothing more
            await self._close_stream()
            await self.can_read.set()
            await self.send(Closed())
            return
        await super()._maybe_recycle()
        if self._paused and self.connection.our_state is h11.IDLE:
            self._paused = False  # the next cycle began: handle what was sent ahead
            await self._handle_events()

    async def _handle_events(self) -> None:
        # Hypercorn 0.18's loop, except at PAUSED: there it returns to the reader
        # instead of waiting (the reader then keeps the bytes, see handle()); and nothing
        # starts once the client is gone.
        while not self._gone:
            if self.connection.they_are_waiting_for_100_continue:
                await self._send_h11_event(h11.InformationalResponse(
                    status_code=100, headers=self.config.response_headers("h11")))
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_error_response(error.error_status_hint)
                await self.send(Closed())
                break
            if isinstance(event, h11.Request):
                if head_size(event) > self.config.h11_max_incomplete_size:
                    # h11 bounds only heads that arrive in pieces; one that came whole in a
                    # read (up to 64 KiB) would pass
                    await self._send_error_response(431)
                    await self.send(Closed())
                    break
                await self.send(Updated(idle=False))
                await self._check_protocol(event)
                await self._create_stream(event)
            elif event is h11.PAUSED:
                await self.can_read.clear()
                self._paused = True
                break
            elif isinstance(event, h11.ConnectionClosed) or event is h11.NEED_DATA:
                break
            elif self.stream is None:
                break
            elif isinstance(event, h11.Data):
                await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self.stream.handle(EndBody(stream_id=STREAM_ID))


def peer_hung_up(fileno: int) -> bool:
    """Whether the peer of a connected socket sent its FIN or a reset, even with bytes
    still unread before it (Linux POLLRDHUP); False where that cannot be known."""
    if fileno < 0:
        return False
    poller = select.poll()
    poller.register(fileno, HANGUP_EVENTS)
    return any(mask & (HANGUP_EVENTS | select.POLLHUP | select.POLLERR)
               for _, mask in poller.poll(0))


class CountedApp:
    """The ASGI app as one connection's streams call it: counts the handlers that exist,
    from their stream's creation until they return (a reset stream's handler included)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.active = 0

    async def __call__(self, *args: Any) -> None:
        try:
            await self.app(*args)
        finally:
            self.active -= 1


class GuardedH2Protocol(H2Protocol):
    """Hypercorn's HTTP/2 protocol with a reset budget and a cap on live handlers."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.handlers = CountedApp(app)
        super().__init__(self.handlers, *args, **kwargs)  # type: ignore[arg-type]
        self.resets = TokenBucket(RESET_BURST, RESET_RATE_PER_S)
        # Hypercorn advertises its header-list limit as an initial setting, which h2 never
        # applies to its decoder (only acknowledged changes are): enforce it from the start.
        self.connection.decoder.max_header_list_size = self.config.h2_max_header_list_size

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time, so each check sees the streams the previous ones created.
        for event in events:
            if isinstance(event, h2.events.StreamReset) and event.remote_reset and not self.resets.take():
                await super()._handle_events([event])
                await self._calm_down()
                return
            if isinstance(event, h2.events.RequestReceived) and self._at_capacity():
                with contextlib.suppress(h2.exceptions.StreamClosedError):  # reset already
                    self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                continue
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                # body of a refused or already answered stream (Hypercorn would raise a
                # KeyError and drop the connection): hand its flow-control window back
                self.connection.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)
                continue
            await super()._handle_events([event])

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        self.handlers.active += 1  # its handler task may start later: count it now
        await super()._create_stream(request)

    def _at_capacity(self) -> bool:
        # Twice the stream limit: a handler ends a moment after its stream's last frame
        # went out, and a client that honours the limit opens the next stream at once.
        return self.handlers.active >= HANDLERS_PER_STREAM_SLOT * self.config.h2_max_concurrent_streams

    async def _calm_down(self) -> None:
        self.connection.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                         additional_data=b"too many stream resets")
        await self._flush()
        await self.send(Closed())


def configure(config: Config) -> None:
    """Set the limits above on a Hypercorn config and install the protocols."""
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    config.h2_max_header_list_size = MAX_HEADER_BYTES
    config.h2_max_concurrent_streams = MAX_STREAMS_PER_CONNECTION
    config.keep_alive_max_requests = REQUESTS_PER_CONNECTION
    install()


def install() -> None:
    """Make Hypercorn build these protocols for every new connection."""
    wrapper_namespace: Any = hypercorn.protocol  # ProtocolWrapper's globals
    wrapper_namespace.H11Protocol = HangupAwareH11Protocol
    wrapper_namespace.H2Protocol = GuardedH2Protocol
