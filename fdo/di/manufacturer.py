"""DI, manufacturer side (spec §5.2): make the device's credential and its voucher.

On DI.AppStart the manufacturer checks the device's CSR, has its device CA sign the
device certificate, picks a GUID and builds the OVHeader (OVPubKey = the manufacturer
key for the device's key type, as go-fdo's DI server does). On DI.SetHMAC it assembles
the zero-entry voucher, which the service then stores (:attr:`DIManufacturer.voucher`).

What the machine needs from its service is the narrow :class:`DIManufacturerConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from enum import Enum, auto
from typing import Protocol, Self

from cryptography import x509

from fdo import codec
from fdo.codec import CborValue
from fdo.crypto import PublicKey, cert_public_key, hash_alg_for, load_cert_chain, load_csr
from fdo.di.messages import DIAppStart, DIDone, DISetCredentials, DISetHMAC, MfgInfo
from fdo.errors import InvalidMessageError, MessageBodyError
from fdo.machine import Reply, ServerMachine
from fdo.rvinfo import RendezvousInfo
from fdo.types import Guid, MsgType, Rand
from fdo.voucher import OVHeader, OwnershipVoucher, cert_chain_hash


class DIManufacturerConfig(Protocol):
    """What DI needs from the manufacturer service."""

    def ov_public_key(self, info: MfgInfo) -> PublicKey:
        """The manufacturer public key to put in OVPubKey for this device."""

    def issue_chain(self, csr: x509.CertificateSigningRequest, info: MfgInfo, now: datetime) -> list[bytes]:
        """Sign the device certificate; return the DER chain, device certificate first."""

    def rv_info(self, info: MfgInfo) -> RendezvousInfo:
        """The rendezvous directives to write into the credential and voucher."""


class DIState(Enum):
    WAIT_APP_START = auto()
    WAIT_SET_HMAC = auto()
    DONE = auto()
    ERROR = auto()


#: Longest DeviceInfo accepted (printable ASCII; rs refuses anything else).
MAX_DEVICE_INFO = 255


def check_device_info(text: str) -> str:
    """OVDeviceInfo must be printable ASCII (reference §3.2)."""
    if not text or len(text) > MAX_DEVICE_INFO or any(not (0x20 <= ord(c) <= 0x7E) for c in text):
        raise InvalidMessageError("device info must be 1-255 printable ASCII characters")
    return text


#: Longest serial number accepted (it names the device in the manufacturer's records).
MAX_SERIAL = 255


def check_serial(text: str) -> str:
    """A serial number may be empty (the device info stands in); it holds at most 255
    characters and no NUL (which PostgreSQL cannot store). Other characters pass: a client
    may well send a serial read from DMI with its newline."""
    if len(text) > MAX_SERIAL or "\x00" in text:
        raise InvalidMessageError("serial number must be at most 255 characters, without NUL")
    return text


class DIManufacturer(ServerMachine[DIState]):
    """The manufacturer's DI server for one device session."""

    FIRST = MsgType.DI_APP_START
    ACCEPTS = {
        DIState.WAIT_APP_START: frozenset({MsgType.DI_APP_START}),
        DIState.WAIT_SET_HMAC: frozenset({MsgType.DI_SET_HMAC}),
    }
    ERROR_STATE = DIState.ERROR

    def __init__(self, config: DIManufacturerConfig, *, now: datetime, rand: Rand = os.urandom) -> None:
        self.config = config
        self.now = now
        self.rand = rand
        self.state = DIState.WAIT_APP_START
        self.mfg_info: MfgInfo | None = None
        self.header: OVHeader | None = None
        self.cert_chain: tuple[bytes, ...] = ()
        self.voucher: OwnershipVoucher | None = None

    def _handle(self, msg_type: MsgType, body: bytes) -> Reply:
        if msg_type == MsgType.DI_APP_START:
            return self._app_start(DIAppStart.decode(body))
        return self._set_hmac(DISetHMAC.decode(body))

    def _app_start(self, msg: DIAppStart) -> Reply:
        if msg.mfg_info is None:
            raise MessageBodyError("DI.AppStart: DeviceMfgInfo is required")
        info = MfgInfo.from_bytes(msg.mfg_info)
        if info.csr is None:
            raise MessageBodyError("DI.AppStart: DeviceMfgInfo carries no CSR")
        csr = load_csr(info.csr)
        check_serial(info.serial or "")
        device_info = check_device_info(info.device_info or info.serial or "")
        ov_key = self.config.ov_public_key(info)
        chain = self.config.issue_chain(csr, info, self.now)
        leaf = cert_public_key(load_cert_chain(chain[:1])[0])
        alg = hash_alg_for(leaf, ov_key.key)
        header = OVHeader.build(
            guid=Guid.new(self.rand),
            rv_info=self.config.rv_info(info),
            device_info=device_info,
            public_key=ov_key,
            cert_chain_hash=cert_chain_hash(alg, chain),
        )
        self.mfg_info, self.header, self.cert_chain = info, header, tuple(chain)
        self.state = DIState.WAIT_SET_HMAC
        return MsgType.DI_SET_CREDENTIALS, DISetCredentials(ov_header=header.raw).encode()

    def _set_hmac(self, msg: DISetHMAC) -> Reply:
        assert self.header is not None
        if not msg.hmac.alg.is_hmac:
            raise InvalidMessageError("DI.SetHMAC: not an HMAC")
        self.voucher = OwnershipVoucher.create(header=self.header, hmac=msg.hmac, cert_chain=self.cert_chain)
        self.state = DIState.DONE
        return MsgType.DI_DONE, DIDone().encode()

    @property
    def done(self) -> bool:
        return self.state == DIState.DONE

    def _state_obj(self) -> dict[str, CborValue]:
        return {
            "mfg": self.mfg_info.to_bytes() if self.mfg_info else None,
            "hdr": self.header.raw if self.header else None,
            "chain": list(self.cert_chain),
        }

    @classmethod
    def from_state(
        cls, data: bytes, config: DIManufacturerConfig, *, now: datetime, rand: Rand = os.urandom
    ) -> Self:
        obj: Mapping[str, CborValue] = cls.load_state(data)
        machine = cls(config, now=now, rand=rand)
        machine.state = cls._state_enum(obj, DIState)
        if obj.get("mfg") is not None:
            machine.mfg_info = MfgInfo.from_bytes(codec.as_bytes(obj["mfg"], "state.mfg"))
        if obj.get("hdr") is not None:
            machine.header = OVHeader.from_bytes(codec.as_bytes(obj["hdr"], "state.hdr"))
        machine.cert_chain = tuple(
            codec.as_bytes(c, "state.chain") for c in codec.as_list(obj.get("chain", []), "state.chain")
        )
        return machine
