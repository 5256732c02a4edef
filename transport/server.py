"""The HTTP server side: FDO messages as a bare ASGI endpoint.

One route, ``POST /fdo/101/msg/{type}`` (reference §1.1). :func:`fdo_endpoint_for` builds
a :class:`~transport.dispatch.MessageDispatcher` over the service's
:class:`~transport.dispatch.ProtocolHandler` per sub-protocol and its
:class:`~transport.sessions.SessionStore`, and serves it through an :class:`FdoEndpoint`:
the endpoint reads the body in the event loop, with the size limit checked on
``Content-Length`` before reading and then while reading, and runs the dispatcher (the
synchronous message handler: machine and database work) in the thread pool or inline
(:class:`InlineWhileFast`). None of this needs a web framework (a worker that serves
only devices has none: :mod:`fdo_server.device_app`); on a FastAPI app,
:func:`fdo_router` declares the route and :func:`mount_fdo` puts the endpoint in front
of the app's middleware and routing (:class:`FdoFastPath`).

The steps of one message and the error answers are described in
:mod:`transport.dispatch`; the session stores and the machine cache are in
:mod:`transport.sessions`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack

from transport.dispatch import (
    DEFAULT_MAX_BODY,
    DEFAULT_SESSION_TTL,
    AnyServerMachine,
    MessageDispatcher,
    MessageObserver,
    ProtocolHandler,
    Response,
)
from transport.sessions import (
    MachineCache,
    MemorySessionStore,
    SessionStore,
    StaleSessionError,
    StoredSession,
)

#: This module's names, and those that moved to :mod:`transport.dispatch` and
#: :mod:`transport.sessions` when it was split, still importable from here (the tests,
#: and code written against the single module, import them so).
__all__ = [
    "NO_TELEMETRY",
    "AnyServerMachine",
    "FdoEndpoint",
    "FdoFastPath",
    "InlineWhileFast",
    "MachineCache",
    "MemorySessionStore",
    "MessageHandler",
    "ProtocolHandler",
    "StaleSessionError",
    "StoredSession",
    "fdo_endpoint",
    "fdo_endpoint_for",
    "fdo_router",
    "mount_fdo",
    "run_in_thread",
    "send_response",
]

if TYPE_CHECKING:  # the FDO endpoint itself needs no web framework: only the router does
    from fastapi import APIRouter, FastAPI
    from fastapi.telemetry import TelemetryConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
Args = TypeVarTuple("Args")

#: ``FastAPI(telemetry=NO_TELEMETRY)``: the services use no OpenTelemetry, and FastAPI
#: otherwise asks the global tracer, meter and logger providers on every request.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


#: The path of every FDO message; the type follows it.
MSG_PATH = "/fdo/101/msg/"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Disconnected(Exception):
    """The client went away before its request body arrived."""


def request_headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name (the first of repeated ones)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def read_body(headers: Mapping[str, str], receive: Receive, max_body: int) -> bytes | None:
    """The request body, or None when it is over ``max_body`` (by header or while reading)."""
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body):
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


#: ``(msg_type as in the path, request headers, body or None when over the limit)``.
MessageHandler = Callable[[str, Mapping[str, str], bytes | None], Response]


class InlineWhileFast:
    """Where :class:`FdoEndpoint` runs messages on a networked database: on the event loop
    while they are quick, in the thread pool for a while after one was not.

    A message handled on the loop needs no hand-off between threads (on the benchmark
    machine that is about a quarter of the server CPU per onboarding with PostgreSQL), but
    the loop, and with it every other request of the worker (``/health`` and ``/ready``
    included), waits for the message's database round trips. So once a message takes
    longer than ``budget`` seconds (a slow, locked or vanished database), messages go to
    the thread pool until ``cooldown`` seconds pass without another slow one; the loop
    then waits for at most one slow message per cooldown, which the database connection's
    own timeouts bound (:func:`fdo_server.db.make_engine`).
    """

    def __init__(
        self, budget: float = 0.25, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget
        self.cooldown = cooldown
        self.clock = clock
        self._threads_until = float("-inf")

    def inline(self) -> bool:
        """Whether the next message may run on the loop."""
        return self.clock() >= self._threads_until

    def took(self, seconds: float) -> None:
        """A message (on the loop or in a thread) took ``seconds``."""
        if seconds > self.budget:
            if self.inline():
                log.warning(
                    "an FDO message took %.3f s (over %.3f s; a slow database?): "
                    "messages run in the thread pool until %.0f s pass without another",
                    seconds,
                    self.budget,
                    self.cooldown,
                )
            self._threads_until = self.clock() + self.cooldown


class FdoEndpoint:
    """``POST /fdo/101/msg/{msg_type}`` as a bare ASGI app.

    It reads the body in the event loop (with the size limit) and hands the message to
    :attr:`handle` (synchronous: machine and database work), in the thread pool or,
    with ``inline``, on the event loop itself (``True``: always, for SQLite; an
    :class:`InlineWhileFast`: while messages are quick); no routing, request objects,
    dependency injection or validation around it. :class:`FdoFastPath` sends it every
    FDO message before the app's middleware and routing; the router's route reaches it
    otherwise.
    """

    def __init__(
        self, handle: MessageHandler, max_body: int, *, inline: bool | InlineWhileFast = False
    ) -> None:
        self.handle = handle
        self.max_body = max_body
        self.inline = inline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        try:
            data = await read_body(headers, receive, self.max_body)
        except Disconnected:
            return
        msg_type = scope["path"][len(MSG_PATH) :]
        if self.inline_now():
            response = self.handle_inline(msg_type, headers, data)
        else:
            start = time.perf_counter()
            response = await run_in_thread(self.handle, msg_type, headers, data)
            if isinstance(self.inline, InlineWhileFast):
                self.inline.took(time.perf_counter() - start)
        await send_response(send, response)

    def inline_now(self) -> bool:
        """Whether the next message runs on the event loop (:attr:`inline`)."""
        policy = self.inline
        return policy if isinstance(policy, bool) else policy.inline()

    def handle_inline(self, msg_type: str, headers: Mapping[str, str], data: bytes | None) -> Response:
        """:attr:`handle` on the event loop, timed for an :class:`InlineWhileFast` policy."""
        policy = self.inline
        if isinstance(policy, bool):
            return self.handle(msg_type, headers, data)
        start = time.perf_counter()
        try:
            return self.handle(msg_type, headers, data)
        finally:
            policy.took(time.perf_counter() - start)


async def run_in_thread(func: Callable[[Unpack[Args]], T], *args: *Args) -> T:
    """``func(*args)`` in anyio's worker threads (where Starlette's ``run_in_threadpool``
    runs it), imported on first use: a worker that handles every request inline never
    loads it."""
    from anyio.to_thread import run_sync

    return await run_sync(func, *args)


async def send_response(send: Send, response: Response) -> None:
    """Send ``response`` (status, header fields and body, in one body message)."""
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    await send(start)
    await send({"type": "http.response.body", "body": response.body})


class FdoFastPath:
    """ASGI middleware that hands ``POST /fdo/101/msg/<type>`` straight to the
    :class:`FdoEndpoint` and everything else to the app."""

    def __init__(self, app: ASGIApp, endpoint: FdoEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(MSG_PATH) and "/" not in path[len(MSG_PATH) :]:
                await self.endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def mount_fdo(app: FastAPI, router: APIRouter) -> None:
    """Serve ``router`` (made by :func:`fdo_router`) on ``app``, with its endpoint in
    front of the app's other middleware and routing (:class:`FdoFastPath`)."""
    app.include_router(router)
    app.add_middleware(FdoFastPath, endpoint=fdo_endpoint(router))


