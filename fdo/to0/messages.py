"""TO0 messages 20-23 and the to0d/to1d structures (spec §5.3, reference §5.1).

```
20 TO0.Hello       = [ ]
21 TO0.HelloAck    = [ NonceTO0Sign ]
22 TO0.OwnerSign   = [ to0d: bstr .cbor to0d, to1d: #6.18 COSE_Sign1 ]
   to0d            = [ OwnershipVoucher, WaitSeconds: uint32, NonceTO0Sign ]
   to1d payload    = bstr .cbor [ to1dRV: RVTO2Addr, to1dTo0dHash: Hash ]
23 TO0.AcceptOwner = [ WaitSeconds: uint32 ]
```

to1dTo0dHash covers the bytes inside the to0d bstr, so :class:`TO0OwnerSign` keeps them
verbatim, and :class:`To0d` keeps the voucher's bytes as received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from fdo import codec
from fdo.codec import CborValue, Raw
from fdo.cose import CoseSign1
from fdo.messages import MessageBase, empty_array, parse_cose_sign1
from fdo.rvinfo import RVTO2Addr
from fdo.types import Hash, MsgType, Nonce

_U32 = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class TO0Hello(MessageBase):
    """TO0.Hello (type 20): ``[]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO0_HELLO

    def to_cbor_obj(self) -> list[CborValue]:
        return []

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        empty_array(obj, "TO0.Hello")
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class TO0HelloAck(MessageBase):
    """TO0.HelloAck (type 21): ``[NonceTO0Sign]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO0_HELLO_ACK

    nonce: Nonce

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.nonce.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO0.HelloAck", 1)
        return cls(nonce=Nonce.from_cbor_obj(items[0]))


@dataclass(frozen=True, slots=True, kw_only=True)
class To0d:
    """``to0d = [OwnershipVoucher, WaitSeconds: uint32, NonceTO0Sign]``.

    ``voucher`` is the voucher's CBOR as received (parse it with
    ``fdo.voucher.OwnershipVoucher.decode``); :meth:`to_bytes` re-emits it verbatim.
    """

    voucher: bytes
    wait_seconds: int
    nonce: Nonce

    def to_bytes(self) -> bytes:
        """The CBOR that goes inside TO0.OwnerSign's bstr (what to1dTo0dHash covers)."""
        return codec.encode([Raw(self.voucher), self.wait_seconds, self.nonce.to_cbor_obj()])

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        what = "to0d"
        items = codec.as_list(codec.decode(data), what, 3)
        raw = codec.split_array(data, what)
        codec.as_list(items[0], f"{what}.OwnershipVoucher")
        return cls(
            voucher=raw[0],
            wait_seconds=codec.as_uint(items[1], f"{what}.WaitSeconds", _U32),
            nonce=Nonce.from_cbor_obj(items[2]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class To1dPayload:
    """The to1d payload: ``[to1dRV: RVTO2Addr, to1dTo0dHash: Hash]``."""

    rv_to2_addr: RVTO2Addr
    to0d_hash: Hash

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.rv_to2_addr.to_cbor_obj(), self.to0d_hash.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "to1d payload", 2)
        return cls(
            rv_to2_addr=RVTO2Addr.from_cbor_obj(items[0]),
            to0d_hash=Hash.from_cbor_obj(items[1], "to1dTo0dHash"),
        )

    def to_bytes(self) -> bytes:
        """The COSE_Sign1 payload bytes."""
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.from_cbor_obj(codec.decode(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class TO0OwnerSign(MessageBase):
    """TO0.OwnerSign (type 22): ``[to0d: bstr .cbor to0d, to1d: COSE_Sign1]``.

    ``to0d`` is the CBOR inside the bstr, as received (parse with :meth:`to0d_data`);
    ``to1d`` is signed by the voucher's final owner key over a :class:`To1dPayload`.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO0_OWNER_SIGN

    to0d: bytes
    to1d: CoseSign1

    def to0d_data(self) -> To0d:
        """The parsed to0d."""
        return To0d.from_bytes(self.to0d)

    def to1d_payload(self) -> To1dPayload:
        """The parsed to1d payload (the signature is checked separately)."""
        return To1dPayload.from_bytes(self.to1d.payload)

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.to0d, self.to1d.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO0.OwnerSign", 2)
        return cls(
            to0d=codec.as_bytes(items[0], "TO0.OwnerSign.to0d"),
            to1d=parse_cose_sign1(items[1], "TO0.OwnerSign.to1d"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TO0AcceptOwner(MessageBase):
    """TO0.AcceptOwner (type 23): ``[WaitSeconds: uint32]``, the lifetime granted."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO0_ACCEPT_OWNER

    wait_seconds: int

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.wait_seconds]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO0.AcceptOwner", 1)
        return cls(wait_seconds=codec.as_uint(items[0], "TO0.AcceptOwner.WaitSeconds", _U32))


MESSAGES: tuple[type[MessageBase], ...] = (TO0Hello, TO0HelloAck, TO0OwnerSign, TO0AcceptOwner)
"""The TO0 message classes, for :func:`fdo.messages.decode_message`."""
