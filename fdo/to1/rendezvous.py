"""TO1, rendezvous side (spec §5.4): hand a device its owner's to1d.

HelloRV for a GUID with no live registration fails with ResourceNotFound (6). ProveToRV
must carry the issued nonce and the device's UEID, signed by the device key recorded
from the voucher's certificate chain at TO0. The reply is to1d exactly as the owner
signed it.

ProveToRV answers from the registration HelloRV found while the machine stays in memory
between the two messages (the transport's machine cache); a machine restored from its
stored state (another worker or replica, a restart) reads the registration again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol, Self

from fdo import codec
from fdo.codec import CborValue
from fdo.cose import read_eat
from fdo.crypto import load_public_key, sg_type_fits
from fdo.errors import InvalidMessageError, NonceMismatchError, ResourceNotFoundError
from fdo.machine import Reply, ServerMachine
from fdo.to1.messages import TO1HelloRV, TO1HelloRVAck, TO1ProveToRV
from fdo.types import Guid, MsgType, Nonce, Rand


@dataclass(frozen=True, slots=True)
class TO1Record:
    """A live registration: the device's key and the owner's to1d."""

    device_key_spki: bytes
    to1d: bytes


class TO1Lookup(Protocol):
    """What TO1 needs from the rendezvous service."""

    def find(self, guid: Guid) -> TO1Record | None:
        """The live (unexpired) registration for ``guid``, if any."""


class TO1State(Enum):
    WAIT_HELLO = auto()
    WAIT_PROVE = auto()
    DONE = auto()
    ERROR = auto()


class TO1Rendezvous(ServerMachine[TO1State]):
    """One TO1 session on the rendezvous server."""

    FIRST = MsgType.TO1_HELLO_RV
    ACCEPTS = {
        TO1State.WAIT_HELLO: frozenset({MsgType.TO1_HELLO_RV}),
        TO1State.WAIT_PROVE: frozenset({MsgType.TO1_PROVE_TO_RV}),
    }
    ERROR_STATE = TO1State.ERROR

    def __init__(self, lookup: TO1Lookup, *, rand: Rand = os.urandom) -> None:
        self.lookup = lookup
        self.rand = rand
        self.state = TO1State.WAIT_HELLO
        self.guid: Guid | None = None
        self.nonce: Nonce | None = None
        #: The registration HelloRV found (not part of the stored state).
        self.record: TO1Record | None = None

    def _find(self, guid: Guid) -> TO1Record:
        record = self.lookup.find(guid)
        if record is None:
            raise ResourceNotFoundError(f"no owner is registered for device {guid}")
        return record

    def _handle(self, msg_type: MsgType, body: bytes) -> Reply:
        if msg_type == MsgType.TO1_HELLO_RV:
            hello = TO1HelloRV.decode(body)
            record = self._find(hello.guid)
            if not sg_type_fits(hello.ea_sig_info.sg_type, load_public_key(record.device_key_spki)):
                raise InvalidMessageError("TO1.HelloRV: eASigInfo does not match the device key")
            self.guid = hello.guid
            self.record = record
            self.nonce = Nonce.new(self.rand)
            self.state = TO1State.WAIT_PROVE
            return MsgType.TO1_HELLO_RV_ACK, TO1HelloRVAck(
                nonce=self.nonce, eb_sig_info=hello.ea_sig_info
            ).encode()
        assert self.guid is not None
        prove = TO1ProveToRV.decode(body)
        record = self.record if self.record is not None else self._find(self.guid)
        claims = read_eat(prove.token, "TO1.ProveToRV")
        if claims.nonce != self.nonce:
            raise NonceMismatchError("TO1.ProveToRV: NonceTO1Proof does not match")
        if claims.guid() != self.guid:
            raise InvalidMessageError("TO1.ProveToRV: UEID is not this device's GUID")
        prove.token.verify(load_public_key(record.device_key_spki), "TO1.ProveToRV")
        self.state = TO1State.DONE
        return MsgType.TO1_RV_REDIRECT, record.to1d

    @property
    def done(self) -> bool:
        return self.state == TO1State.DONE

    def _state_obj(self) -> dict[str, CborValue]:
        return {
            "guid": self.guid.value if self.guid else None,
            "nonce": self.nonce.value if self.nonce else None,
        }

    @classmethod
    def from_state(cls, data: bytes, lookup: TO1Lookup, *, rand: Rand = os.urandom) -> Self:
        obj: Mapping[str, CborValue] = cls.load_state(data)
        machine = cls(lookup, rand=rand)
        machine.state = cls._state_enum(obj, TO1State)
        machine.guid = codec.optional(obj.get("guid"), Guid.from_cbor_obj)
        machine.nonce = codec.optional(obj.get("nonce"), Nonce.from_cbor_obj)
        return machine
