"""One FDO message, from request to reply, in named steps (reference §1.1).

:class:`MessageDispatcher` is the synchronous handler behind
:class:`transport.server.FdoEndpoint` (which reads the body in the event loop and runs
the dispatcher in the thread pool or inline). One message goes through these steps, each
a method, like the named transitions of h11's ``Connection``:

1. :meth:`~MessageDispatcher.dispatch` checks the request (``Content-Type``, body limit)
   and picks the sub-protocol by message type: the service registers a
   :class:`ProtocolHandler` per sub-protocol, keyed by its first message type (10, 20,
   30 or 60), that builds a new machine or restores one from state bytes;
2. :meth:`~MessageDispatcher.serve` runs the message in one unit of work (``scope``):
   first on the machine the :class:`~transport.sessions.MachineCache` holds
   (:meth:`~MessageDispatcher.run_cached`, rolled back on any failure), otherwise on a
   new or restored machine (:meth:`~MessageDispatcher.load`);
3. :meth:`~MessageDispatcher.run` lets the machine handle the message (and ``on_done``
   run once it is done), then :meth:`~MessageDispatcher.save` stores the new state in the
   :class:`~transport.sessions.SessionStore` under the session token (or finishes the
   session);
4. :meth:`~MessageDispatcher.reply` or :meth:`~MessageDispatcher.fail` answers, and
   :meth:`~MessageDispatcher.observe` reports a :class:`MessageEvent` (metrics, logs).

Errors are answered with HTTP **500**, ``Content-Type: application/cbor``,
``Message-Type: 255`` and an ErrorMessage body whose ``EMPrevMsgID`` is the request's
type (rs and java do the same; the conformance tools require a non-200 status):

* wrong ``Content-Type`` (must be exactly ``application/cbor``), a body over the limit,
  a non-numeric or unknown message type: code 100;
* a later message without a live session token of the same sub-protocol: code 1;
* an :class:`~fdo.errors.FdoError` from the machine: its code (the session is deleted);
* anything else: code 500 with a generic text, never the exception's own text.

A client-sent ErrorMessage (type 255) deletes the session its token names and is
answered 200 with an empty body.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fdo.errors import FdoError, InternalError, InvalidTokenError, MessageBodyError
from fdo.machine import ServerMachine
from fdo.messages import ErrorMessage
from fdo.types import MsgType
from transport.sessions import LiveMachine, MachineCache, SessionStore, StaleSessionError

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
    """What the dispatcher reports after each FDO message (for metrics and logs).

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


# ---------------------------------------------------------------------------- stored state

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


# ---------------------------------------------------------------------------- one message


def _message_type(msg_type: str) -> int:
    """The message type of the request path's last segment (-1 when not 1 to 3 digits)."""
    return int(msg_type) if msg_type.isascii() and msg_type.isdigit() and len(msg_type) <= 3 else -1


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


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer to one FDO message: status, header fields and body.

    Made here, without a web framework, so the FDO path imports none: the endpoint
    (:class:`transport.server.FdoEndpoint`) sends :attr:`raw_headers` and :attr:`body`
    as they are. The fields are those Starlette's ``Response`` would send for the same
    answer, in the same order: the message's own fields, then ``content-length`` and,
    with a body type, ``content-type``.
    """

    status_code: int
    body: bytes
    raw_headers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def make(
        cls, status_code: int, body: bytes, fields: Mapping[str, str], media_type: str | None
    ) -> Response:
        """The answer with ``fields`` (names sent in lower case), the body's length and type."""
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in fields.items()]
        raw.append((b"content-length", str(len(body)).encode("latin-1")))
        if media_type is not None:
            raw.append((b"content-type", media_type.encode("latin-1")))
        return cls(status_code, body, tuple(raw))

    @property
    def headers(self) -> dict[str, str]:
        """The header fields by lower-case name."""
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in self.raw_headers}


def error_response(error: FdoError, prev_msg_type: int) -> Response:
    """HTTP 500 carrying the ErrorMessage that reports ``error``."""
    prev = prev_msg_type if 0 <= prev_msg_type <= 255 else 0
    body = ErrorMessage.from_error(error, prev, now=int(time.time())).encode()
    return Response.make(500, body, {"Message-Type": str(int(MsgType.ERROR))}, CBOR)


@dataclass(slots=True)
class Outcome:
    """What one message did, filled in by the steps (for :meth:`MessageDispatcher.observe`
    and the cache)."""

    machine: AnyServerMachine | None = None
    started: bool = False
    completed: bool = False
    session_started_at: float | None = None
    error_code: int | None = None
    #: ``(token, entry)`` of a live session to cache once the transaction commits.
    keep: tuple[str, LiveMachine] | None = None
    #: The session token the reply carries (set on success).
    token: str | None = None

    def reset(self) -> None:
        self.machine = self.session_started_at = self.error_code = self.keep = self.token = None
        self.started = self.completed = False


#: A successful step's ``(reply type, reply body, session token)``.
Reply = tuple[int, bytes, str]


class RetryFromStore(Exception):
    """The cached machine could not be used: handle the message from the stored state."""


