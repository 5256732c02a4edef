"""The HTTP server side: a FastAPI router that serves core server machines.

One route, ``POST /fdo/101/msg/{type}`` (reference §1.1). The service registers a
:class:`ProtocolHandler` per sub-protocol, keyed by its first message type (10, 20, 30
or 60), that builds a new machine or restores one from state bytes; session state lives
in a :class:`SessionStore` under an opaque token (``secrets.token_urlsafe(32)``).

Errors are answered with HTTP **500**, ``Content-Type: application/cbor``,
``Message-Type: 255`` and an ErrorMessage body whose ``EMPrevMsgID`` is the request's
type (rs and java do the same; the conformance tools require a non-200 status):

* wrong ``Content-Type`` (must be exactly ``application/cbor``), a body over the limit
  (checked on ``Content-Length`` before reading, then while reading), a non-numeric or
  unknown message type: code 100;
* a later message without a live session token of the same sub-protocol: code 1;
* an :class:`~fdo.errors.FdoError` from the machine: its code (the session is deleted);
* anything else: code 500 with a generic text, never the exception's own text.

A client-sent ErrorMessage (type 255) deletes the session its token names and is
answered 200 with an empty body.
"""

import hashlib
import logging
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Response
from fastapi.telemetry import TelemetryConfig
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from fdo.errors import FdoError, InternalError, InvalidTokenError, MessageBodyError
from fdo.machine import ServerMachine
from fdo.messages import ErrorMessage
from fdo.types import MsgType

log = logging.getLogger(__name__)

CBOR = "application/cbor"
DEFAULT_MAX_BODY = 65535
DEFAULT_SESSION_TTL = timedelta(minutes=10)

#: First message type of each sub-protocol, for every request type it owns.
PROTOCOL_OF: Mapping[int, int] = {
    **{t: 10 for t in range(10, 14)},
    **{t: 20 for t in range(20, 24)},
    **{t: 30 for t in range(30, 34)},
    **{t: 60 for t in range(60, 72)},
}
FIRST_TYPES = frozenset({10, 20, 30, 60})
PROTOCOL_NAMES: Mapping[int, str] = {10: "DI", 20: "TO0", 30: "TO1", 60: "TO2"}

#: ``FastAPI(telemetry=NO_TELEMETRY)``: the services use no OpenTelemetry, and FastAPI
#: otherwise asks the global tracer, meter and logger providers on every request.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


# ---------------------------------------------------------------------------- sessions


class StaleSessionError(Exception):
    """:meth:`SessionStore.save` found a newer version than the one loaded."""


@dataclass(frozen=True, slots=True)
class StoredSession:
    """What :meth:`SessionStore.load` returns: the protocol name, state and its version
    (and the session's expiry, when the store tells it)."""

    protocol: str
    state: bytes
    version: int
    expires_at: datetime | None = None


class SessionStore(Protocol):
    """Where server machine state lives between requests.

    ``load`` returns None for an unknown or expired token. ``save`` writes only if the
    stored version still equals ``version`` (the one ``load`` returned) and bumps it, and
    ``finish`` deletes a finished session on the same condition; otherwise both raise
    :class:`StaleSessionError`.
    """

    def create(self, protocol: str, state: bytes, expires_at: datetime) -> str: ...

    def load(self, token: str) -> StoredSession | None: ...

    def save(self, token: str, state: bytes, *, version: int) -> None: ...

    def finish(self, token: str, *, version: int) -> None: ...

    def delete(self, token: str) -> None: ...


@dataclass
class _MemoryEntry:
    protocol: str
    state: bytes
    version: int
    expires_at: datetime


