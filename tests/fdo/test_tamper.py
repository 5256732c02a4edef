"""Tampering is caught: one flipped bit in a protocol message fails with the right FDO code.

Each case runs DI, TO0, TO1 and TO2 end to end in memory (machines paired as in
``tests/fdo/flow.py``, every server rebuilt from its serialised state per message) with a
hook that decodes one message with its message class, flips one bit in one field,
re-encodes it and passes it on. The case names the machine that must refuse it (which
may be in a later protocol: a DI HMAC can only be checked by the device in TO2), the
exact :class:`~fdo.errors.ErrorCode` and the error class, and the refusing machine must
end in its ERROR state. Where the field is covered by a signature the attacker cannot
make, the message is re-signed with the real key when that isolates the field's own
check (``resigned``), so the test proves that check and not only the signature.

Voucher-level tampering (a voucher checked on its own) is in ``test_voucher.py``.
Replayed and out-of-order messages are at the end of the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fdo import codec
from fdo.codec import Tag
from fdo.cose import CoseSign1, EatPayload, make_eat, read_eat
from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey, generate_key
from fdo.di.device import DIDevice
from fdo.di.manufacturer import DIManufacturer
from fdo.di.messages import DIAppStart, DISetCredentials, DISetHMAC, MfgInfo
from fdo.errors import (
    ErrorCode,
    FdoError,
    HashMismatchError,
    InvalidMessageError,
    InvalidOwnerSignBodyError,
    InvalidVoucherError,
    MessageBodyError,
    NonceMismatchError,
    ResourceNotFoundError,
    SignatureError,
    UnexpectedMessageError,
)
from fdo.machine import ClientMachine, Machine, Reply, ServerMachine
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to0.messages import To0d, TO0HelloAck, TO0OwnerSign
from fdo.to0.owner import TO0Owner
from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.device import TO1Device
from fdo.to1.messages import TO1HelloRV, TO1HelloRVAck, TO1ProveToRV, TO1RVRedirect
from fdo.to1.rendezvous import TO1Rendezvous
from fdo.to2.device import TO2Device
from fdo.to2.messages import (
    ProveOVHdrPayload,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OVNextEntry,
    TO2ProveDevice,
    TO2ProveOVHdr,
)
from fdo.to2.owner import TO2Owner
from fdo.types import Guid, Hash, MsgType, Nonce
from fdo.voucher import OVHeader, OwnershipVoucher
from tests.fdo.flow import NOW, Owner, Rendezvous, make_manufacturer, sample_devmod

Hook = Callable[[int, bytes], bytes]


@dataclass(frozen=True)
class Keys:
    mfr: dict[str, PrivateKeyT]
    owner: dict[str, PrivateKeyT]
    device: dict[str, PrivateKeyT]
    other: PrivateKeyT  # an ec256 key that is nobody's in the voucher


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        mfr={kind: generate_key(kind) for kind in ("ec256", "ec384", "rsa2048")},
        owner={kind: generate_key(kind) for kind in ("ec256", "rsa2048")},
        device={kind: generate_key(kind) for kind in ("ec256", "rsa2048")},
        other=generate_key("ec256"),
    )


# ---------------------------------------------------------------------------- the run


@dataclass
class Failure:
    phase: str
    side: str  # "client" (device; owner in TO0) or "server"
    msg_type: int  # the message being handled when it failed
    error: FdoError
    machine: Machine[Any]


class PhaseFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.phase} {failure.side}: {failure.error!r}")
        self.failure = failure


def pair(
    phase: str,
    client: ClientMachine[Any],
    new_server: Callable[[], ServerMachine[Any]],
    restore: Callable[[bytes], ServerMachine[Any]],
    hook: Hook,
) -> ServerMachine[Any]:
    """Run one protocol; raise PhaseFailed with the machine that refused a message."""
    msg: Reply | None = client.start()
    state: bytes | None = None
    server = new_server()
    while msg is not None:
        msg_type, body = msg
        body = hook(msg_type, body)
        server = new_server() if state is None else restore(state)
        try:
            reply_type, reply = server.handle(msg_type, body)
        except FdoError as exc:
            raise PhaseFailed(Failure(phase, "server", msg_type, exc, server)) from exc
        state = server.to_state()
        reply = hook(reply_type, reply)
        try:
            msg = client.receive(reply_type, reply)
        except FdoError as exc:
            raise PhaseFailed(Failure(phase, "client", reply_type, exc, client)) from exc
    assert client.done and server.done
    return server


def onboard(keys: Keys, kind: str, hook: Hook) -> DeviceCredential:
    """DI, voucher extension, TO0, TO1 and TO2; the hook sees every message of all four."""
    mfr = make_manufacturer(keys.mfr)
    di_device = DIDevice(key=keys.device[kind], serial="SN-0001", model="kiosk-v2")
    di = pair(
        "DI",
        di_device,
        lambda: DIManufacturer(mfr, now=NOW),
        lambda s: DIManufacturer.from_state(s, mfr, now=NOW),
        hook,
    )
    assert isinstance(di, DIManufacturer) and di.voucher is not None
    credential = di_device.credential
    assert credential is not None
    owner_key = keys.owner[kind]
    voucher = di.voucher.extend(keys.mfr[kind], PublicKey.from_key(owner_key.public_key()))

    rv = Rendezvous()
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    to0_owner = TO0Owner(voucher=voucher, owner_key=owner_key, rv_to2_addr=addr, wait_seconds=3600)
    to0 = pair("TO0", to0_owner, lambda: TO0Rendezvous(rv), lambda s: TO0Rendezvous.from_state(s, rv), hook)
    assert isinstance(to0, TO0Rendezvous) and to0.registration is not None
    rv.registrations[to0.registration.guid] = to0.registration

    to1_device = TO1Device(credential)
    pair("TO1", to1_device, lambda: TO1Rendezvous(rv), lambda s: TO1Rendezvous.from_state(s, rv), hook)
    assert to1_device.to1d is not None

    owner = Owner(keys={kind: owner_key}, vouchers={voucher.guid: voucher})
    to2_device = TO2Device(
        credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=to1_device.to1d
    )
    to2 = pair("TO2", to2_device, lambda: TO2Owner(owner), lambda s: TO2Owner.from_state(s, owner), hook)
    assert isinstance(to2, TO2Owner) and to2.new_voucher is not None
    assert to2_device.new_credential is not None
    return to2_device.new_credential


# ---------------------------------------------------------------------------- bit flips


def flip(data: bytes, index: int = -1) -> bytes:
    """``data`` with the low bit of one byte flipped."""
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def flip_in(data: bytes, needle: bytes, index: int = -1) -> bytes:
    """Flip a bit of ``needle`` where it occurs (exactly once) inside ``data``."""
    assert data.count(needle) == 1, "field bytes must locate exactly one place"
    return data.replace(needle, flip(needle, index))


def flip_signature(token: CoseSign1) -> CoseSign1:
    return dataclasses.replace(token, signature=flip(token.signature))


def flip_ciphertext(body: bytes) -> bytes:
    """Flip a bit in an encrypted TO2 body's ciphertext (the GCM tag for A128GCM)."""
    obj = codec.decode(body)
    assert isinstance(obj, Tag) and obj.tag == 16
    protected, unprotected, ciphertext = codec.as_list(obj.value, "COSE_Encrypt0", 3)
    assert isinstance(ciphertext, bytes)
    return codec.encode(Tag(16, [protected, unprotected, flip(ciphertext)]))


