"""TO2, device side (spec §5.5): prove the owner, onboard, take the new credential.

Checks after TO2.ProveOVHdr follow go-fdo's order (reference §5.3): helloDeviceHash over
the HelloDevice bytes we sent; the 61 signature with CUPHOwnerPubKey; NonceTO2ProveOV;
then, with every entry fetched, the header HMAC with our secret, DCPubKeyHash, each
entry's signature and hashes, CUPHOwnerPubKey equal to the last entry's key, and the
to1d signature with that key (unless the rendezvous was bypassed). From 65 on every
message is encrypted with the session keys from the key exchange.

After Done2, :attr:`TO2Device.new_credential` holds the replacement credential (new
GUID, rendezvous info and owner key hash; same HMAC secret and device key), or the old
one unchanged when the owner asked for credential reuse and the device allows it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from enum import Enum, auto

from cryptography.hazmat.primitives.asymmetric import rsa

from fdo.cose import CUPH_NONCE, CUPH_OWNER_PUBKEY, EUPH_NONCE, CoseSign1, EatPayload, make_eat
from fdo.credential import DeviceCredential
from fdo.crypto import PublicKey, default_pk_type, hash_alg_for, key_kind, sg_type_for
from fdo.errors import (
    CredReuseError,
    HashMismatchError,
    InvalidMessageError,
    InvalidVoucherError,
    MessageBodyError,
    NonceMismatchError,
    SignatureError,
)
from fdo.kex import CipherSuite, KexSuite, SessionCrypto, device_kex
from fdo.machine import ClientMachine, Reply
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to0.messages import To1dPayload
from fdo.to2.common import unwrap_plaintext
from fdo.to2.messages import (
    ProveOVHdrPayload,
    SetupDevicePayload,
    TO2DeviceServiceInfo,
    TO2DeviceServiceInfoReady,
    TO2Done,
    TO2Done2,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OVNextEntry,
    TO2OwnerServiceInfo,
    TO2OwnerServiceInfoReady,
    TO2ProveDevice,
    TO2ProveOVHdr,
    TO2SetupDevice,
)
from fdo.types import Hash, MsgType, Nonce, Rand, SigInfo
from fdo.voucher import OVEntry, OVHeader, replacement_header, verify_entry

#: Largest OwnerServiceInfo the device accepts (the spec default).
DEFAULT_SERVICE_INFO_MTU = 1300
#: Most rounds of ServiceInfo before the device gives up (go stops at 10^6, rs at 1000).
MAX_SERVICE_INFO_ROUNDS = 100_000


_KEX_FOR_KIND = {
    "ec256": KexSuite.ECDH256,
    "ec384": KexSuite.ECDH384,
    "rsa2048": KexSuite.DHKEXid14,
    "rsa3072": KexSuite.DHKEXid15,
}


def default_kex_suite(credential: DeviceCredential) -> KexSuite:
    """The suite that fits the device key (the owner key has the same kind)."""
    return _KEX_FOR_KIND[key_kind(credential.private_key)]


class TO2DeviceState(Enum):
    START = auto()
    WAIT_PROVE_OV_HDR = auto()
    WAIT_OV_NEXT_ENTRY = auto()
    WAIT_SETUP_DEVICE = auto()
    WAIT_OWNER_SI_READY = auto()
    WAIT_OWNER_SI = auto()
    WAIT_DONE2 = auto()
    DONE = auto()
    ERROR = auto()


class TO2Device(ClientMachine[TO2DeviceState]):
    """Runs TO2 for one device credential."""

    ACCEPTS = {
        TO2DeviceState.WAIT_PROVE_OV_HDR: frozenset({MsgType.TO2_PROVE_OV_HDR}),
        TO2DeviceState.WAIT_OV_NEXT_ENTRY: frozenset({MsgType.TO2_OV_NEXT_ENTRY}),
        TO2DeviceState.WAIT_SETUP_DEVICE: frozenset({MsgType.TO2_SETUP_DEVICE}),
        TO2DeviceState.WAIT_OWNER_SI_READY: frozenset({MsgType.TO2_OWNER_SERVICE_INFO_READY}),
        TO2DeviceState.WAIT_OWNER_SI: frozenset({MsgType.TO2_OWNER_SERVICE_INFO}),
        TO2DeviceState.WAIT_DONE2: frozenset({MsgType.TO2_DONE2}),
    }
    ERROR_STATE = TO2DeviceState.ERROR

    def __init__(
        self,
        credential: DeviceCredential,
        *,
        service_info: DeviceServiceInfoDriver,
        to1d: CoseSign1 | None,
        kex_suite: KexSuite | None = None,
        cipher: CipherSuite = CipherSuite.A128GCM,
        allow_credential_reuse: bool = True,
        max_owner_service_info_size: int = DEFAULT_SERVICE_INFO_MTU,
        rand: Rand = os.urandom,
    ) -> None:
        self.credential = credential
        self.service_info = service_info
        self.to1d = to1d
        self.kex_suite = kex_suite or default_kex_suite(credential)
        self.cipher = cipher
        self.allow_credential_reuse = allow_credential_reuse
        self.max_owner_service_info_size = max_owner_service_info_size
        self.rand = rand
        device_key = credential.private_key.public_key()
        self.pk_type = default_pk_type(device_key)
        self.sig_info = SigInfo(sg_type_for(device_key, self.pk_type))
        self.state = TO2DeviceState.START
        # Filled as the protocol runs.
        self._hello: bytes = b""
        self._nonce_prove_ov = Nonce.new(rand)
        self._nonce_setup_dv = Nonce.new(rand)
        self._nonce_prove_dv: Nonce | None = None
        self._header: OVHeader | None = None
        self._ov_payload: ProveOVHdrPayload | None = None
        self._owner_key: PublicKey | None = None
        self._entry_key: PublicKey | None = None
        self._entries: list[OVEntry] = []
        self._session: SessionCrypto | None = None
        self._setup: SetupDevicePayload | None = None
        self._reuse = False
        self._rounds = 0
        self.new_credential: DeviceCredential | None = None

    # ------------------------------------------------------------------ helpers

    def _encrypt(self, msg_type: MsgType, plaintext: bytes) -> Reply:
        assert self._session is not None
        return msg_type, self._session.encrypt(plaintext, rand=self.rand)

    def _decrypt(self, body: bytes) -> bytes:
        assert self._session is not None
        return unwrap_plaintext(self._session.decrypt(body))

    @property
    def reused(self) -> bool:
        """True when TO2 ended in credential reuse."""
        return self._reuse

    # ------------------------------------------------------------------ protocol

    def start(self) -> Reply:
        hello = TO2HelloDevice(
            max_device_message_size=65535,
            guid=self.credential.guid,
            nonce=self._nonce_prove_ov,
            kex_suite=str(self.kex_suite),
            cipher_suite=int(self.cipher),
            ea_sig_info=self.sig_info,
        )
        self._hello = hello.encode()
        self.state = TO2DeviceState.WAIT_PROVE_OV_HDR
        return MsgType.TO2_HELLO_DEVICE, self._hello

    def _receive(self, msg_type: MsgType, body: bytes) -> Reply | None:
        if msg_type == MsgType.TO2_PROVE_OV_HDR:
            return self._prove_ov_hdr(TO2ProveOVHdr.decode(body))
        if msg_type == MsgType.TO2_OV_NEXT_ENTRY:
            return self._ov_next_entry(TO2OVNextEntry.decode(body))
        plaintext = self._decrypt(body)
        if msg_type == MsgType.TO2_SETUP_DEVICE:
            return self._setup_device(TO2SetupDevice.decode(plaintext))
        if msg_type == MsgType.TO2_OWNER_SERVICE_INFO_READY:
            ready = TO2OwnerServiceInfoReady.decode(plaintext)
            self.service_info.set_mtu(ready.max_device_service_info_size or DEFAULT_SERVICE_INFO_MTU)
            return self._send_service_info()
        if msg_type == MsgType.TO2_OWNER_SERVICE_INFO:
            return self._owner_service_info(TO2OwnerServiceInfo.decode(plaintext))
        return self._done2(TO2Done2.decode(plaintext))

    def _prove_ov_hdr(self, msg: TO2ProveOVHdr) -> Reply:
        token = msg.token
        payload = ProveOVHdrPayload.from_bytes(token.payload)
        payload.hello_device_hash.verify(self._hello, "TO2.ProveOVHdr helloDeviceHash")
        owner_key_obj = token.unprotected.get(CUPH_OWNER_PUBKEY)
        if owner_key_obj is None:
            raise MessageBodyError("TO2.ProveOVHdr: CUPHOwnerPubKey missing")
        owner_key = PublicKey.from_cbor_obj(owner_key_obj, "CUPHOwnerPubKey")
        token.verify(owner_key.key, "TO2.ProveOVHdr")
        if payload.nonce != self._nonce_prove_ov:
            raise NonceMismatchError("TO2.ProveOVHdr: NonceTO2ProveOV does not match")
        nonce_obj = token.unprotected.get(CUPH_NONCE)
        if nonce_obj is None:
            raise MessageBodyError("TO2.ProveOVHdr: CUPHNonce missing")
        self._nonce_prove_dv = Nonce.from_cbor_obj(nonce_obj)
        if payload.eb_sig_info.sg_type != self.sig_info.sg_type:
            raise InvalidMessageError("TO2.ProveOVHdr: eBSigInfo does not echo eASigInfo")
        header = OVHeader.from_bytes(payload.ov_header)
        if header.guid != self.credential.guid:
            raise InvalidMessageError("TO2.ProveOVHdr: voucher is for another device")
        # §4.4 step 2: only the device can check these.
        payload.hmac.verify_hmac(self.credential.hmac_secret, payload.ov_header, "OVHeaderHMac")
        if (
            self.credential.pubkey_hash.value
            != Hash.compute(self.credential.pubkey_hash.alg, header.public_key_bytes).value
        ):
            raise HashMismatchError("OVPubKey does not match the credential's DCPubKeyHash")
        if not 1 <= payload.num_ov_entries <= 255:
            raise InvalidMessageError("TO2.ProveOVHdr: voucher must have 1 to 255 entries")
        self._header, self._ov_payload, self._owner_key = header, payload, owner_key
        self._entry_key = header.public_key
        self.state = TO2DeviceState.WAIT_OV_NEXT_ENTRY
        return MsgType.TO2_GET_OV_NEXT_ENTRY, TO2GetOVNextEntry(entry_num=0).encode()

    def _ov_next_entry(self, msg: TO2OVNextEntry) -> Reply:
        assert self._header is not None and self._ov_payload is not None and self._entry_key is not None
        index = len(self._entries)
        if msg.entry_num != index:
            raise InvalidMessageError(f"TO2.OVNextEntry: asked for entry {index}, got {msg.entry_num}")
        prev = self._entries[-1] if self._entries else None
        try:
            entry = verify_entry(
                msg.entry,
                index=index,
                header=self._header,
                header_hmac=self._ov_payload.hmac,
                previous=prev,
                signer=self._entry_key,
                hash_alg=self._entries[0].payload.prev_hash.alg if self._entries else None,
            )
        except InvalidVoucherError as exc:
            # The device answers every failed check of the owner's proof with 101 (§5.3).
            raise InvalidMessageError(f"voucher check {exc.check} failed: {exc.message}") from None
        self._entries.append(entry)
        self._entry_key = entry.payload.public_key
        if len(self._entries) < self._ov_payload.num_ov_entries:
            return MsgType.TO2_GET_OV_NEXT_ENTRY, TO2GetOVNextEntry(entry_num=index + 1).encode()
        return self._prove_device()

    def _prove_device(self) -> Reply:
        assert self._owner_key is not None and self._ov_payload is not None
        assert self._nonce_prove_dv is not None and self._entry_key is not None
        if not self._owner_key.same_key(self._entry_key):
            raise SignatureError("CUPHOwnerPubKey is not the voucher's final owner key")
        if self.to1d is not None:
            self.to1d.verify(self._owner_key.key, "to1d")
            To1dPayload.from_bytes(self.to1d.payload)
        owner_key = self._owner_key.key  # ASYMKEX encrypts to it; the other suites ignore it
        xb, self._session = device_kex(
            KexSuite(self.kex_suite),
            self._ov_payload.xa_key_exchange,
            self.cipher,
            owner_public_key=owner_key if isinstance(owner_key, rsa.RSAPublicKey) else None,
            rand=self.rand,
        )
        eat = make_eat(
            self.credential.private_key,
            EatPayload(nonce=self._nonce_prove_dv, ueid=self.credential.guid.ueid, fdo=[xb]),
            unprotected={EUPH_NONCE: self._nonce_setup_dv.value},
            pk_type=self.pk_type,
        )
        self.state = TO2DeviceState.WAIT_SETUP_DEVICE
        return MsgType.TO2_PROVE_DEVICE, TO2ProveDevice(token=eat).encode()

    def _setup_device(self, msg: TO2SetupDevice) -> Reply:
        assert self._header is not None and self._owner_key is not None
        setup = SetupDevicePayload.from_bytes(msg.token.payload)
        msg.token.verify(setup.owner2_key.key, "TO2.SetupDevice")
        if setup.nonce != self._nonce_setup_dv:
            raise NonceMismatchError("TO2.SetupDevice: NonceTO2SetupDv does not match")
        self._setup = setup
        reuse = (
            setup.guid == self.credential.guid
            and setup.rv_info_raw == self.credential.rv_info.encode()
            and setup.owner2_key.same_key(self._owner_key)
        )
        hmac: Hash | None
        if reuse:
            if not self.allow_credential_reuse:
                raise CredReuseError("this device does not allow credential reuse")
            self._reuse = True
            hmac = None
        else:
            new_header = replacement_header(
                self._header,
                guid=setup.guid,
                rv_info_raw=setup.rv_info_raw,
                owner2_key_raw=setup.owner2_key_raw,
            )
            alg = hash_alg_for(self.credential.private_key.public_key(), setup.owner2_key.key)
            hmac = Hash.hmac(alg.as_hmac, self.credential.hmac_secret, new_header.raw)
        ready = TO2DeviceServiceInfoReady(
            replacement_hmac=hmac, max_owner_service_info_size=self.max_owner_service_info_size
        )
        self.state = TO2DeviceState.WAIT_OWNER_SI_READY
        return self._encrypt(MsgType.TO2_DEVICE_SERVICE_INFO_READY, ready.encode())

    def _send_service_info(self) -> Reply:
        self._rounds += 1
        if self._rounds > MAX_SERVICE_INFO_ROUNDS:
            raise InvalidMessageError("too many ServiceInfo rounds")
        request = self.service_info.next_request()
        self.state = TO2DeviceState.WAIT_OWNER_SI
        msg = TO2DeviceServiceInfo(is_more=request.is_more, service_info=tuple(request.service_info))
        return self._encrypt(MsgType.TO2_DEVICE_SERVICE_INFO, msg.encode())

    def _owner_service_info(self, msg: TO2OwnerServiceInfo) -> Reply:
        assert self._nonce_prove_dv is not None
        if msg.is_done and msg.is_more:
            raise InvalidMessageError("TO2.OwnerServiceInfo: IsDone with IsMoreServiceInfo")
        self.service_info.handle_reply(msg.is_more, msg.is_done, msg.service_info)
        if msg.is_done:
            self.state = TO2DeviceState.WAIT_DONE2
            return self._encrypt(MsgType.TO2_DONE, TO2Done(nonce=self._nonce_prove_dv).encode())
        return self._send_service_info()

    def _done2(self, msg: TO2Done2) -> Reply | None:
        if msg.nonce != self._nonce_setup_dv:
            raise NonceMismatchError("TO2.Done2: NonceTO2SetupDv does not match")
        setup = self._setup
        assert setup is not None
        if self._reuse:
            self.new_credential = self.credential
        else:
            alg = hash_alg_for(self.credential.private_key.public_key(), setup.owner2_key.key)
            self.new_credential = replace(
                self.credential,
                guid=setup.guid,
                rv_info=setup.rv_info,
                pubkey_hash=Hash.compute(alg, setup.owner2_key_raw),
            )
        self.state = TO2DeviceState.DONE
        return None

    @property
    def done(self) -> bool:
        return self.state == TO2DeviceState.DONE
