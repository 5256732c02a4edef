"""TO1, device side (spec §5.4): ask the rendezvous server where the owner is.

The device proves its identity with an EAT (nonce from the server, UEID = 0x01||GUID)
signed by its attestation key, and receives to1d: the owner's signed TO2 addresses.
The to1d signature is checked in TO2, once the owner key is known from the voucher.
"""

from __future__ import annotations

from enum import Enum, auto

from fdo.cose import CoseSign1, EatPayload, make_eat
from fdo.credential import DeviceCredential
from fdo.crypto import default_pk_type, sg_type_for
from fdo.errors import InvalidMessageError
from fdo.machine import ClientMachine, Reply
from fdo.rvinfo import RVTO2Addr
from fdo.to0.messages import To1dPayload
from fdo.to1.messages import TO1HelloRV, TO1HelloRVAck, TO1ProveToRV, TO1RVRedirect
from fdo.types import MsgType, SigInfo


class TO1DeviceState(Enum):
    START = auto()
    WAIT_HELLO_ACK = auto()
    WAIT_REDIRECT = auto()
    DONE = auto()
    ERROR = auto()


class TO1Device(ClientMachine[TO1DeviceState]):
    """Runs TO1; :attr:`to1d` and :attr:`rv_to2_addr` hold the answer."""

    ACCEPTS = {
        TO1DeviceState.WAIT_HELLO_ACK: frozenset({MsgType.TO1_HELLO_RV_ACK}),
        TO1DeviceState.WAIT_REDIRECT: frozenset({MsgType.TO1_RV_REDIRECT}),
    }
    ERROR_STATE = TO1DeviceState.ERROR

    def __init__(self, credential: DeviceCredential) -> None:
        self.credential = credential
        key = credential.private_key.public_key()
        self.pk_type = default_pk_type(key)
        self.sig_info = SigInfo(sg_type_for(key, self.pk_type))
        self.state = TO1DeviceState.START
        self.to1d: CoseSign1 | None = None
        self.rv_to2_addr: RVTO2Addr | None = None

    def start(self) -> Reply:
        self.state = TO1DeviceState.WAIT_HELLO_ACK
        msg = TO1HelloRV(guid=self.credential.guid, ea_sig_info=self.sig_info)
        return MsgType.TO1_HELLO_RV, msg.encode()

    def _receive(self, msg_type: MsgType, body: bytes) -> Reply | None:
        if msg_type == MsgType.TO1_HELLO_RV_ACK:
            ack = TO1HelloRVAck.decode(body)
            if ack.eb_sig_info.sg_type != self.sig_info.sg_type:
                raise InvalidMessageError("TO1.HelloRVAck: eBSigInfo does not echo eASigInfo")
            eat = make_eat(
                self.credential.private_key,
                EatPayload(nonce=ack.nonce, ueid=self.credential.guid.ueid),
                pk_type=self.pk_type,
            )
            self.state = TO1DeviceState.WAIT_REDIRECT
            return MsgType.TO1_PROVE_TO_RV, TO1ProveToRV(token=eat).encode()
        redirect = TO1RVRedirect.decode(body)
        self.rv_to2_addr = To1dPayload.from_bytes(redirect.to1d.payload).rv_to2_addr
        self.to1d = redirect.to1d
        self.state = TO1DeviceState.DONE
        return None

    @property
    def done(self) -> bool:
        return self.state == TO1DeviceState.DONE
