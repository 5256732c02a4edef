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
``http.disconnect``. A timer is started only when a read ends inside a head or a body (and
the first head's when the connection is made): a request that arrives whole in one read,
as nearly every one does, costs no timer.

And it answers the commonest request of the device plane, an FDO message, itself when the
app factory handed it a :class:`FastRoute` (:func:`configure_fast`; the services' is
:class:`fdo_server.fast_messages.FastMessages`): a ``POST /fdo/101/msg/<digits>`` with a
``Content-Length`` body within the limit, no ``Expect``, no upgrade, and no earlier
request of the connection still being answered, is answered from the parser's callbacks,
without building an ASGI scope, a request-response cycle, a task and the middleware
chain for it (about a fifth of a TO1's server instructions, ``docs/benchmarks.md``). The
answer is the one the app gives: the route checks what the middleware in front of the
FDO endpoint checks (the edge guard's rules, the admin listener) and runs the endpoint's
message handler; the response goes out as uvicorn writes it (its ``Date`` header and
keep-alive rules, its access log line, its request count and keep-alive timer). Any
other request, and an FDO message the route does not take now (a networked database
while messages go to the thread pool), takes uvicorn's path.

Used by ``fdo <service> serve`` and :class:`fdo_server.launcher.ServiceProcess`
(``uvicorn --http`` :data:`HTTP_PROTOCOL`).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from uvicorn.protocols.utils import get_client_addr

from fdo_server.logs import log_access

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE
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

    def write_now(self, data: bytes) -> None:
        """Send ``data`` at once, after what is gathered (one ``write`` either way)."""
        if self._pending:
            self._pending.append(data)
            self.flush()
        elif not self._transport.is_closing():
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


#: The request target of every FDO message, before its type.
FDO_TARGET = b"/fdo/101/msg/"


class FastRoute(Protocol):
    """FDO messages answered by the protocol itself (see the module docstring)."""

    def takes(self, msg_type: bytes, local_port: int | None) -> bool:
        """Whether a message of ``msg_type`` (ASCII digits) that came in on ``local_port``
        is answered here now, with its body at most :attr:`max_body` bytes."""
        ...

    @property
    def max_body(self) -> int: ...

    def answer(
        self,
        msg_type: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        client: tuple[str, int] | None,
    ) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes]:
        """The answer to the message: status, header fields and body."""
        ...


#: Each served app's route, by the app (as uvicorn loads it from the factory).
_fast_routes: weakref.WeakKeyDictionary[Any, FastRoute] = weakref.WeakKeyDictionary()


def configure_fast(app: Any, route: FastRoute | None) -> None:
    """The FDO messages the connections to ``app`` answer themselves from now on (None:
    none). An app uvicorn wraps (its proxy-header or trace-logging middleware) is not
    found, and its connections answer every request through it."""
    if route is None:
        _fast_routes.pop(app, None)
    else:
        _fast_routes[app] = route


class _FastRequest:
    """An FDO message on the fast path, its body arriving."""

    __slots__ = ("body", "keep_alive", "msg_type", "route", "version")

    def __init__(self, route: FastRoute, msg_type: str, version: str, keep_alive: bool) -> None:
        self.route = route
        self.msg_type = msg_type
        self.version = version
        self.keep_alive = keep_alive
        self.body: list[bytes] = []


class OneWriteHTTPProtocol(_Base):
    """uvicorn's HTTP protocol over :class:`GatheredWrites`, with :class:`EdgeLimits`."""

    edge: EdgeLimits = EdgeLimits()
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    #: Whether the data received so far ends inside a request's head, or its body.
    _in_head = False
    _in_body = False
    #: The route of the app this connection serves (:func:`configure_fast`), if any.
    _fast: FastRoute | None = None
    #: The FDO message this connection answers itself, if any.
    _fast_request: _FastRequest | None = None

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
            self._fast = _fast_routes.get(self.app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._fast_request = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._fast_request is not None:  # answered, then closed (as uvicorn's cycle)
            self._fast_request.keep_alive = False
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A request head or body that this data began and did not end is timed from now;
        # one that ended in it (nearly every request: head and body in one read) needs no
        # timer at all.
        if not (self._in_head or self._in_body) or self.transport.is_closing():
            return
        if self._in_head:
            if self._head_timer is None:
                self._start_head_timer()
        elif self._body_timer is None and self.edge.body_timeout:
            self._body_timer = self.loop.call_later(self.edge.body_timeout, self._body_expired)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()  # the connection is the WebSocket protocol's from now on
        super().handle_websocket_upgrade()

    # httptools parser callbacks (uvicorn's, with the timers around them)

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._in_body = True
        if self._fast is not None and self._take_fast(self._fast):
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        fast = self._fast_request
        if fast is not None:
            fast.body.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        fast = self._fast_request
        if fast is not None:
            self._fast_request = None
            self._answer_fast(fast)
            return
        super().on_message_complete()

    # the FDO fast path (see the module docstring)

    def _take_fast(self, route: FastRoute) -> bool:
        """Whether this request is an FDO message the route answers (then noted)."""
        url = self.url
        if not url.startswith(FDO_TARGET) or self.parser.get_method() != b"POST":
            return False
        msg_type = url[len(FDO_TARGET) :]
        if not (msg_type.isdigit() and len(msg_type) <= 3):
            return False
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            return False  # an earlier request is still being answered: in order, by uvicorn
        if self.expect_100_continue or self.limit_concurrency is not None:
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return False
                length = int(value)
            elif name in (b"transfer-encoding", b"upgrade"):
                return False
        if length is None or length > route.max_body:
            return False
        server = self.server
        if not route.takes(msg_type, server[1] if server else None):
            return False
        version = self.parser.get_http_version()
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        self._fast_request = _FastRequest(route, msg_type.decode("ascii"), version, keep_alive)
        return True

    def _answer_fast(self, fast: _FastRequest) -> None:
        """Answer the message and finish the request as uvicorn's cycle does."""
        body = b"".join(fast.body)
        try:
            status, fields, content = fast.route.answer(fast.msg_type, self.headers, body, self.client)
        except Exception as exc:  # as uvicorn's cycle: logged, a 500, the connection closed
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            status, content = 500, b"Internal Server Error"
            fields = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
            fast.keep_alive = False
        if self.access_log:
            scope = {"client": self.client}
            log_access(
                self.access_logger,
                get_client_addr(scope),  # type: ignore[arg-type]
                "POST",
                FDO_TARGET.decode() + fast.msg_type,
                fast.version,
                status,
            )
        out = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in fields:
            out += (name, b": ", value, b"\r\n")
        if not fast.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", content)
        transport = cast(GatheredWrites, self.transport)
        transport.write_now(b"".join(out))
        if not fast.keep_alive:
            transport.close()
        self.on_response_complete()

    # timers

    def _start_head_timer(self) -> None:
        if self.edge.head_timeout:
            self._head_timer = self.loop.call_later(self.edge.head_timeout, self._head_expired)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self._in_head = self._in_body = False

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
