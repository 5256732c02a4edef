"""TO0, rendezvous side (spec §5.3): accept an owner's registration for a device.

Checks, in order: the nonce echoes the one this session issued (101); the voucher
decodes and its chain verifies with at least one entry (2); its RendezvousInfo is not
empty (2); to1dTo0dHash covers the received to0d bytes (101); every to1d owner address
names a host, RVIP or RVDNS (4); to1d is signed by the voucher's final owner key (3);
the service's policy accepts the owner or manufacturer key (2). go-fdo's rendezvous skips
the to1d signature; checking it is what stops a third party from redirecting devices.
The accepted lifetime is the owner's request capped by :attr:`TO0Policy.max_wait_seconds`.

The registration carries what the service pins per GUID (``rendezvous/pins.py``): the
manufacturer key and the chain of owner keys, each as the SHA-256 of its
SubjectPublicKeyInfo, so a later registration can be checked to continue the first one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol, Self

from fdo import codec
from fdo.codec import CborValue
from fdo.crypto import spki_der
from fdo.errors import (
    InvalidIpAddressError,
    InvalidOwnerSignBodyError,
    InvalidVoucherError,
    NonceMismatchError,
    SignatureError,
)
from fdo.machine import Reply, ServerMachine
from fdo.to0.messages import TO0AcceptOwner, To0d, TO0Hello, TO0HelloAck, TO0OwnerSign, To1dPayload
from fdo.types import Guid, MsgType, Nonce, Rand
from fdo.voucher import OwnershipVoucher


class TO0Policy(Protocol):
    """What TO0 needs from the rendezvous service."""

    @property
    def max_wait_seconds(self) -> int:
        """Longest registration lifetime granted."""

    def check_owner(self, voucher: OwnershipVoucher) -> None:
        """Raise InvalidVoucherError when the owner or manufacturer key is not allowed."""


@dataclass(frozen=True, slots=True)
class TO0Registration:
    """What the rendezvous stores for TO1: to1d for the device, and its key to check it."""

    guid: Guid
    to1d: bytes
    wait_seconds: int
    device_key_spki: bytes
    owner_key_spki: bytes
    manufacturer_key_spki: bytes
    #: SHA-256 of each voucher entry's owner key SPKI, entry 0 first (the owner chain).
    owner_chain: tuple[bytes, ...] = ()

    @property
    def manufacturer_key_hash(self) -> bytes:
        """SHA-256 of the voucher header's public key SPKI."""
        return hashlib.sha256(self.manufacturer_key_spki).digest()


def owner_chain(voucher: OwnershipVoucher) -> tuple[bytes, ...]:
    """SHA-256 of each entry's owner public key (SPKI DER), in entry order."""
    return tuple(hashlib.sha256(spki_der(e.payload.public_key.key)).digest() for e in voucher.entries)


class TO0State(Enum):
    WAIT_HELLO = auto()
    WAIT_OWNER_SIGN = auto()
    DONE = auto()
    ERROR = auto()


class TO0Rendezvous(ServerMachine[TO0State]):
    """One TO0 session on the rendezvous server."""

    FIRST = MsgType.TO0_HELLO
    ACCEPTS = {
        TO0State.WAIT_HELLO: frozenset({MsgType.TO0_HELLO}),
        TO0State.WAIT_OWNER_SIGN: frozenset({MsgType.TO0_OWNER_SIGN}),
    }
    ERROR_STATE = TO0State.ERROR

    def __init__(self, policy: TO0Policy, *, rand: Rand = os.urandom) -> None:
        self.policy = policy
        self.rand = rand
        self.state = TO0State.WAIT_HELLO
        self.nonce: Nonce | None = None
        self.registration: TO0Registration | None = None

    def _handle(self, msg_type: MsgType, body: bytes) -> Reply:
        if msg_type == MsgType.TO0_HELLO:
            TO0Hello.decode(body)
            self.nonce = Nonce.new(self.rand)
            self.state = TO0State.WAIT_OWNER_SIGN
            return MsgType.TO0_HELLO_ACK, TO0HelloAck(nonce=self.nonce).encode()
        return self._owner_sign(TO0OwnerSign.decode(body))

    def _owner_sign(self, msg: TO0OwnerSign) -> Reply:
        to0d = To0d.from_bytes(msg.to0d)
        if to0d.nonce != self.nonce:
            raise NonceMismatchError("TO0.OwnerSign: NonceTO0Sign does not match")
        voucher = OwnershipVoucher.decode(to0d.voucher)
        voucher.verify(min_entries=1)
        if not voucher.header.rv_info.directives:
            # [+ RendezvousDirective]: decoding tolerates [] (go and rs do), storing does not.
            raise InvalidVoucherError("the voucher's RendezvousInfo is empty", check="header.rv_info")
        payload = To1dPayload.from_bytes(msg.to1d.payload)
        payload.to0d_hash.verify(msg.to0d, "to1dTo0dHash")
        for i, entry in enumerate(payload.rv_to2_addr.entries):
            if not entry.has_host:
                raise InvalidIpAddressError(f"to1d RVTO2AddrEntry[{i}] has neither RVIP nor RVDNS")
        owner_key = voucher.owner_public_key
        try:
            msg.to1d.verify(owner_key.key, "to1d")
        except SignatureError as exc:
            raise InvalidOwnerSignBodyError(exc.message) from None
        self.policy.check_owner(voucher)
        device_key = voucher.device_public_key
        if device_key is None:
            raise InvalidVoucherError("voucher has no device certificate chain", check="cert_chain")
        wait = min(to0d.wait_seconds, self.policy.max_wait_seconds)
        self.registration = TO0Registration(
            guid=voucher.guid,
            to1d=msg.to1d.encode(),
            wait_seconds=wait,
            device_key_spki=spki_der(device_key),
            owner_key_spki=spki_der(owner_key.key),
            manufacturer_key_spki=spki_der(voucher.header.public_key.key),
            owner_chain=owner_chain(voucher),
        )
        self.state = TO0State.DONE
        return MsgType.TO0_ACCEPT_OWNER, TO0AcceptOwner(wait_seconds=wait).encode()

    @property
    def done(self) -> bool:
        return self.state == TO0State.DONE

    def _state_obj(self) -> dict[str, CborValue]:
        return {"nonce": self.nonce.value if self.nonce else None}

    @classmethod
    def from_state(cls, data: bytes, policy: TO0Policy, *, rand: Rand = os.urandom) -> Self:
        obj: Mapping[str, CborValue] = cls.load_state(data)
        machine = cls(policy, rand=rand)
        machine.state = cls._state_enum(obj, TO0State)
        machine.nonce = codec.optional(obj.get("nonce"), Nonce.from_cbor_obj)
        return machine