# DI ---------------------------------------------------------------------------------


def di_csr_signature(k: Keys, body: bytes) -> bytes:
    info_bytes = DIAppStart.decode(body).mfg_info
    assert info_bytes is not None
    info = MfgInfo.from_bytes(info_bytes)
    assert info.csr is not None
    tampered = dataclasses.replace(info, csr=flip(info.csr))  # last byte: inside the signature
    return DIAppStart(mfg_info=tampered.to_bytes()).encode()


def _di_serial(serial: str) -> Callable[[Keys, bytes], bytes]:
    def tamper(k: Keys, body: bytes) -> bytes:
        info_bytes = DIAppStart.decode(body).mfg_info
        assert info_bytes is not None
        info = dataclasses.replace(MfgInfo.from_bytes(info_bytes), serial=serial)
        return DIAppStart(mfg_info=info.to_bytes()).encode()

    return tamper


def di_header_guid(k: Keys, body: bytes) -> bytes:
    raw = DISetCredentials.decode(body).ov_header
    return DISetCredentials(ov_header=flip_in(raw, OVHeader.from_bytes(raw).guid.value)).encode()


def di_header_hmac(k: Keys, body: bytes) -> bytes:
    hmac = DISetHMAC.decode(body).hmac
    return DISetHMAC(hmac=Hash(hmac.alg, flip(hmac.value))).encode()


# TO0 --------------------------------------------------------------------------------


def to0_ack_nonce(k: Keys, body: bytes) -> bytes:
    return flip_in(body, TO0HelloAck.decode(body).nonce.value)


