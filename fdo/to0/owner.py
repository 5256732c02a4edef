"""TO0, owner side (spec §5.3): register a voucher with a rendezvous server.

The owner proves it holds the voucher's final key by signing ``to1d``, which tells
the device where to find the owner for TO2. ``to1dTo0dHash`` binds that to the exact
``to0d`` bytes sent (the voucher, the wait time and the rendezvous nonce); its
algorithm is the one of the voucher's first entry hash, as go-fdo does.
"""

from __future__ import annotations

from enum import Enum, auto

from fdo.cose import CoseSign1
from fdo.crypto import PrivateKeyT
from fdo.errors import FdoUsageError
from fdo.machine import ClientMachine, Reply
from fdo.rvinfo import RVTO2Addr
from fdo.to0.messages import TO0AcceptOwner, To0d, TO0Hello, TO0HelloAck, TO0OwnerSign, To1dPayload
from fdo.types import Hash, HashType, MsgType
from fdo.voucher import OwnershipVoucher


class TO0OwnerState(Enum):
    START = auto()
    WAIT_HELLO_ACK = auto()
    WAIT_ACCEPT_OWNER = auto()
    DONE = auto()
    ERROR = auto()


def to1d_hash_alg(voucher: OwnershipVoucher) -> HashType:
    """Algorithm of to1dTo0dHash: the one of entry 0's OVEHashPrevEntry (go)."""
    if voucher.entries:
        return voucher.entries[0].payload.prev_hash.alg
    return HashType.SHA256


class TO0Owner(ClientMachine[TO0OwnerState]):
    """Registers one voucher; :attr:`accepted_wait_seconds` is the lifetime granted."""

    ACCEPTS = {
        TO0OwnerState.WAIT_HELLO_ACK: frozenset({MsgType.TO0_HELLO_ACK}),
        TO0OwnerState.WAIT_ACCEPT_OWNER: frozenset({MsgType.TO0_ACCEPT_OWNER}),
    }
    ERROR_STATE = TO0OwnerState.ERROR

    def __init__(
        self,
        *,
        voucher: OwnershipVoucher,
        owner_key: PrivateKeyT,
        rv_to2_addr: RVTO2Addr,
        wait_seconds: int,
    ) -> None:
        if not voucher.owner_public_key.same_key(owner_key.public_key()):
            raise FdoUsageError("the owner key is not the voucher's final owner key")
        if not rv_to2_addr.entries or not all(e.has_host for e in rv_to2_addr.entries):
            raise FdoUsageError("every owner address needs a host (RVIP or RVDNS)")
        self.voucher = voucher
        self.owner_key = owner_key
        self.rv_to2_addr = rv_to2_addr
        self.wait_seconds = wait_seconds
        self.state = TO0OwnerState.START
        self.accepted_wait_seconds: int | None = None

    def start(self) -> Reply:
        self.state = TO0OwnerState.WAIT_HELLO_ACK
        return MsgType.TO0_HELLO, TO0Hello().encode()

    def _receive(self, msg_type: MsgType, body: bytes) -> Reply | None:
        if msg_type == MsgType.TO0_HELLO_ACK:
            ack = TO0HelloAck.decode(body)
            to0d = To0d(voucher=self.voucher.encode(), wait_seconds=self.wait_seconds, nonce=ack.nonce)
            to0d_bytes = to0d.to_bytes()
            payload = To1dPayload(
                rv_to2_addr=self.rv_to2_addr,
                to0d_hash=Hash.compute(to1d_hash_alg(self.voucher), to0d_bytes),
            )
            to1d = CoseSign1.sign(
                self.owner_key,
                payload.to_bytes(),
                pk_type=self.voucher.owner_public_key.pk_type,
            )
            self.state = TO0OwnerState.WAIT_ACCEPT_OWNER
            return MsgType.TO0_OWNER_SIGN, TO0OwnerSign(to0d=to0d_bytes, to1d=to1d).encode()
        accept = TO0AcceptOwner.decode(body)
        # A server may shorten the lifetime; never trust it to have lengthened it.
        self.accepted_wait_seconds = min(accept.wait_seconds, self.wait_seconds)
        self.state = TO0OwnerState.DONE
        return None

    @property
    def done(self) -> bool:
        return self.state == TO0OwnerState.DONE
