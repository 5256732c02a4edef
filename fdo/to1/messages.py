"""TO1 messages 30-33 (spec §5.4, reference §5.2).

```
30 TO1.HelloRV    = [ Guid, eASigInfo ]
31 TO1.HelloRVAck = [ NonceTO1Proof, eBSigInfo ]
32 TO1.ProveToRV  = EAToken { 10: NonceTO1Proof, 256: 0x01||Guid }   (the body is the COSE_Sign1)
33 TO1.RVRedirect = to1d                                            (the body is the COSE_Sign1)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from fdo import codec
from fdo.codec import CborValue
from fdo.cose import CoseSign1, EatPayload, read_eat
from fdo.messages import MessageBase, parse_cose_sign1
from fdo.to0.messages import To1dPayload
from fdo.types import Guid, MsgType, Nonce, SigInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class TO1HelloRV(MessageBase):
    """TO1.HelloRV (type 30): ``[Guid, eASigInfo]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO1_HELLO_RV

    guid: Guid
    ea_sig_info: SigInfo

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.guid.to_cbor_obj(), self.ea_sig_info.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO1.HelloRV", 2)
        return cls(
            guid=Guid.from_cbor_obj(items[0]),
            ea_sig_info=SigInfo.from_cbor_obj(items[1], "TO1.HelloRV.eASigInfo"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TO1HelloRVAck(MessageBase):
    """TO1.HelloRVAck (type 31): ``[NonceTO1Proof, eBSigInfo]``; eBSigInfo echoes eASigInfo."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO1_HELLO_RV_ACK

    nonce: Nonce
    eb_sig_info: SigInfo

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.nonce.to_cbor_obj(), self.eb_sig_info.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO1.HelloRVAck", 2)
        return cls(
            nonce=Nonce.from_cbor_obj(items[0]),
            eb_sig_info=SigInfo.from_cbor_obj(items[1], "TO1.HelloRVAck.eBSigInfo"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TO1ProveToRV(MessageBase):
    """TO1.ProveToRV (type 32): the EAT itself, ``#6.18 COSE_Sign1``, signed by the device.

    Payload ``{10: NonceTO1Proof, 256: 0x01||Guid}`` (read with :meth:`eat`).
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO1_PROVE_TO_RV

    token: CoseSign1

    def eat(self) -> EatPayload:
        """The EAT claims (the signature is checked separately)."""
        return read_eat(self.token, "TO1.ProveToRV")

    def to_cbor_obj(self) -> CborValue:
        return self.token.to_cbor_obj()

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(token=parse_cose_sign1(obj, "TO1.ProveToRV"))


@dataclass(frozen=True, slots=True, kw_only=True)
class TO1RVRedirect(MessageBase):
    """TO1.RVRedirect (type 33): the owner's to1d, ``#6.18 COSE_Sign1`` as stored at TO0.

    Payload ``[to1dRV: RVTO2Addr, to1dTo0dHash: Hash]``
    (:class:`fdo.to0.messages.To1dPayload`).
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO1_RV_REDIRECT

    to1d: CoseSign1

    def to1d_payload(self) -> To1dPayload:
        """The parsed to1d payload (the owner's signature is checked in TO2)."""
        return To1dPayload.from_bytes(self.to1d.payload)

    def to_cbor_obj(self) -> CborValue:
        return self.to1d.to_cbor_obj()

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(to1d=parse_cose_sign1(obj, "TO1.RVRedirect"))


MESSAGES: tuple[type[MessageBase], ...] = (TO1HelloRV, TO1HelloRVAck, TO1ProveToRV, TO1RVRedirect)
"""The TO1 message classes, for :func:`fdo.messages.decode_message`."""