class MemorySessionStore:
    """A thread-safe in-memory :class:`SessionStore` (tests and single-process use)."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _MemoryEntry] = {}

    def create(self, protocol: str, state: bytes, expires_at: datetime) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = _MemoryEntry(protocol, state, 0, expires_at)
        return token

    def load(self, token: str) -> StoredSession | None:
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None:
                return None
            if entry.expires_at <= self.clock():
                del self._sessions[token]
                return None
            return StoredSession(entry.protocol, entry.state, entry.version, entry.expires_at)

    def save(self, token: str, state: bytes, *, version: int) -> None:
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None or entry.version != version:
                raise StaleSessionError(token)
            entry.state = state
            entry.version += 1

    def finish(self, token: str, *, version: int) -> None:
        with self._lock:
            entry = self._sessions.get(token)
            if entry is None or entry.version != version:
                raise StaleSessionError(token)
            del self._sessions[token]

    def delete(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)


# ---------------------------------------------------------------------------- handlers

AnyServerMachine = ServerMachine[Any]


@dataclass(frozen=True, slots=True)
class ProtocolHandler:
    """How a service serves one sub-protocol.

    ``new`` builds the machine for the first message, ``restore`` rebuilds it from the
    bytes :meth:`~fdo.machine.ServerMachine.to_state` wrote, and ``on_done`` (optional)
    runs once the machine reports ``done`` (e.g. to store a TO0 registration).
    """

    new: Callable[[], AnyServerMachine]
    restore: Callable[[bytes], AnyServerMachine]
    on_done: Callable[[AnyServerMachine], None] | None = None


# ---------------------------------------------------------------------------- observation


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """What the router reports after each FDO message (for metrics and logs).

    ``session`` is a short hash of the session token, never the token. ``error_code`` is
    the FDO error code answered (None on success). ``started``/``completed`` say that
    this message opened or finished a protocol session (after its transaction
    committed); ``session_seconds`` is the session's duration from its first message,
    measured from a start time kept in the session state (so it holds across workers).
    """

    protocol: str | None
    msg_type: int
    error_code: int | None
    guid: str | None
    session: str | None
    seconds: float
    started: bool = False
    completed: bool = False
    session_seconds: float | None = None


MessageObserver = Callable[[MessageEvent], None]


def session_id(token: str | None) -> str | None:
    """A short, non-reversible id of a session token, safe to log."""
    if token is None:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _guid_of(machine: AnyServerMachine | None) -> str | None:
    if machine is None:
        return None
    guid = getattr(machine, "guid", None)
    if guid is None:
        voucher = getattr(machine, "voucher", None) or getattr(machine, "registration", None)
        guid = getattr(voucher, "guid", None)
    value = getattr(guid, "value", guid)
    return value.hex() if isinstance(value, bytes) else None


#: Prefix of stored state carrying the session's start time (CBOR never starts with 0xfd).
_STARTED = b"\xfd\x01"
_STARTED_LEN = len(_STARTED) + 8


def _wrap_state(state: bytes, started: float) -> bytes:
    return _STARTED + struct.pack(">d", started) + state


def _unwrap_state(stored: bytes) -> tuple[bytes, float | None]:
    if stored.startswith(_STARTED) and len(stored) >= _STARTED_LEN:
        (started,) = struct.unpack(">d", stored[len(_STARTED) : _STARTED_LEN])
        return stored[_STARTED_LEN:], float(started)
    return stored, None


@dataclass(frozen=True, slots=True)
class _Live:
    """A cached machine: the session version it was saved at, and what the row holds."""

    version: int
    machine: AnyServerMachine
    protocol: str
    expires_at: datetime | None
    started_at: float


class MachineCache:
    """Live server machines of this process, keyed by session token (bounded, LRU).

    After a message's transaction has committed, the router keeps the machine object
    with the version it saved. When the next message of that session reaches the same
    process (a device keeps its connection, so it usually does), the router runs it on
    the cached object without reading the session row, and saves the new state only if
    the row still has the version it saved (the save is conditional, as always). If it
    has not (another process moved the session on, or the row is gone), or anything
    fails on that path, the transaction is rolled back and the message is handled again
    from the stored state, as without a cache. So the cache only skips reading and
    decoding state; correctness never depends on it. An entry is taken out while a
    message uses it, so two concurrent requests never share one machine.
    """

    def __init__(self, size: int = 1024, *, max_state: int = 64 * 1024) -> None:
        self.size = size
        #: Machines whose saved state is larger (e.g. holding a big download) are not kept.
        self.max_state = max_state
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Live] = OrderedDict()

    def pop(self, token: str) -> _Live | None:
        """Take the entry of ``token`` out of the cache."""
        with self._lock:
            return self._entries.pop(token, None)

    def put(self, token: str, entry: _Live) -> None:
        with self._lock:
            self._entries[token] = entry
            self._entries.move_to_end(token)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Outcome:
    machine: AnyServerMachine | None = None
    started: bool = False
    completed: bool = False
    session_started_at: float | None = None
    error_code: int | None = None
    #: ``(token, entry)`` of a live session to cache once the transaction commits.
    keep: tuple[str, _Live] | None = None

    def reset(self) -> None:
        self.machine = self.session_started_at = self.error_code = self.keep = None
        self.started = self.completed = False


class _Retry(Exception):
    """The cached machine could not be used: handle the message from the stored state."""


# ---------------------------------------------------------------------------- router


#: The path of every FDO message; the type follows it.
MSG_PATH = "/fdo/101/msg/"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name (the first of repeated ones)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _read_body(headers: Mapping[str, str], receive: Receive, max_body: int) -> bytes | None:
    """The request body, or None when it is over ``max_body`` (by header or while reading)."""
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body):
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
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
        headers = _headers(scope)
        try:
            data = await _read_body(headers, receive, self.max_body)
        except _Disconnected:
            return
        msg_type = scope["path"][len(MSG_PATH) :]
        policy = self.inline
        if policy is True:
            response = self.handle(msg_type, headers, data)
        elif policy is False:
            response = await run_in_threadpool(self.handle, msg_type, headers, data)
        else:
            start = time.perf_counter()
            if policy.inline():
                response = self.handle(msg_type, headers, data)
            else:
                response = await run_in_threadpool(self.handle, msg_type, headers, data)
            policy.took(time.perf_counter() - start)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
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


def _token_from(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (or of a bare token)."""
    if header is None:
        return None
    parts = header.split()
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[1]
    return None