def to0_to1d_signature(k: Keys, body: bytes) -> bytes:
    msg = TO0OwnerSign.decode(body)
    return TO0OwnerSign(to0d=msg.to0d, to1d=flip_signature(msg.to1d)).encode()


def to0_to0d_hash(k: Keys, body: bytes) -> bytes:
    msg = TO0OwnerSign.decode(body)
    payload = flip_in(msg.to1d.payload, msg.to1d_payload().to0d_hash.value)
    return TO0OwnerSign(to0d=msg.to0d, to1d=dataclasses.replace(msg.to1d, payload=payload)).encode()


def to0_to0d_nonce(k: Keys, body: bytes) -> bytes:
    msg = TO0OwnerSign.decode(body)
    to0d = flip_in(msg.to0d, msg.to0d_data().nonce.value)
    return TO0OwnerSign(to0d=to0d, to1d=msg.to1d).encode()


def _to0_voucher_field(field: Callable[[OwnershipVoucher], bytes]) -> Callable[[Keys, bytes], bytes]:
    def tamper(k: Keys, body: bytes) -> bytes:
        msg = TO0OwnerSign.decode(body)
        voucher = OwnershipVoucher.decode(To0d.from_bytes(msg.to0d).voucher)
        return TO0OwnerSign(to0d=flip_in(msg.to0d, field(voucher)), to1d=msg.to1d).encode()

    return tamper


def _device_cert(voucher: OwnershipVoucher) -> bytes:
    assert voucher.cert_chain is not None
    return voucher.cert_chain[0]


to0_voucher_cert = _to0_voucher_field(_device_cert)
to0_voucher_guid = _to0_voucher_field(lambda v: v.guid.value)
to0_voucher_entry_signature = _to0_voucher_field(lambda v: v.entries[0].sign1.signature)


def to0_truncated(k: Keys, body: bytes) -> bytes:
    return codec.encode([TO0OwnerSign.decode(body).to0d])  # one element instead of two


# TO1 --------------------------------------------------------------------------------


def to1_hello_guid(k: Keys, body: bytes) -> bytes:
    return flip_in(body, TO1HelloRV.decode(body).guid.value)


def to1_ack_nonce(k: Keys, body: bytes) -> bytes:
    return flip_in(body, TO1HelloRVAck.decode(body).nonce.value)


def _to1_eat(change: Callable[[EatPayload], EatPayload]) -> Callable[[Keys, bytes], bytes]:
    """Change the EAT claims and re-sign them with the device key (resigned)."""

    def tamper(k: Keys, body: bytes) -> bytes:
        claims = change(read_eat(TO1ProveToRV.decode(body).token))
        return TO1ProveToRV(token=make_eat(k.device["ec256"], claims)).encode()

    return tamper


to1_eat_nonce = _to1_eat(lambda c: dataclasses.replace(c, nonce=Nonce(flip(c.nonce.value))))
to1_eat_ueid = _to1_eat(lambda c: dataclasses.replace(c, ueid=flip(c.ueid)))


def to1_eat_signature(k: Keys, body: bytes) -> bytes:
    return TO1ProveToRV(token=flip_signature(TO1ProveToRV.decode(body).token)).encode()


def to1_to1d_signature(k: Keys, body: bytes) -> bytes:
    return TO1RVRedirect(to1d=flip_signature(TO1RVRedirect.decode(body).to1d)).encode()


# TO2 60-64 ----------------------------------------------------------------------------


def to2_hello_guid(k: Keys, body: bytes) -> bytes:
    return flip_in(body, TO2HelloDevice.decode(body).guid.value)


def to2_hello_nonce(k: Keys, body: bytes) -> bytes:
    return flip_in(body, TO2HelloDevice.decode(body).nonce.value)


def to2_hello_truncated(k: Keys, body: bytes) -> bytes:
    return codec.encode(codec.as_list(codec.decode(body), "TO2.HelloDevice")[:5])


def to2_prove_ov_signature(k: Keys, body: bytes) -> bytes:
    return TO2ProveOVHdr(token=flip_signature(TO2ProveOVHdr.decode(body).token)).encode()


def to2_prove_ov_cuph_nonce(k: Keys, body: bytes) -> bytes:
    # The unprotected header is not signed: the owner's check of 64 catches it.
    return flip_in(body, TO2ProveOVHdr.decode(body).cuph_nonce.value)


