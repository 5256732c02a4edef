"""FDO 1.1 messages: the common base, ErrorMessage (type 255) and the type registry.

Every protocol message is a frozen, slotted, keyword-only dataclass whose fields follow
the CBOR array of the spec (reference ``fdo-protocol.md`` §1.3–§5). Each class has
``MSG_TYPE``, a ``to_cbor_obj``/``from_cbor_obj`` pair, and ``encode``/``decode`` for
bytes. Decoding raises :class:`~fdo.errors.MessageBodyError` (or another
:class:`~fdo.errors.FdoError`) for any malformed body and never anything else.

Where the peer's bytes are later hashed, MACed or signed (an OVHeader, a voucher entry,
to0d, SetupDevice's RVInfo and Owner2Key), ``decode`` keeps them verbatim through
:func:`fdo.codec.split_array`, and ``encode`` re-emits them with :class:`fdo.codec.Raw`,
so a received message re-encodes to the same bytes. ``from_cbor_obj`` only has the
decoded objects and re-encodes them deterministically, so prefer ``decode``.

The per-protocol messages live in :mod:`fdo.di.messages`, :mod:`fdo.to0.messages`,
:mod:`fdo.to1.messages` and :mod:`fdo.to2.messages`; :func:`decode_message` dispatches
on the message type number over all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from fdo import codec
from fdo.codec import CborValue, Tag
from fdo.cose import CoseSign1
from fdo.errors import FdoError, FdoUsageError, MessageBodyError
from fdo.types import MsgType

_U64_MAX = (1 << 64) - 1
_U128_MAX = (1 << 128) - 1
_BIGNUM_TAG = 2


class Message(Protocol):
    """What every FDO message class provides."""

    MSG_TYPE: ClassVar[MsgType]

    def to_cbor_obj(self) -> CborValue: ...

    def encode(self) -> bytes: ...

    @classmethod
    def decode(cls, data: bytes) -> Self: ...


class MessageBase:
    """Shared ``encode``/``decode`` on top of a subclass's ``to_cbor_obj``/``from_cbor_obj``.

    Subclasses that must keep raw element bytes override :meth:`decode`.
    """

    __slots__ = ()

    MSG_TYPE: ClassVar[MsgType]

    def to_cbor_obj(self) -> CborValue:
        raise NotImplementedError

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The message body as CBOR bytes."""
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a message body; a malformed body raises :class:`MessageBodyError`."""
        return cls.from_cbor_obj(codec.decode(data))


def empty_array(obj: CborValue, what: str) -> None:
    """Check an empty message body ``[]``."""
    codec.as_list(obj, what, 0)


def parse_cose_sign1(obj: CborValue, what: str) -> CoseSign1:
    """A received COSE_Sign1 that can be re-emitted (a rendezvous server relays to1d).

    cbor2 turns some tags into Python objects (floats, fractions, UUIDs, ...) that FDO's
    deterministic encoder refuses: such an unprotected header is refused here, as the
    peer's fault, rather than failing later when the token is re-encoded.
    """
    token = CoseSign1.from_cbor_obj(obj, what)
    try:
        codec.encode(dict(token.unprotected))
    except (TypeError, ValueError, RecursionError):
        raise MessageBodyError(f"{what}: unprotected header holds values FDO cannot encode") from None
    return token


# --------------------------------------------------------------------------- ErrorMessage

# Field names of the map-shaped ErrorMessage an old fido-device-onboard-rs emitted
# (serde's derived struct form; fdo-protocol.md §0 and §9 #10).
_RS_MAP_KEYS: tuple[tuple[str, ...], ...] = (
    ("error_code",),
    ("previous_message_type", "previous_message_id"),
    ("error_string",),
    ("error_timestamp", "timestamp"),
    ("error_uuid", "correlation_id"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorMessage(MessageBase):
    """ErrorMessage (type 255, spec §3.7, reference §1.4).

    ```
    ErrorMessage = [ EMErrorCode: uint16, EMPrevMsgID: uint8, EMErrorStr: tstr,
                     EMErrorTs: timestamp, EMErrorCID: correlationId ]
    ```

    Send ``timestamp`` as Unix seconds and ``correlation_id`` as a small uint: go parses
    only an int timestamp, rs only an int correlation id (use :meth:`from_error`).
    Received, the timestamp may be an int, null, tag 0 (RFC 3339 text) or tag 1, and the
    correlation id an int up to 128 bits (rs) or null (go); old rs servers sent a map
    with text keys, which is read too. ``code`` keeps unknown peer codes as plain ints.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.ERROR

    code: int
    prev_msg_type: int
    message: str
    timestamp: int | None
    correlation_id: int | None

    @classmethod
    def from_error(cls, error: FdoError, prev_msg_type: int, *, now: int, correlation_id: int = 0) -> Self:
        """The ErrorMessage that reports ``error`` (``now`` in Unix seconds)."""
        return cls(
            code=int(error.code),
            prev_msg_type=prev_msg_type,
            message=error.message,
            timestamp=now,
            correlation_id=correlation_id,
        )

    def to_cbor_obj(self) -> list[CborValue]:
        cid: CborValue = self.correlation_id
        if cid is not None and cid > _U64_MAX:
            # rs's u128: a bignum (tag 2) with minimal big-endian bytes.
            cid = Tag(_BIGNUM_TAG, cid.to_bytes((cid.bit_length() + 7) // 8, "big"))
        return [self.code, self.prev_msg_type, self.message, self.timestamp, cid]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "ErrorMessage"
        if isinstance(obj, Mapping):
            obj = _rs_map_to_list(obj)
        items = codec.as_list(obj, what, 5)
        cid = items[4]
        if isinstance(cid, Tag) and cid.tag == _BIGNUM_TAG:  # cbor2 normally does this
            cid = int.from_bytes(codec.as_bytes(cid.value, f"{what}.EMErrorCID"), "big")
        return cls(
            code=codec.as_uint(items[0], f"{what}.EMErrorCode", 16),
            prev_msg_type=codec.as_uint(items[1], f"{what}.EMPrevMsgID", 8),
            message=codec.as_str(items[2], f"{what}.EMErrorStr"),
            timestamp=_timestamp(items[3], f"{what}.EMErrorTs"),
            correlation_id=codec.optional(cid, lambda v: codec.as_int(v, f"{what}.EMErrorCID", 0, _U128_MAX)),
        )

    def __str__(self) -> str:
        return f"error {self.code} after message {self.prev_msg_type}: {self.message}"


def _timestamp(obj: CborValue, what: str) -> int | None:
    # codec.as_timestamp turns a float into an int: refuse NaN/infinity (int() would raise
    # ValueError/OverflowError) and anything that does not fit a signed 64-bit integer.
    try:
        value = codec.as_timestamp(obj, what)
    except (ValueError, OverflowError):
        raise MessageBodyError(f"{what}: not a finite timestamp") from None
    if value is not None and not -(1 << 63) <= value <= _U64_MAX:
        raise MessageBodyError(f"{what}: timestamp out of range")
    return value


def _rs_map_to_list(obj: Mapping[CborValue, CborValue]) -> list[CborValue]:
    out: list[CborValue] = []
    for names in _RS_MAP_KEYS:
        for name in names:
            if name in obj:
                out.append(obj[name])
                break
        else:
            if names[0] in ("error_timestamp", "error_uuid"):
                out.append(None)
            else:
                raise MessageBodyError(f"ErrorMessage: map form lacks {names[0]!r}")
    return out


# --------------------------------------------------------------------------- registry


@functools.cache
def message_classes() -> Mapping[int, type[MessageBase]]:
    """Every message class by its MSG_TYPE (imported lazily: the modules import this one)."""
    from fdo.di import messages as di
    from fdo.to0 import messages as to0
    from fdo.to1 import messages as to1
    from fdo.to2 import messages as to2

    classes: list[type[MessageBase]] = [ErrorMessage]
    for module in (di, to0, to1, to2):
        classes.extend(module.MESSAGES)
    registry: dict[int, type[MessageBase]] = {}
    for cls in classes:
        if int(cls.MSG_TYPE) in registry:
            raise FdoUsageError(f"duplicate message type {cls.MSG_TYPE}")
        registry[int(cls.MSG_TYPE)] = cls
    return registry


def decode_message(msg_type: int, data: bytes) -> Message:
    """Decode a body of type ``msg_type``; an unknown type raises MessageBodyError."""
    cls = message_classes().get(msg_type)
    if cls is None:
        raise MessageBodyError(f"unknown message type {msg_type}")
    return cls.decode(data)