def error_response(error: FdoError, prev_msg_type: int) -> Response:
    """HTTP 500 carrying the ErrorMessage that reports ``error``."""
    prev = prev_msg_type if 0 <= prev_msg_type <= 255 else 0
    body = ErrorMessage.from_error(error, prev, now=int(time.time())).encode()
    return Response(
        content=body,
        status_code=500,
        media_type=CBOR,
        headers={"Message-Type": str(int(MsgType.ERROR))},
    )


class _Failed(Exception):
    """Carries an FdoError out of the unit of work so that it rolls back."""

    def __init__(self, error: FdoError) -> None:
        super().__init__(error.message)
        self.error = error


def fdo_router(
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
) -> APIRouter:
    """A router serving ``POST /fdo/101/msg/{type}`` for the sub-protocols in ``handlers``.

    ``handlers`` is keyed by the first message type of each sub-protocol (10, 20, 30, 60).
    ``scope`` opens the unit of work of one message (a database transaction, committed
    when it exits normally and rolled back on an exception): loading the session,
    handling the message, ``on_done`` and saving the new state all run inside one, so a
    failure or a lost version race leaves nothing half-written. When the machine fails,
    its session is deleted in a second, separate unit of work. ``observer`` (optional)
    gets a :class:`MessageEvent` after every message (it must not raise).
    ``machine_cache`` (default: a new :class:`MachineCache`) keeps live machines between
    messages of this process; pass ``MachineCache(0)`` to restore from state every time.
    ``inline`` runs each message on the event loop instead of the thread pool: cheaper
    (no hand-off between threads), but the loop waits for the database. ``True`` suits a
    database without network round trips (SQLite, where writers queue on one lock
    anyway); a networked database (PostgreSQL) takes an :class:`InlineWhileFast`, which
    falls back to the thread pool while messages are slow.
    """
    unknown = set(handlers) - FIRST_TYPES
    if unknown:
        raise ValueError(f"handlers must be keyed by 10, 20, 30 or 60, not {sorted(unknown)}")
    router = APIRouter()
    cache = MachineCache() if machine_cache is None else machine_cache

    def fdo_message(msg_type: str, headers: Mapping[str, str], data: bytes | None) -> Response:
        if observer is None:
            return _message(msg_type, headers, data, _Outcome(), time.perf_counter())
        t0 = time.perf_counter()
        outcome = _Outcome()
        response = _message(msg_type, headers, data, outcome, t0)
        _observe(msg_type, headers, response, outcome, t0)
        return response

    def _observe(
        msg_type: str, headers: Mapping[str, str], response: Response, outcome: _Outcome, t0: float
    ) -> None:
        assert observer is not None  # noqa: S101 - only called with one
        try:
            type_num = (
                int(msg_type) if msg_type.isascii() and msg_type.isdigit() and len(msg_type) <= 3 else -1
            )
            first = PROTOCOL_OF.get(type_num)
            error_code = outcome.error_code
            if error_code is None and response.status_code != 200:
                error_code = int(InternalError.code)
            token = _token_from(response.headers.get("authorization")) if error_code is None else None
            if token is None and type_num != first:
                token = _token_from(headers.get("authorization"))
            session_seconds = None
            if outcome.completed and outcome.session_started_at is not None:
                session_seconds = max(0.0, time.time() - outcome.session_started_at)
            observer(
                MessageEvent(
                    protocol=PROTOCOL_NAMES.get(first) if first is not None else None,
                    msg_type=type_num,
                    error_code=error_code,
                    guid=_guid_of(outcome.machine),
                    session=session_id(token),
                    seconds=time.perf_counter() - t0,
                    started=outcome.started,
                    completed=outcome.completed,
                    session_seconds=session_seconds,
                )
            )
        except Exception:
            log.exception("FDO message observer failed")

    def _fail(outcome: _Outcome, error: FdoError, prev_msg_type: int) -> Response:
        outcome.error_code = int(error.code)
        return error_response(error, prev_msg_type)

    def _message(
        msg_type: str, headers: Mapping[str, str], data: bytes | None, outcome: _Outcome, t0: float
    ) -> Response:
        type_num = int(msg_type) if msg_type.isascii() and msg_type.isdigit() and len(msg_type) <= 3 else -1
        if headers.get("content-type") != CBOR:
            return _fail(outcome, MessageBodyError("Content-Type must be application/cbor"), type_num)
        if data is None:
            return _fail(outcome, MessageBodyError(f"body over {max_body} bytes"), type_num)
        token = _token_from(headers.get("authorization"))
        if type_num == MsgType.ERROR:
            if token is not None:
                _forget(token)
            return Response(status_code=200, content=b"")
        first = PROTOCOL_OF.get(type_num)
        handler = handlers.get(first) if first is not None else None
        if first is None or handler is None:
            return _fail(outcome, MessageBodyError(f"unsupported message type {msg_type}"), type_num)
        return _serve(handler, first, type_num, data, token, outcome)

    def _forget(token: str) -> None:
        cache.pop(token)
        try:
            with scope():
                store.delete(token)
        except Exception:
            log.exception("could not delete FDO session")

    def _serve(
        handler: ProtocolHandler, first: int, msg_type: int, data: bytes, token: str | None, outcome: _Outcome
    ) -> Response:
        protocol = PROTOCOL_NAMES[first]
        if msg_type == first:
            token = None  # a first message ignores any Authorization header
        live = cache.pop(token) if token is not None else None
        try:
            result = None
            if live is not None:
                try:
                    with scope():
                        result = _step_cached(handler, protocol, msg_type, data, token, live, outcome)
                except Exception:  # noqa: BLE001 - any failure, the commit too: retry from the stored state
                    outcome.reset()
                    result = None
            if result is None:
                with scope():
                    result = _step(handler, protocol, first, msg_type, data, token, outcome)
            reply_type, reply, reply_token = result
            if outcome.keep is not None:
                cache.put(*outcome.keep)
        except _Failed as failed:
            outcome.started = outcome.completed = False
            if token is not None:  # go invalidates the token after any error
                _forget(token)
            return _fail(outcome, failed.error, msg_type)
        except Exception:
            outcome.started = outcome.completed = False
            log.exception("FDO %s message %d failed", protocol, msg_type)
            if token is not None:
                _forget(token)
            return _fail(outcome, InternalError("internal server error"), msg_type)
        return Response(
            content=reply,
            status_code=200,
            media_type=CBOR,
            headers={"Message-Type": str(int(reply_type)), "Authorization": f"Bearer {reply_token}"},
        )

    def _step_cached(
        handler: ProtocolHandler,
        protocol: str,
        msg_type: int,
        data: bytes,
        token: str | None,
        live: _Live,
        outcome: _Outcome,
    ) -> tuple[int, bytes, str]:
        """The message on the cached machine, without reading the session row. It raises
        (and the caller rolls back and handles the message from the stored state) on any
        failure, including the conditional save finding another version."""
        if token is None or live.protocol != protocol:
            raise _Retry
        if live.expires_at is not None and live.expires_at <= clock():
            raise _Retry
        return _run(handler, msg_type, data, token, live, outcome)

    def _step(
        handler: ProtocolHandler,
        protocol: str,
        first: int,
        msg_type: int,
        data: bytes,
        token: str | None,
        outcome: _Outcome,
    ) -> tuple[int, bytes, str]:
        try:
            if msg_type == first:
                outcome.started = True
                live = _Live(-1, handler.new(), protocol, None, time.time())
                return _run(handler, msg_type, data, None, live, outcome)
            session = store.load(token) if token is not None else None
            if session is None or session.protocol != protocol:
                raise InvalidTokenError("missing, unknown or expired session token")
            state, started_at = _unwrap_state(session.state)
            machine = handler.restore(state)
        except FdoError as exc:
            raise _Failed(exc) from None
        started = started_at if started_at is not None else time.time()
        live = _Live(session.version, machine, protocol, session.expires_at, started)
        return _run(handler, msg_type, data, token, live, outcome)

    def _run(
        handler: ProtocolHandler,
        msg_type: int,
        data: bytes,
        token: str | None,
        live: _Live,
        outcome: _Outcome,
    ) -> tuple[int, bytes, str]:
        """Handle the message on ``live.machine`` (loaded at ``live.version``; a new
        session has no token and version -1) and store the result."""
        machine, version, expires_at = live.machine, live.version, live.expires_at
        try:
            outcome.machine = machine
            outcome.session_started_at = live.started_at
            reply_type, reply = machine.handle(msg_type, data)
            if machine.done:
                outcome.completed = True
                if handler.on_done is not None:
                    handler.on_done(machine)
                if token is None:  # a one-message protocol would still hand out a (dead) token
                    return reply_type, reply, secrets.token_urlsafe(32)
                store.finish(token, version=version)
                return reply_type, reply, token
            state = _wrap_state(machine.to_state(), live.started_at)
            if token is None:
                expires_at = clock() + session_ttl
                token = store.create(live.protocol, state, expires_at)
            else:
                store.save(token, state, version=version)
            if len(state) <= cache.max_state:
                outcome.keep = (token, replace(live, version=version + 1, expires_at=expires_at))
            return reply_type, reply, token
        except StaleSessionError:
            raise _Failed(InvalidTokenError("session changed concurrently")) from None
        except FdoError as exc:
            raise _Failed(exc) from None

    endpoint = FdoEndpoint(fdo_message, max_body, inline=inline)
    # A Starlette Route whose endpoint is an ASGI app gets the raw scope, receive and send.
    router.routes.append(Route(MSG_PATH + "{msg_type}", endpoint, methods=["POST"], include_in_schema=False))
    return router
