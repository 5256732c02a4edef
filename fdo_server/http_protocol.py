"""uvicorn's HTTP protocol with each response leaving in one socket write.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two
``send`` system calls for every FDO message, each of which may wake the client. On the
benchmark machine those writes were the largest single cost of the owner (47 % of its
Python samples, ``docs/benchmarks.md``). :class:`OneWriteHTTPProtocol` is uvicorn's
own protocol (httptools when installed, as uvicorn's ``auto`` picks) whose transport
gathers the writes made while one event-loop callback runs and sends them together
right after it, so a response goes out in one write. Nothing else changes: closing
sends what is gathered first, aborting drops it.

It also bounds what a slow or greedy client can hold (:class:`EdgeLimits`, set by the
app factory in each worker with :func:`configure` from the service's settings):

* at most ``max_connections`` open connections per worker: one more is answered
  ``503 Service Unavailable`` and closed at once;
* a request head (request line and headers) must be complete within ``head_timeout``
  seconds of the connection being made, or of the first byte of the next request on a
  kept-alive connection; idle time between requests is uvicorn's keep-alive timeout;
* a request body must be complete within ``body_timeout`` seconds of its head (time
  the app spends not reading it, with reading paused, does not count).

A connection over a timeout is closed; the app, if it was waiting for the body, gets
``http.disconnect``.

Used by ``fdo <service> serve`` and :class:`fdo_server.launcher.ServiceProcess`
(``uvicorn --http`` :data:`HTTP_PROTOCOL`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base

    _TIMERS = True
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

    _TIMERS = False  # its parser callbacks differ: only the connection limit applies

log = logging.getLogger("fdo.http")

#: The ``--http`` value (``module:class``) that selects it.
HTTP_PROTOCOL = "fdo_server.http_protocol:OneWriteHTTPProtocol"


class GatheredWrites:
    """A transport that sends the writes of one loop callback in one ``write``."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """Send what is gathered (nothing once the transport is closing)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self._pending)) + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True)
class EdgeLimits:
    """What one worker allows a client; 0 (or 0.0) switches a limit off."""

    max_connections: int = 0
    head_timeout: float = 0.0
    body_timeout: float = 0.0


_limits = EdgeLimits()

_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nconnection: close\r\nretry-after: 1\r\n\r\nService Unavailable\n"
)


def configure(limits: EdgeLimits) -> None:
    """The limits every connection this process accepts from now on gets."""
    global _limits  # noqa: PLW0603 - one server per process; set by its app factory
    _limits = limits


class OneWriteHTTPProtocol(_Base):
    """uvicorn's HTTP protocol over :class:`GatheredWrites`, with :class:`EdgeLimits`."""

    edge: EdgeLimits = EdgeLimits()
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathered = GatheredWrites(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, gathered))
        self.edge = limits = _limits
        if limits.max_connections and len(self.connections) > limits.max_connections:
            log.warning("over %d connections: refusing one with 503", limits.max_connections)
            self.transport.write(_UNAVAILABLE)
            self.transport.close()
            return
        if _TIMERS:
            self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # httptools parser callbacks (uvicorn's, with the timers around them)

    def on_message_begin(self) -> None:
        if self._head_timer is None:
            self._start_head_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.edge.body_timeout:
            self._body_timer = self.loop.call_later(self.edge.body_timeout, self._body_expired)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # timers

    def _start_head_timer(self) -> None:
        if self.edge.head_timeout:
            self._head_timer = self.loop.call_later(self.edge.head_timeout, self._head_expired)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        self._expired(f"no complete request head within {self.edge.head_timeout:g} s")

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.flow.read_paused:  # the app is not reading it: not the client's delay
            self._body_timer = self.loop.call_later(self.edge.body_timeout, self._body_expired)
            return
        self._expired(f"no complete request body within {self.edge.body_timeout:g} s")

    def _expired(self, why: str) -> None:
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closing the connection of %s: %s", client, why)
        self.transport.close()