def _to2_prove_ov(
    change: Callable[[ProveOVHdrPayload], ProveOVHdrPayload], *, signer: str = "owner"
) -> Callable[[Keys, bytes], bytes]:
    """Change the 61 payload and re-sign it (with the owner key, or with ``other`` as CUPHOwnerPubKey)."""

    def tamper(k: Keys, body: bytes) -> bytes:
        msg = TO2ProveOVHdr.decode(body)
        key = k.owner["ec256"] if signer == "owner" else k.other
        return TO2ProveOVHdr.sign(
            key,
            change(msg.payload()),
            nonce=msg.cuph_nonce,
            owner_pubkey=PublicKey.from_key(key.public_key()),
        ).encode()

    return tamper


def _flip_hash(h: Hash) -> Hash:
    return Hash(h.alg, flip(h.value))


to2_prove_ov_nonce = _to2_prove_ov(lambda p: dataclasses.replace(p, nonce=Nonce(flip(p.nonce.value))))
to2_prove_ov_hello_hash = _to2_prove_ov(
    lambda p: dataclasses.replace(p, hello_device_hash=_flip_hash(p.hello_device_hash))
)
to2_prove_ov_hmac = _to2_prove_ov(lambda p: dataclasses.replace(p, hmac=_flip_hash(p.hmac)))
to2_prove_ov_guid = _to2_prove_ov(
    lambda p: dataclasses.replace(
        p, ov_header=flip_in(p.ov_header, OVHeader.from_bytes(p.ov_header).guid.value)
    )
)
# Last byte of xA is OwnerRandom: the point stays valid, the session keys differ.
to2_prove_ov_xa = _to2_prove_ov(lambda p: dataclasses.replace(p, xa_key_exchange=flip(p.xa_key_exchange)))
to2_prove_ov_swapped_key = _to2_prove_ov(lambda p: p, signer="other")


def to2_get_entry_num(k: Keys, body: bytes) -> bytes:
    msg = TO2GetOVNextEntry.decode(body)
    return TO2GetOVNextEntry(entry_num=msg.entry_num ^ 1).encode()


def to2_entry_signature(k: Keys, body: bytes) -> bytes:
    msg = TO2OVNextEntry.decode(body)
    entry = flip_signature(msg.entry_token()).encode()
    return TO2OVNextEntry(entry_num=msg.entry_num, entry=entry).encode()


def to2_entry_num(k: Keys, body: bytes) -> bytes:
    msg = TO2OVNextEntry.decode(body)
    return TO2OVNextEntry(entry_num=msg.entry_num ^ 1, entry=msg.entry).encode()


def to2_eat_signature(k: Keys, body: bytes) -> bytes:
    return TO2ProveDevice(token=flip_signature(TO2ProveDevice.decode(body).token)).encode()


def to2_eat_setup_nonce(k: Keys, body: bytes) -> bytes:
    # EUPHNonce is unprotected: the owner echoes it in 65 and the device catches it.
    return flip_in(body, TO2ProveDevice.decode(body).setup_nonce.value)


def _to2_eat(*, nonce: bool = False, guid: bool = False, xb: bool = False) -> Callable[[Keys, bytes], bytes]:
    """Change one EAT field of 64 and re-sign it with the device key (resigned)."""

    def tamper(k: Keys, body: bytes) -> bytes:
        msg = TO2ProveDevice.decode(body)
        claims = msg.eat()
        return TO2ProveDevice.sign(
            k.device["ec256"],
            nonce=Nonce(flip(claims.nonce.value)) if nonce else claims.nonce,
            guid=Guid(flip(claims.guid().value)) if guid else claims.guid(),
            xb_key_exchange=flip(msg.xb_key_exchange) if xb else msg.xb_key_exchange,
            setup_nonce=msg.setup_nonce,
        ).encode()

    return tamper


def to2_encrypted(k: Keys, body: bytes) -> bytes:
    return flip_ciphertext(body)


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    msg_type: MsgType  # the message tampered with (its first occurrence)
    tamper: Callable[[Keys, bytes], bytes]
    phase: str  # where it must be caught ...
    side: str  # ... by whom ...
    caught_at: MsgType  # ... while handling which message
    code: ErrorCode
    error: type[FdoError]
    kind: str = "ec256"


