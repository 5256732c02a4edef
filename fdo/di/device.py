"""DI, device side (spec §5.2): the device gets its credential from the manufacturer.

The device (or a factory station holding its key) sends DI.AppStart with the
five-element DeviceMfgInfo that go-fdo's DI server requires (reference §3.2),
HMACs the OVHeader it receives over the exact received bytes, and ends up with a
:class:`~fdo.credential.DeviceCredential`. Its private key never leaves it.
"""

from __future__ import annotations

import os
from enum import Enum, auto

from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, common_name, default_pk_type, hash_alg_for, make_csr
from fdo.di.messages import DIAppStart, DIDone, DISetCredentials, DISetHMAC, MfgInfo
from fdo.errors import InvalidMessageError
from fdo.machine import ClientMachine, Reply
from fdo.types import PROTOCOL_VERSION, Hash, MsgType, Rand
from fdo.voucher import OVHeader


class DIDeviceState(Enum):
    START = auto()
    WAIT_SET_CREDENTIALS = auto()
    WAIT_DONE = auto()
    DONE = auto()
    ERROR = auto()


class DIDevice(ClientMachine[DIDeviceState]):
    """Runs DI for a device whose key is ``key``."""

    ACCEPTS = {
        DIDeviceState.WAIT_SET_CREDENTIALS: frozenset({MsgType.DI_SET_CREDENTIALS}),
        DIDeviceState.WAIT_DONE: frozenset({MsgType.DI_DONE}),
    }
    ERROR_STATE = DIDeviceState.ERROR

    def __init__(self, *, key: PrivateKeyT, serial: str, model: str, rand: Rand = os.urandom) -> None:
        self.key = key
        self.serial = serial
        self.model = model
        self.hmac_secret = rand(32)
        self.state = DIDeviceState.START
        self.credential: DeviceCredential | None = None

    def start(self) -> Reply:
        if self.state != DIDeviceState.START:
            raise InvalidMessageError("DI already started")
        pk_type = default_pk_type(self.key.public_key())
        info = MfgInfo(
            pk_type=int(pk_type),
            pk_enc=1,  # X509: the only encoding every implementation reads
            serial=self.serial,
            device_info=self.model,
            # The subject only names the request (the manufacturer issues its own).
            csr=make_csr(self.key, common_name(self.serial or self.model)),
        )
        self.state = DIDeviceState.WAIT_SET_CREDENTIALS
        return MsgType.DI_APP_START, DIAppStart(mfg_info=info.to_bytes()).encode()

    def _receive(self, msg_type: MsgType, body: bytes) -> Reply | None:
        if msg_type == MsgType.DI_SET_CREDENTIALS:
            msg = DISetCredentials.decode(body)
            header = OVHeader.from_bytes(msg.ov_header)
            if header.prot_ver != PROTOCOL_VERSION:
                raise InvalidMessageError(f"OVHeader protocol version {header.prot_ver} is not 101")
            alg = hash_alg_for(self.key.public_key(), header.public_key.key)
            hmac = Hash.hmac(alg.as_hmac, self.hmac_secret, msg.ov_header)
            self.credential = DeviceCredential(
                active=True,
                prot_ver=PROTOCOL_VERSION,
                hmac_secret=self.hmac_secret,
                device_info=header.device_info,
                guid=header.guid,
                rv_info=header.rv_info,
                pubkey_hash=Hash.compute(alg, header.public_key.encode()),
                private_key=self.key,
                serial=self.serial or None,
            )
            self.state = DIDeviceState.WAIT_DONE
            return MsgType.DI_SET_HMAC, DISetHMAC(hmac=hmac).encode()
        DIDone.decode(body)
        self.state = DIDeviceState.DONE
        return None

    @property
    def done(self) -> bool:
        return self.state == DIDeviceState.DONE
