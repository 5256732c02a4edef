"""What every protocol state machine shares.

Each FDO sub-protocol (DI, TO0, TO1, TO2) has a client machine and a server machine.
Both take a message (type and CBOR body) and return the reply, or raise an
:class:`~fdo.errors.FdoError` whose code the serving side puts in ErrorMessage 255.
States are an ``Enum`` and the legal moves a table, as in h11's ``_state.py``: a message
that is not legal in the current state raises and sends the machine to ``ERROR`` for
good, so a replayed or out-of-order message can never move a session on.

Server machines serialise their state to bytes (:meth:`ServerMachine.to_state`) so the
service can keep it in its database under the session token and any worker can
rebuild the machine for the next request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoError, InternalError, MessageBodyError, PeerError, UnexpectedMessageError
from fdo.types import MsgType

Reply = tuple[MsgType, bytes]
"""A message to send: its type and CBOR body."""

S = TypeVar("S", bound=Enum)


def raise_if_error(msg_type: int, body: bytes) -> None:
    """Turn a received ErrorMessage (255) into :class:`PeerError`."""
    if msg_type != MsgType.ERROR:
        return
    from fdo.messages import ErrorMessage  # local: messages imports this module's users

    try:
        err = ErrorMessage.decode(body)
    except FdoError:
        raise PeerError("peer sent an unreadable ErrorMessage", peer_code=0, prev_msg_type=0) from None
    raise PeerError(
        f"peer error {err.code}: {err.message}", peer_code=err.code, prev_msg_type=err.prev_msg_type
    )


class Machine(ABC, Generic[S]):
    """A state machine with an enum state, a table of legal messages and a sticky error state."""

    #: For each state, the message types that may arrive in it.
    ACCEPTS: ClassVar[Mapping[Any, frozenset[int]]]
    ERROR_STATE: ClassVar[Any]

    state: S

    def _accept(self, msg_type: int) -> None:
        allowed = self.ACCEPTS.get(self.state, frozenset())
        if msg_type not in allowed:
            got = _type_name(msg_type)
            self._fail()
            raise UnexpectedMessageError(f"{got} is not expected in state {self.state.name}")

    def _fail(self) -> None:
        self.state = self.ERROR_STATE

    @property
    def failed(self) -> bool:
        return bool(self.state == self.ERROR_STATE)


class ClientMachine(Machine[S]):
    """The side that speaks first (device in DI/TO1/TO2, owner in TO0)."""

    @abstractmethod
    def start(self) -> Reply:
        """The first message of the protocol."""

    def receive(self, msg_type: int, body: bytes) -> Reply | None:
        """Handle a reply; return the next message, or None when the protocol is done."""
        try:
            raise_if_error(msg_type, body)
            self._accept(msg_type)
            return self._receive(MsgType(msg_type), body)
        except FdoError:
            self._fail()
            raise
        except Exception as exc:  # a bug must not look like success
            self._fail()
            raise InternalError(f"internal error: {type(exc).__name__}") from exc

    @abstractmethod
    def _receive(self, msg_type: MsgType, body: bytes) -> Reply | None: ...

    @property
    @abstractmethod
    def done(self) -> bool: ...


class ServerMachine(Machine[S]):
    """The side that answers; its state survives between requests as bytes."""

    #: Message types that open a new session of this protocol.
    FIRST: ClassVar[MsgType]

    def handle(self, msg_type: int, body: bytes) -> Reply:
        """Handle one request and return the reply (raises FdoError for an ErrorMessage)."""
        try:
            self._accept(msg_type)
            return self._handle(MsgType(msg_type), body)
        except FdoError:
            self._fail()
            raise
        except Exception as exc:
            self._fail()
            raise InternalError(f"internal error: {type(exc).__name__}") from exc

    @abstractmethod
    def _handle(self, msg_type: MsgType, body: bytes) -> Reply: ...

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once the last reply of the protocol has been produced."""

    # ---------------------------------------------------------------- persistence

    @abstractmethod
    def _state_obj(self) -> dict[str, CborValue]:
        """Everything needed to resume, as a CBOR-encodable map (state name included)."""

    def to_state(self) -> bytes:
        obj = self._state_obj()
        obj["state"] = self.state.name
        return codec.encode_state(obj)

    @staticmethod
    def load_state(data: bytes) -> Mapping[str, CborValue]:
        """Decode what :meth:`to_state` wrote (raises MessageBodyError if corrupt)."""
        return codec.as_map(codec.decode(data), "session state")

    @classmethod
    def _state_enum(cls, obj: Mapping[str, CborValue], enum: type[S]) -> S:
        try:
            return enum[codec.as_str(obj.get("state"), "session state name")]
        except KeyError:
            raise MessageBodyError("session state: unknown state name") from None


def _type_name(msg_type: int) -> str:
    try:
        return f"{MsgType(msg_type).name} ({msg_type})"
    except ValueError:
        return f"message type {msg_type}"