class MessageFailed(Exception):
    """Carries an FdoError out of the unit of work so that it rolls back."""

    def __init__(self, error: FdoError) -> None:
        super().__init__(error.message)
        self.error = error


class MessageDispatcher:
    """Serves ``POST /fdo/101/msg/{type}`` for the sub-protocols in ``handlers``;
    :meth:`handle` handles one message (a :data:`transport.server.MessageHandler`).

    ``handlers`` is keyed by the first message type of each sub-protocol (10, 20, 30, 60).
    ``scope`` opens the unit of work of one message (a database transaction, committed
    when it exits normally and rolled back on an exception): loading the session,
    handling the message, ``on_done`` and saving the new state all run inside one, so a
    failure or a lost version race leaves nothing half-written. When the machine fails,
    its session is deleted in a second, separate unit of work. ``observer`` (optional)
    gets a :class:`MessageEvent` after every message (it must not raise).
    ``machine_cache`` (default: a new :class:`~transport.sessions.MachineCache`) keeps
    live machines between messages of this process; pass ``MachineCache(0)`` to restore
    from state every time.
    """

    __slots__ = ("cache", "clock", "handlers", "max_body", "observer", "scope", "session_ttl", "store")

    def __init__(
        self,
        handlers: Mapping[int, ProtocolHandler],
        store: SessionStore,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        session_ttl: timedelta = DEFAULT_SESSION_TTL,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
        observer: MessageObserver | None = None,
        machine_cache: MachineCache | None = None,
    ) -> None:
        unknown = set(handlers) - FIRST_TYPES
        if unknown:
            raise ValueError(f"handlers must be keyed by 10, 20, 30 or 60, not {sorted(unknown)}")
        self.handlers = handlers
        self.store = store
        self.max_body = max_body
        self.session_ttl = session_ttl
        self.clock = clock
        self.scope = scope
        self.observer = observer
        self.cache = MachineCache() if machine_cache is None else machine_cache

    def handle(self, msg_type: str, headers: Mapping[str, str], data: bytes | None) -> Response:
        """One message: ``msg_type`` as in the path, the request headers by lower-case
        name, and the body (None when it was over the limit). The endpoint gets this bound
        method rather than the object: calling it is cheaper than ``__call__``."""
        if self.observer is None:
            return self.dispatch(msg_type, headers, data, Outcome())
        t0 = time.perf_counter()
        outcome = Outcome()
        response = self.dispatch(msg_type, headers, data, outcome)
        self.observe(msg_type, headers, response, outcome, t0)
        return response

    def dispatch(
        self, msg_type: str, headers: Mapping[str, str], data: bytes | None, outcome: Outcome
    ) -> Response:
        """Check the request and hand it to its sub-protocol (or end the session a
        client-sent ErrorMessage names)."""
        type_num = int(msg_type) if msg_type.isascii() and msg_type.isdigit() and len(msg_type) <= 3 else -1
        if headers.get("content-type") != CBOR:
            return self.fail(outcome, MessageBodyError("Content-Type must be application/cbor"), type_num)
        if data is None:
            return self.fail(outcome, MessageBodyError(f"body over {self.max_body} bytes"), type_num)
        token = _token_from(headers.get("authorization"))
        if type_num == MsgType.ERROR:
            if token is not None:
                self.forget(token)
            return Response.make(200, b"", {}, None)
        first = PROTOCOL_OF.get(type_num)
        handler = self.handlers.get(first) if first is not None else None
        if first is None or handler is None:
            return self.fail(outcome, MessageBodyError(f"unsupported message type {msg_type}"), type_num)
        return self.serve(handler, first, type_num, data, token, outcome)

    def serve(
        self,
        handler: ProtocolHandler,
        first: int,
        msg_type: int,
        data: bytes,
        token: str | None,
        outcome: Outcome,
    ) -> Response:
        """Run the message in a unit of work: on the cached machine if that works, else
        on a new or restored one; cache the machine once committed; answer."""
        protocol = PROTOCOL_NAMES[first]
        if msg_type == first:
            token = None  # a first message ignores any Authorization header
        live = self.cache.pop(token) if token is not None else None
        try:
            result = None
            if live is not None:
                result = self.run_cached(handler, protocol, msg_type, data, token, live, outcome)
            if result is None:
                with self.scope():
                    live = self.load(handler, protocol, first, msg_type, token, outcome)
                    result = self.run(handler, msg_type, data, token, live, outcome)
            if outcome.keep is not None:
                self.cache.put(*outcome.keep)
        except MessageFailed as failed:
            outcome.started = outcome.completed = False
            if token is not None:  # go invalidates the token after any error
                self.forget(token)
            return self.fail(outcome, failed.error, msg_type)
        except Exception:
            outcome.started = outcome.completed = False
            log.exception("FDO %s message %d failed", protocol, msg_type)
            if token is not None:
                self.forget(token)
            return self.fail(outcome, InternalError("internal server error"), msg_type)
        outcome.token = result[2]
        return self.reply(*result)

    def run_cached(
        self,
        handler: ProtocolHandler,
        protocol: str,
        msg_type: int,
        data: bytes,
        token: str | None,
        live: LiveMachine,
        outcome: Outcome,
    ) -> Reply | None:
        """The message on the cached machine, in its own unit of work and without
        reading the session row; None (rolled back, ``outcome`` reset) when that fails in
        any way, the commit and the conditional save finding another version included,
        so that the caller handles the message from the stored state."""
        try:
            with self.scope():
                if token is None or live.protocol != protocol:
                    raise RetryFromStore
                if live.expires_at is not None and live.expires_at <= self.clock():
                    raise RetryFromStore
                return self.run(handler, msg_type, data, token, live, outcome)
        except Exception:  # noqa: BLE001 - any failure, the commit too: retry from the stored state
            outcome.reset()
            return None

    def load(
        self,
        handler: ProtocolHandler,
        protocol: str,
        first: int,
        msg_type: int,
        token: str | None,
        outcome: Outcome,
    ) -> LiveMachine:
        """A new machine for a first message, or the session's machine restored from the
        store (:class:`MessageFailed` with code 1 when there is no live session of this
        sub-protocol)."""
        try:
            if msg_type == first:
                outcome.started = True
                return LiveMachine(-1, handler.new(), protocol, None, time.time())
            session = self.store.load(token) if token is not None else None
            if session is None or session.protocol != protocol:
                raise InvalidTokenError("missing, unknown or expired session token")
            state, started_at = _unwrap_state(session.state)
            machine = handler.restore(state)
        except FdoError as exc:
            raise MessageFailed(exc) from None
        started = started_at if started_at is not None else time.time()
        return LiveMachine(session.version, machine, protocol, session.expires_at, started)

    def run(
        self,
        handler: ProtocolHandler,
        msg_type: int,
        data: bytes,
        token: str | None,
        live: LiveMachine,
        outcome: Outcome,
    ) -> Reply:
        """Handle the message on ``live.machine`` (loaded at ``live.version``; a new
        session has no token and version -1), run ``on_done`` once it is done, and store
        the result (:meth:`save`)."""
        machine = live.machine
        try:
            outcome.machine = machine
            outcome.session_started_at = live.started_at
            reply_type, reply = machine.handle(msg_type, data)
            if machine.done:
                outcome.completed = True
                if handler.on_done is not None:
                    handler.on_done(machine)
            return reply_type, reply, self.save(token, live, outcome)
        except StaleSessionError:
            raise MessageFailed(InvalidTokenError("session changed concurrently")) from None
        except FdoError as exc:
            raise MessageFailed(exc) from None

    def save(self, token: str | None, live: LiveMachine, outcome: Outcome) -> str:
        """Store the state of ``live.machine`` after a message (create the session, save
        it on the condition that it is still at ``live.version``, or finish it once the
        machine is done) and note it in ``outcome`` to cache; the session token."""
        machine, version = live.machine, live.version
        if machine.done:
            if token is None:  # a one-message protocol would still hand out a (dead) token
                return secrets.token_urlsafe(32)
            self.store.finish(token, version=version)
            return token
        state = _wrap_state(machine.to_state(), live.started_at)
        expires_at = live.expires_at
        if token is None:
            expires_at = self.clock() + self.session_ttl
            token = self.store.create(live.protocol, state, expires_at)
        else:
            self.store.save(token, state, version=version)
        if len(state) <= self.cache.max_state:
            outcome.keep = (token, replace(live, version=version + 1, expires_at=expires_at))
        return token

    def reply(self, reply_type: int, reply: bytes, token: str) -> Response:
        """HTTP 200 with the machine's reply and the session token."""
        return Response.make(
            200, reply, {"Message-Type": str(int(reply_type)), "Authorization": f"Bearer {token}"}, CBOR
        )

    def fail(self, outcome: Outcome, error: FdoError, prev_msg_type: int) -> Response:
        """HTTP 500 with the ErrorMessage of ``error`` (its code noted in ``outcome``)."""
        outcome.error_code = int(error.code)
        return error_response(error, prev_msg_type)

    def forget(self, token: str) -> None:
        """Delete a session (and its cached machine) in a unit of work of its own."""
        self.cache.pop(token)
        try:
            with self.scope():
                self.store.delete(token)
        except Exception:
            log.exception("could not delete FDO session")

    def observe(
        self, msg_type: str, headers: Mapping[str, str], response: Response, outcome: Outcome, t0: float
    ) -> None:
        """Report the message to the observer (never raising)."""
        assert self.observer is not None  # noqa: S101 - only called with one
        try:
            type_num = _message_type(msg_type)
            first = PROTOCOL_OF.get(type_num)
            error_code = outcome.error_code
            if error_code is None and response.status_code != 200:
                error_code = int(InternalError.code)
            token = outcome.token if error_code is None else None
            if token is None and type_num != first:
                token = _token_from(headers.get("authorization"))
            session_seconds = None
            if outcome.completed and outcome.session_started_at is not None:
                session_seconds = max(0.0, time.time() - outcome.session_started_at)
            self.observer(
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