def fdo_endpoint(router: APIRouter) -> FdoEndpoint:
    """The :class:`FdoEndpoint` behind a router made by :func:`fdo_router`."""
    for route in router.routes:
        endpoint = getattr(route, "app", None)
        if isinstance(endpoint, FdoEndpoint):
            return endpoint
    raise ValueError("not a router made by fdo_router")


def fdo_endpoint_for(
    handlers: Mapping[int, ProtocolHandler],
    store: SessionStore,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    session_ttl: timedelta = DEFAULT_SESSION_TTL,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
    observer: MessageObserver | None = None,
    machine_cache: MachineCache | None = None,
    inline: bool | InlineWhileFast = False,
) -> FdoEndpoint:
    """The :class:`FdoEndpoint` serving ``POST /fdo/101/msg/{type}`` for the sub-protocols
    in ``handlers``, without a web framework (a device-plane worker serves it so:
    :mod:`fdo_server.device_app`; :func:`fdo_router` puts it on a FastAPI router).

    ``handlers``, ``store``, ``max_body``, ``session_ttl``, ``clock``, ``scope``,
    ``observer`` and ``machine_cache`` configure the
    :class:`~transport.dispatch.MessageDispatcher` (see there: one unit of work per
    message, the machine cache). ``inline`` runs each message on the event loop instead
    of the thread pool: cheaper (no hand-off between threads), but the loop waits for the
    database. ``True`` suits a database without network round trips (SQLite, where
    writers queue on one lock anyway); a networked database (PostgreSQL) takes an
    :class:`InlineWhileFast`, which falls back to the thread pool while messages are slow.
    """
    dispatcher = MessageDispatcher(
        handlers,
        store,
        max_body=max_body,
        session_ttl=session_ttl,
        clock=clock,
        scope=scope,
        observer=observer,
        machine_cache=machine_cache,
    )
    return FdoEndpoint(dispatcher.handle, max_body, inline=inline)


def fdo_router(
    handlers: Mapping[int, ProtocolHandler],
    store: SessionStore,
    **options: Any,
) -> APIRouter:
    """A FastAPI router serving the :class:`FdoEndpoint` of :func:`fdo_endpoint_for`
    (``handlers``, ``store`` and ``options`` as there) on ``POST /fdo/101/msg/{type}``."""
    from fastapi import APIRouter
    from starlette.routing import Route

    endpoint = fdo_endpoint_for(handlers, store, **options)
    router = APIRouter()
    # A Starlette Route whose endpoint is an ASGI app gets the raw scope, receive and send.
    router.routes.append(Route(MSG_PATH + "{msg_type}", endpoint, methods=["POST"], include_in_schema=False))
    return router