M = MsgType
E = ErrorCode
C = "client"
S = "server"
CASES = [
    # DI: the manufacturer checks the CSR; the header and its HMAC only the device, later.
    Case("DI10-csr-signature", M.DI_APP_START, di_csr_signature, "DI", S, M.DI_APP_START,
         E.INVALID_MESSAGE_ERROR, SignatureError),
    # A serial number with a NUL (PostgreSQL cannot store it) or over 255 characters.
    Case("DI10-serial-nul", M.DI_APP_START, _di_serial("SN\x00-1"), "DI", S, M.DI_APP_START,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("DI10-serial-long", M.DI_APP_START, _di_serial("S" * 256), "DI", S, M.DI_APP_START,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("DI11-ovheader-guid", M.DI_SET_CREDENTIALS, di_header_guid, "TO1", S, M.TO1_HELLO_RV,
         E.RESOURCE_NOT_FOUND, ResourceNotFoundError),
    Case("DI12-ovheader-hmac", M.DI_SET_HMAC, di_header_hmac, "TO2", C, M.TO2_PROVE_OV_HDR,
         E.INVALID_MESSAGE_ERROR, HashMismatchError),
    # TO0
    Case("TO0-21-nonce", M.TO0_HELLO_ACK, to0_ack_nonce, "TO0", S, M.TO0_OWNER_SIGN,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    Case("TO0-22-to0d-nonce", M.TO0_OWNER_SIGN, to0_to0d_nonce, "TO0", S, M.TO0_OWNER_SIGN,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    Case("TO0-22-to1d-to0d-hash", M.TO0_OWNER_SIGN, to0_to0d_hash, "TO0", S, M.TO0_OWNER_SIGN,
         E.INVALID_MESSAGE_ERROR, HashMismatchError),
    Case("TO0-22-to1d-signature", M.TO0_OWNER_SIGN, to0_to1d_signature, "TO0", S, M.TO0_OWNER_SIGN,
         E.INVALID_OWNER_SIGN_BODY, InvalidOwnerSignBodyError),
    Case("TO0-22-voucher-certificate", M.TO0_OWNER_SIGN, to0_voucher_cert, "TO0", S, M.TO0_OWNER_SIGN,
         E.INVALID_OWNERSHIP_VOUCHER, InvalidVoucherError),
    Case("TO0-22-voucher-guid", M.TO0_OWNER_SIGN, to0_voucher_guid, "TO0", S, M.TO0_OWNER_SIGN,
         E.INVALID_OWNERSHIP_VOUCHER, InvalidVoucherError),
    Case("TO0-22-voucher-entry-signature", M.TO0_OWNER_SIGN, to0_voucher_entry_signature, "TO0", S,
         M.TO0_OWNER_SIGN, E.INVALID_OWNERSHIP_VOUCHER, InvalidVoucherError),
    Case("TO0-22-structure", M.TO0_OWNER_SIGN, to0_truncated, "TO0", S, M.TO0_OWNER_SIGN,
         E.MESSAGE_BODY_ERROR, MessageBodyError),
    # TO1
    Case("TO1-30-guid", M.TO1_HELLO_RV, to1_hello_guid, "TO1", S, M.TO1_HELLO_RV,
         E.RESOURCE_NOT_FOUND, ResourceNotFoundError),
    Case("TO1-31-nonce", M.TO1_HELLO_RV_ACK, to1_ack_nonce, "TO1", S, M.TO1_PROVE_TO_RV,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    Case("TO1-32-eat-nonce-resigned", M.TO1_PROVE_TO_RV, to1_eat_nonce, "TO1", S, M.TO1_PROVE_TO_RV,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    Case("TO1-32-eat-ueid-resigned", M.TO1_PROVE_TO_RV, to1_eat_ueid, "TO1", S, M.TO1_PROVE_TO_RV,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO1-32-eat-signature", M.TO1_PROVE_TO_RV, to1_eat_signature, "TO1", S, M.TO1_PROVE_TO_RV,
         E.INVALID_MESSAGE_ERROR, SignatureError),
    # The device cannot check to1d in TO1 (it does not know the owner key yet): TO2 does.
    Case("TO1-33-to1d-signature", M.TO1_RV_REDIRECT, to1_to1d_signature, "TO2", C, M.TO2_OV_NEXT_ENTRY,
         E.INVALID_MESSAGE_ERROR, SignatureError),
    # TO2 60
    Case("TO2-60-guid", M.TO2_HELLO_DEVICE, to2_hello_guid, "TO2", S, M.TO2_HELLO_DEVICE,
         E.RESOURCE_NOT_FOUND, ResourceNotFoundError),
    Case("TO2-60-nonce", M.TO2_HELLO_DEVICE, to2_hello_nonce, "TO2", C, M.TO2_PROVE_OV_HDR,
         E.INVALID_MESSAGE_ERROR, HashMismatchError),  # helloDeviceHash covers what was sent
    Case("TO2-60-structure", M.TO2_HELLO_DEVICE, to2_hello_truncated, "TO2", S, M.TO2_HELLO_DEVICE,
         E.MESSAGE_BODY_ERROR, MessageBodyError),
    # TO2 61
    Case("TO2-61-signature", M.TO2_PROVE_OV_HDR, to2_prove_ov_signature, "TO2", C, M.TO2_PROVE_OV_HDR,
         E.INVALID_MESSAGE_ERROR, SignatureError),
    Case("TO2-61-signature-rsa2048", M.TO2_PROVE_OV_HDR, to2_prove_ov_signature, "TO2", C,
         M.TO2_PROVE_OV_HDR, E.INVALID_MESSAGE_ERROR, SignatureError, kind="rsa2048"),
    Case("TO2-61-nonce-resigned", M.TO2_PROVE_OV_HDR, to2_prove_ov_nonce, "TO2", C, M.TO2_PROVE_OV_HDR,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    Case("TO2-61-hello-hash-resigned", M.TO2_PROVE_OV_HDR, to2_prove_ov_hello_hash, "TO2", C,
         M.TO2_PROVE_OV_HDR, E.INVALID_MESSAGE_ERROR, HashMismatchError),
    Case("TO2-61-ovheader-hmac-resigned", M.TO2_PROVE_OV_HDR, to2_prove_ov_hmac, "TO2", C,
         M.TO2_PROVE_OV_HDR, E.INVALID_MESSAGE_ERROR, HashMismatchError),
    Case("TO2-61-ovheader-guid-resigned", M.TO2_PROVE_OV_HDR, to2_prove_ov_guid, "TO2", C,
         M.TO2_PROVE_OV_HDR, E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO2-61-xa-resigned", M.TO2_PROVE_OV_HDR, to2_prove_ov_xa, "TO2", C, M.TO2_SETUP_DEVICE,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO2-61-cuph-nonce", M.TO2_PROVE_OV_HDR, to2_prove_ov_cuph_nonce, "TO2", S, M.TO2_PROVE_DEVICE,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    # Re-signed by another key named as CUPHOwnerPubKey: the voucher chain does not end there.
    Case("TO2-61-owner-key-swapped", M.TO2_PROVE_OV_HDR, to2_prove_ov_swapped_key, "TO2", C,
         M.TO2_OV_NEXT_ENTRY, E.INVALID_MESSAGE_ERROR, SignatureError),
    # TO2 62, 63
    Case("TO2-62-entry-num", M.TO2_GET_OV_NEXT_ENTRY, to2_get_entry_num, "TO2", S, M.TO2_GET_OV_NEXT_ENTRY,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO2-63-entry-num", M.TO2_OV_NEXT_ENTRY, to2_entry_num, "TO2", C, M.TO2_OV_NEXT_ENTRY,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO2-63-entry-signature", M.TO2_OV_NEXT_ENTRY, to2_entry_signature, "TO2", C, M.TO2_OV_NEXT_ENTRY,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    # TO2 64
    Case("TO2-64-signature", M.TO2_PROVE_DEVICE, to2_eat_signature, "TO2", S, M.TO2_PROVE_DEVICE,
         E.INVALID_MESSAGE_ERROR, SignatureError),
    Case("TO2-64-signature-rsa2048", M.TO2_PROVE_DEVICE, to2_eat_signature, "TO2", S, M.TO2_PROVE_DEVICE,
         E.INVALID_MESSAGE_ERROR, SignatureError, kind="rsa2048"),
    Case("TO2-64-nonce-resigned", M.TO2_PROVE_DEVICE, _to2_eat(nonce=True), "TO2", S, M.TO2_PROVE_DEVICE,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    Case("TO2-64-ueid-guid-resigned", M.TO2_PROVE_DEVICE, _to2_eat(guid=True), "TO2", S,
         M.TO2_PROVE_DEVICE, E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO2-64-xb-resigned", M.TO2_PROVE_DEVICE, _to2_eat(xb=True), "TO2", C, M.TO2_SETUP_DEVICE,
         E.INVALID_MESSAGE_ERROR, InvalidMessageError),
    Case("TO2-64-euph-setup-nonce", M.TO2_PROVE_DEVICE, to2_eat_setup_nonce, "TO2", C, M.TO2_SETUP_DEVICE,
         E.INVALID_MESSAGE_ERROR, NonceMismatchError),
    # TO2 65-71: the encrypted envelope.
    *(
        Case(f"TO2-{int(t)}-ciphertext", t, to2_encrypted, "TO2", side, t,
             E.INVALID_MESSAGE_ERROR, InvalidMessageError)
        for t, side in (
            (M.TO2_SETUP_DEVICE, C),
            (M.TO2_DEVICE_SERVICE_INFO_READY, S),
            (M.TO2_OWNER_SERVICE_INFO_READY, C),
            (M.TO2_DEVICE_SERVICE_INFO, S),
            (M.TO2_OWNER_SERVICE_INFO, C),
            (M.TO2_DONE, S),
            (M.TO2_DONE2, C),
        )
    ),
]  # fmt: skip


def once(msg_type: int, tamper: Callable[[bytes], bytes], fired: list[int]) -> Hook:
    """A hook that tampers with the first ``msg_type`` message only and counts it."""

    def hook(t: int, body: bytes) -> bytes:
        if t != msg_type or fired:
            return body
        fired.append(t)
        tampered = tamper(body)
        assert tampered != body
        return tampered

    return hook


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_untampered_run_succeeds(keys: Keys, kind: str) -> None:
    """The control: the same run with a hook that changes nothing onboards the device."""
    seen: list[int] = []

    def hook(t: int, body: bytes) -> bytes:
        seen.append(t)
        return body

    credential = onboard(keys, kind, hook)
    assert credential.hmac_secret
    # Every message type the table tampers with went through the hook.
    assert {int(c.msg_type) for c in CASES} <= set(seen)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tampered_message_is_refused(keys: Keys, case: Case) -> None:
    fired: list[int] = []
    hook = once(case.msg_type, lambda body: case.tamper(keys, body), fired)
    with pytest.raises(PhaseFailed) as info:
        onboard(keys, case.kind, hook)
    failure = info.value.failure
    assert fired == [case.msg_type]
    assert (failure.phase, failure.side, failure.msg_type) == (case.phase, case.side, case.caught_at), (
        failure.error
    )
    assert failure.error.code == case.code, failure.error
    assert type(failure.error) is case.error, failure.error
    assert failure.machine.failed


# ---------------------------------------------------------------------------- replay / order


@dataclass
class Step:
    msg_type: int
    body: bytes
    state: bytes | None  # the server's state before it handled this message (None: new session)


@dataclass
class Transcript:
    steps: list[Step]
    final: bytes
    last: ServerMachine[Any]  # the machine that handled the last message
    new_server: Callable[[], ServerMachine[Any]]
    restore: Callable[[bytes], ServerMachine[Any]]

    def first(self, msg_type: int) -> Step:
        return next(s for s in self.steps if s.msg_type == msg_type)

    def server(self, state: bytes | None) -> ServerMachine[Any]:
        return self.new_server() if state is None else self.restore(state)


def record(
    client: ClientMachine[Any],
    new_server: Callable[[], ServerMachine[Any]],
    restore: Callable[[bytes], ServerMachine[Any]],
) -> Transcript:
    steps: list[Step] = []
    state: bytes | None = None
    server = new_server()
    msg: Reply | None = client.start()
    while msg is not None:
        steps.append(Step(msg[0], msg[1], state))
        server = new_server() if state is None else restore(state)
        reply = server.handle(*msg)
        state = server.to_state()
        msg = client.receive(*reply)
    assert client.done and state is not None
    return Transcript(steps, state, server, new_server, restore)


@dataclass
class World:
    credential: DeviceCredential
    to0: Transcript
    to1: Transcript
    to2: Transcript

    def __getitem__(self, protocol: str) -> Transcript:
        return {"TO0": self.to0, "TO1": self.to1, "TO2": self.to2}[protocol]


def transcripts(keys: Keys) -> World:
    mfr = make_manufacturer(keys.mfr)
    di_device = DIDevice(key=keys.device["ec256"], serial="SN-0001", model="kiosk-v2")
    di = pair(
        "DI",
        di_device,
        lambda: DIManufacturer(mfr, now=NOW),
        lambda s: DIManufacturer.from_state(s, mfr, now=NOW),
        lambda t, b: b,
    )
    assert isinstance(di, DIManufacturer) and di.voucher is not None and di_device.credential is not None
    credential = di_device.credential
    owner_key = keys.owner["ec256"]
    voucher = di.voucher.extend(keys.mfr["ec256"], PublicKey.from_key(owner_key.public_key()))
    rv = Rendezvous()
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    to0 = record(
        TO0Owner(voucher=voucher, owner_key=owner_key, rv_to2_addr=addr, wait_seconds=3600),
        lambda: TO0Rendezvous(rv),
        lambda s: TO0Rendezvous.from_state(s, rv),
    )
    assert isinstance(to0.last, TO0Rendezvous) and to0.last.registration is not None
    rv.registrations[to0.last.registration.guid] = to0.last.registration
    to1_device = TO1Device(credential)
    to1 = record(to1_device, lambda: TO1Rendezvous(rv), lambda s: TO1Rendezvous.from_state(s, rv))
    owner = Owner(keys={"ec256": owner_key}, vouchers={voucher.guid: voucher})
    to2 = record(
        TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=to1_device.to1d),
        lambda: TO2Owner(owner),
        lambda s: TO2Owner.from_state(s, owner),
    )
    return World(credential, to0, to1, to2)


# (protocol, resume at the state before this message (None: after the last), send this one)
ORDER_CASES = [
    ("replay-TO0-22-after-done", "TO0", None, MsgType.TO0_OWNER_SIGN),
    ("replay-TO1-32-after-done", "TO1", None, MsgType.TO1_PROVE_TO_RV),
    ("replay-TO2-60-mid-session", "TO2", MsgType.TO2_GET_OV_NEXT_ENTRY, MsgType.TO2_HELLO_DEVICE),
    ("replay-TO2-62-after-64", "TO2", MsgType.TO2_DEVICE_SERVICE_INFO_READY, MsgType.TO2_GET_OV_NEXT_ENTRY),
    ("replay-TO2-64-after-66", "TO2", MsgType.TO2_DEVICE_SERVICE_INFO, MsgType.TO2_PROVE_DEVICE),
    ("replay-TO2-70-after-done", "TO2", None, MsgType.TO2_DONE),
    ("order-TO2-64-before-60", "TO2", MsgType.TO2_HELLO_DEVICE, MsgType.TO2_PROVE_DEVICE),
    ("order-TO2-66-before-64", "TO2", MsgType.TO2_GET_OV_NEXT_ENTRY, MsgType.TO2_DEVICE_SERVICE_INFO_READY),
    ("order-TO2-70-before-68", "TO2", MsgType.TO2_DEVICE_SERVICE_INFO, MsgType.TO2_DONE),
    ("order-TO1-32-before-30", "TO1", MsgType.TO1_HELLO_RV, MsgType.TO1_PROVE_TO_RV),
]


@pytest.mark.parametrize(
    ("protocol", "at", "send"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_replayed_or_out_of_order_message_fails_for_good(
    keys: Keys, protocol: str, at: MsgType | None, send: MsgType
) -> None:
    t = transcripts(keys)[protocol]
    state = t.final if at is None else t.first(at).state
    follow_up = None if at is None else t.first(at)

    # Control: resumed here, the session takes the message that really came next.
    if follow_up is not None:
        t.server(state).handle(follow_up.msg_type, follow_up.body)
    else:
        assert t.server(state).done

    server = t.server(state)
    with pytest.raises(UnexpectedMessageError) as info:
        server.handle(send, t.first(send).body)
    assert info.value.code == ErrorCode.MESSAGE_BODY_ERROR
    assert server.failed

    # The ERROR state is stored with the session and stays: nothing moves it on again.
    for msg in [m for m in (follow_up, t.first(send)) if m is not None]:
        again = t.restore(server.to_state())
        assert again.failed
        with pytest.raises(UnexpectedMessageError):
            again.handle(msg.msg_type, msg.body)
        assert again.failed


def test_device_refuses_out_of_order_reply_for_good(keys: Keys) -> None:
    """The device waiting for 61 gets 63 first; the genuine 61 after it fails too."""
    world = transcripts(keys)
    t = world.to2

    def device() -> TO2Device:
        return TO2Device(world.credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None)

    # Control: a session of the same credential takes its own 61 and asks for entry 0.
    control = device()
    reply = control.receive(*t.server(None).handle(*control.start()))
    assert reply is not None and reply[0] == MsgType.TO2_GET_OV_NEXT_ENTRY

    session = device()
    prove_ov = t.server(None).handle(*session.start())
    get_entry = t.first(MsgType.TO2_GET_OV_NEXT_ENTRY)
    entry = t.server(get_entry.state).handle(get_entry.msg_type, get_entry.body)
    with pytest.raises(UnexpectedMessageError) as info:
        session.receive(*entry)
    assert info.value.code == ErrorCode.MESSAGE_BODY_ERROR
    assert session.failed
    with pytest.raises(UnexpectedMessageError):
        session.receive(*prove_ov)
    assert session.failed
