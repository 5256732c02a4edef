"""TO2, owner side (spec §5.5): prove ownership, set up the device, run ServiceInfo.

One :class:`TO2Owner` serves one device session. Between requests it lives as bytes
(:meth:`TO2Owner.to_state`) in the owner service's database, so any worker or replica
can take the next message. What it needs from the service is :class:`TO2OwnerStore`.

Checks on 60 follow go-fdo (reference §5.3): unknown GUID or a voucher without entries
is ResourceNotFound (6); the device's signature type must fit OVPubKey's type; the key
exchange must suit the owner key. On 64 the device's EAT is checked against the
voucher's certificate chain leaf. After Done, :attr:`TO2Owner.new_voucher` holds the
replacement voucher (None on credential reuse) for the service to store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol, Self

from cryptography.hazmat.primitives.asymmetric import rsa

from fdo import codec
from fdo.codec import CborValue, Raw
from fdo.cose import CUPH_NONCE, CUPH_OWNER_PUBKEY, EUPH_NONCE, CoseSign1, read_eat
from fdo.crypto import SG_TYPE_PK_TYPES, PrivateKeyT, PublicKey, hash_alg_for
from fdo.errors import (
    FdoUsageError,
    InternalError,
    InvalidMessageError,
    MessageBodyError,
    NonceMismatchError,
    ResourceNotFoundError,
    UnsupportedError,
)
from fdo.kex import (
    CipherSuite,
    OwnerKex,
    SessionCrypto,
    parse_cipher_suite,
    parse_kex_suite,
    suite_allowed,
)
from fdo.machine import Reply, ServerMachine
from fdo.rvinfo import RendezvousInfo
from fdo.serviceinfo import Devmod, OwnerModule, OwnerServiceInfoDriver
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
from fdo.types import Guid, Hash, MsgType, Nonce, Rand
from fdo.voucher import OwnershipVoucher, replacement_header, replacement_voucher

#: Largest DeviceServiceInfo the owner accepts.
DEFAULT_SERVICE_INFO_MTU = 1300
SUPPORTED_CIPHERS = frozenset(CipherSuite)


@dataclass(frozen=True, slots=True)
class Replacement:
    """The credential the owner gives the device in TO2.SetupDevice.

    Credential reuse is a replacement equal to the current credential: same GUID,
    same rendezvous info, Owner2Key = the current owner key (spec §7).
    """

    guid: Guid
    rv_info: RendezvousInfo
    owner2_key: PublicKey
    #: Opaque to TO2: what the store based this replacement on (for the owner service,
    #: the voucher record as it was when the device proved itself). Kept in the session
    #: and handed back with the finished machine (:attr:`TO2Owner.replacement_basis`), so
    #: the service can refuse a TO2.Done whose basis another session changed meanwhile.
    basis: CborValue = None


class TO2OwnerStore(Protocol):
    """What TO2 needs from the owner service."""

    def voucher(self, guid: Guid) -> OwnershipVoucher | None:
        """The voucher the owner holds for ``guid``."""

    def private_key(self, public_key: PublicKey) -> PrivateKeyT | None:
        """The owner's private key for ``public_key``, if it holds it."""

    def replacement(self, voucher: OwnershipVoucher) -> Replacement:
        """The credential to give the device (new GUID, RV info, Owner2Key, or reuse).

        Called once per session, right after the device proved (TO2.ProveDevice) that it
        holds the credential of ``voucher``: the store may record that proof.
        """

    def owner_modules(self, guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
        """The ServiceInfo modules to run for this device, in order."""

    def restore_module(self, name: str, state: CborValue) -> OwnerModule:
        """Rebuild a module from what its ``to_state`` returned."""


class TO2State(Enum):
    WAIT_HELLO = auto()
    WAIT_ENTRY_OR_PROVE = auto()
    WAIT_SI_READY = auto()
    WAIT_DEVICE_SI = auto()
    WAIT_DONE = auto()
    DONE = auto()
    ERROR = auto()


class TO2Owner(ServerMachine[TO2State]):
    """One TO2 session on the owner server."""

    FIRST = MsgType.TO2_HELLO_DEVICE
    ACCEPTS = {
        TO2State.WAIT_HELLO: frozenset({MsgType.TO2_HELLO_DEVICE}),
        TO2State.WAIT_ENTRY_OR_PROVE: frozenset({MsgType.TO2_GET_OV_NEXT_ENTRY, MsgType.TO2_PROVE_DEVICE}),
        TO2State.WAIT_SI_READY: frozenset({MsgType.TO2_DEVICE_SERVICE_INFO_READY}),
        TO2State.WAIT_DEVICE_SI: frozenset({MsgType.TO2_DEVICE_SERVICE_INFO}),
        TO2State.WAIT_DONE: frozenset({MsgType.TO2_DONE}),
    }
    ERROR_STATE = TO2State.ERROR

    def __init__(
        self,
        store: TO2OwnerStore,
        *,
        rand: Rand = os.urandom,
        max_device_service_info_size: int = DEFAULT_SERVICE_INFO_MTU,
    ) -> None:
        if not 0 < max_device_service_info_size <= 0xFFFF:
            raise FdoUsageError("maxDeviceServiceInfoSz must be a uint16 above 0")
        self.store = store
        self.rand = rand
        #: maxDeviceServiceInfoSz announced in 67: the largest DeviceServiceInfo the
        #: owner accepts. A setting, not session state (read only when 67 is built).
        self.max_device_service_info_size = max_device_service_info_size
        self.state = TO2State.WAIT_HELLO
        self.guid: Guid | None = None
        self.cipher: CipherSuite | None = None
        self.num_entries = 0
        self.nonce_prove_dv: Nonce | None = None
        self.nonce_setup_dv: Nonce | None = None
        self.kex: OwnerKex | None = None
        self.session: SessionCrypto | None = None
        self.replacement_guid: Guid | None = None
        self.replacement_rv_raw: bytes | None = None
        self.replacement_key_raw: bytes | None = None
        self.replacement_basis: CborValue = None
        self.reuse = False
        self.replacement_hmac: Hash | None = None
        self.device_mtu = DEFAULT_SERVICE_INFO_MTU
        self.service_info: OwnerServiceInfoDriver | None = None
        self.devmod: Devmod | None = None
        self.new_voucher: OwnershipVoucher | None = None

    # ------------------------------------------------------------------ helpers

    def _voucher(self) -> OwnershipVoucher:
        assert self.guid is not None
        voucher = self.store.voucher(self.guid)
        if voucher is None:
            raise ResourceNotFoundError(f"no voucher for device {self.guid}")
        return voucher

    def _private_key(self, public_key: PublicKey) -> PrivateKeyT:
        key = self.store.private_key(public_key)
        if key is None:
            raise InternalError("the owner does not hold the private key for this voucher")
        return key

    def _encrypt(self, msg_type: MsgType, plaintext: bytes) -> Reply:
        assert self.session is not None
        return msg_type, self.session.encrypt(plaintext, rand=self.rand)

    def _handle(self, msg_type: MsgType, body: bytes) -> Reply:
        if msg_type == MsgType.TO2_HELLO_DEVICE:
            return self._hello_device(body)
        if msg_type == MsgType.TO2_GET_OV_NEXT_ENTRY:
            return self._get_entry(TO2GetOVNextEntry.decode(body))
        if msg_type == MsgType.TO2_PROVE_DEVICE:
            return self._prove_device(TO2ProveDevice.decode(body))
        assert self.session is not None
        plaintext = unwrap_plaintext(self.session.decrypt(body))
        if msg_type == MsgType.TO2_DEVICE_SERVICE_INFO_READY:
            return self._si_ready(TO2DeviceServiceInfoReady.decode(plaintext))
        if msg_type == MsgType.TO2_DEVICE_SERVICE_INFO:
            return self._device_si(TO2DeviceServiceInfo.decode(plaintext))
        return self._done(TO2Done.decode(plaintext))

    # ------------------------------------------------------------------ 60 -> 61

    def _hello_device(self, body: bytes) -> Reply:
        hello = TO2HelloDevice.decode(body)
        self.guid = hello.guid
        voucher = self._voucher()
        if not voucher.entries:
            raise ResourceNotFoundError("the voucher has not been extended to an owner")
        ov_key = voucher.header.public_key
        if ov_key.pk_type not in SG_TYPE_PK_TYPES.get(hello.ea_sig_info.sg_type, ()):
            raise InvalidMessageError(
                f"device signature type {hello.ea_sig_info.sg_type.name} does not fit "
                f"the voucher's key type {ov_key.pk_type.name}"
            )
        owner_pub = voucher.owner_public_key
        owner_priv = self._private_key(owner_pub)
        suite = parse_kex_suite(hello.kex_suite)
        cipher = parse_cipher_suite(hello.cipher_suite)
        key_bits = getattr(owner_pub.key, "key_size", 0)
        if not suite_allowed(suite, int(owner_pub.pk_type), key_bits):
            raise UnsupportedError(f"{suite} does not suit a {owner_pub} owner key")
        self.kex = OwnerKex.new(suite, rand=self.rand)
        self.cipher = cipher
        self.num_entries = len(voucher.entries)
        self.nonce_prove_dv = Nonce.new(self.rand)
        chain_hash = voucher.header.cert_chain_hash
        hello_alg = chain_hash.alg if chain_hash is not None else hash_alg_for(owner_pub.key, owner_pub.key)
        payload = ProveOVHdrPayload(
            ov_header=voucher.header.raw,
            num_ov_entries=self.num_entries,
            hmac=voucher.hmac,
            nonce=hello.nonce,
            eb_sig_info=hello.ea_sig_info,
            xa_key_exchange=self.kex.xa,
            hello_device_hash=Hash.compute(hello_alg, body),
            max_owner_message_size=65535,
        )
        token = CoseSign1.sign(
            owner_priv,
            payload.to_bytes(),
            unprotected={
                CUPH_NONCE: self.nonce_prove_dv.value,
                CUPH_OWNER_PUBKEY: owner_pub.to_cbor_obj(),
            },
            pk_type=owner_pub.pk_type,
        )
        self.state = TO2State.WAIT_ENTRY_OR_PROVE
        return MsgType.TO2_PROVE_OV_HDR, TO2ProveOVHdr(token=token).encode()

    # ------------------------------------------------------------------ 62 -> 63

    def _get_entry(self, msg: TO2GetOVNextEntry) -> Reply:
        if not 0 <= msg.entry_num < self.num_entries:
            raise InvalidMessageError(f"TO2.GetOVNextEntry: no entry {msg.entry_num}")
        entry = self._voucher().entries[msg.entry_num]
        return MsgType.TO2_OV_NEXT_ENTRY, TO2OVNextEntry(entry_num=msg.entry_num, entry=entry.raw).encode()

    # ------------------------------------------------------------------ 64 -> 65

    def _prove_device(self, msg: TO2ProveDevice) -> Reply:
        assert self.guid is not None and self.kex is not None and self.cipher is not None
        voucher = self._voucher()
        device_key = voucher.device_public_key
        if device_key is None:
            raise InvalidMessageError("the voucher has no device certificate chain")
        claims = read_eat(msg.token, "TO2.ProveDevice")
        if claims.nonce != self.nonce_prove_dv:
            raise NonceMismatchError("TO2.ProveDevice: NonceTO2ProveDv does not match")
        if claims.guid() != self.guid:
            raise InvalidMessageError("TO2.ProveDevice: UEID is not this device's GUID")
        msg.token.verify(device_key, "TO2.ProveDevice")
        fdo_claim = codec.as_list(claims.fdo, "EAT-FDO", min_len=1)
        xb = codec.as_bytes(fdo_claim[0], "xBKeyExchange", max_size=2048)
        setup_nonce = msg.token.unprotected.get(EUPH_NONCE)
        if setup_nonce is None:
            raise MessageBodyError("TO2.ProveDevice: EUPHNonce missing")
        self.nonce_setup_dv = Nonce.from_cbor_obj(setup_nonce)
        owner_pub = voucher.owner_public_key
        owner_priv = self._private_key(owner_pub) if self.kex.suite.startswith("ASYMKEX") else None
        rsa_key = owner_priv if isinstance(owner_priv, rsa.RSAPrivateKey) else None
        self.session = self.kex.derive(xb, self.cipher, owner_private_key=rsa_key)
        self.kex = None  # the ephemeral secret is no longer needed: do not keep it

        repl = self.store.replacement(voucher)
        rv_raw = repl.rv_info.encode()
        key_raw = repl.owner2_key.encode()
        self.reuse = (
            repl.guid == self.guid
            and repl.owner2_key.same_key(owner_pub)
            and rv_raw == voucher.header.rv_info.encode()
        )
        self.replacement_guid, self.replacement_rv_raw, self.replacement_key_raw = repl.guid, rv_raw, key_raw
        self.replacement_basis = repl.basis
        setup = SetupDevicePayload.from_bytes(
            codec.encode([Raw(rv_raw), repl.guid.value, self.nonce_setup_dv.value, Raw(key_raw)])
        )
        token = CoseSign1.sign(
            self._private_key(repl.owner2_key), setup.to_bytes(), pk_type=repl.owner2_key.pk_type
        )
        self.state = TO2State.WAIT_SI_READY
        return self._encrypt(MsgType.TO2_SETUP_DEVICE, TO2SetupDevice(token=token).encode())

    # ------------------------------------------------------------------ 66 -> 67

    def _si_ready(self, msg: TO2DeviceServiceInfoReady) -> Reply:
        if msg.replacement_hmac is None and not self.reuse:
            raise InvalidMessageError("TO2.DeviceServiceInfoReady: the device sent no replacement HMAC")
        if msg.replacement_hmac is not None and not msg.replacement_hmac.alg.is_hmac:
            raise InvalidMessageError("TO2.DeviceServiceInfoReady: ReplacementHMac is not an HMAC")
        if msg.replacement_hmac is not None:
            # The device chose new credentials over reuse (it may): keep them.
            self.reuse = False
        self.replacement_hmac = msg.replacement_hmac
        self.device_mtu = max(256, msg.max_owner_service_info_size or DEFAULT_SERVICE_INFO_MTU)
        self.service_info = OwnerServiceInfoDriver(None, mtu=self.device_mtu)
        self.state = TO2State.WAIT_DEVICE_SI
        reply = TO2OwnerServiceInfoReady(max_device_service_info_size=self.max_device_service_info_size)
        return self._encrypt(MsgType.TO2_OWNER_SERVICE_INFO_READY, reply.encode())

    # ------------------------------------------------------------------ 68 -> 69

    def _device_si(self, msg: TO2DeviceServiceInfo) -> Reply:
        assert self.service_info is not None
        guid = self.guid
        assert guid is not None
        reply = self.service_info.handle(
            msg.is_more,
            msg.service_info,
            select=lambda devmod: self.store.owner_modules(guid, devmod),
        )
        self.devmod = self.service_info.devmod
        if reply.is_done:
            self.state = TO2State.WAIT_DONE
        out = TO2OwnerServiceInfo(
            is_more=reply.is_more, is_done=reply.is_done, service_info=tuple(reply.service_info)
        )
        return self._encrypt(MsgType.TO2_OWNER_SERVICE_INFO, out.encode())

    # ------------------------------------------------------------------ 70 -> 71

    def _done(self, msg: TO2Done) -> Reply:
        if msg.nonce != self.nonce_prove_dv:
            raise NonceMismatchError("TO2.Done: NonceTO2ProveDv does not match")
        assert self.nonce_setup_dv is not None
        if not self.reuse:
            assert self.replacement_guid and self.replacement_rv_raw and self.replacement_key_raw
            assert self.replacement_hmac is not None
            old = self._voucher()
            header = replacement_header(
                old.header,
                guid=self.replacement_guid,
                rv_info_raw=self.replacement_rv_raw,
                owner2_key_raw=self.replacement_key_raw,
            )
            self.new_voucher = replacement_voucher(
                old, new_header=header, replacement_hmac=self.replacement_hmac
            )
        self.state = TO2State.DONE
        return self._encrypt(MsgType.TO2_DONE2, TO2Done2(nonce=self.nonce_setup_dv).encode())

    @property
    def done(self) -> bool:
        return self.state == TO2State.DONE

    # ------------------------------------------------------------------ persistence

    def _state_obj(self) -> dict[str, CborValue]:
        def opt(value: Guid | Nonce | None) -> bytes | None:
            return None if value is None else value.value

        return {
            "guid": opt(self.guid),
            "cipher": None if self.cipher is None else int(self.cipher),
            "n": self.num_entries,
            "pdv": opt(self.nonce_prove_dv),
            "sdv": opt(self.nonce_setup_dv),
            "kex": None if self.kex is None else self.kex.to_state(),
            "sess": None if self.session is None else self.session.to_state(),
            "rguid": opt(self.replacement_guid),
            "rrv": self.replacement_rv_raw,
            "rkey": self.replacement_key_raw,
            "rbasis": self.replacement_basis,
            "reuse": self.reuse,
            "rhmac": None if self.replacement_hmac is None else self.replacement_hmac.to_cbor_obj(),
            "mtu": self.device_mtu,
            "si": None if self.service_info is None else self.service_info.to_state(),
        }

    @classmethod
    def from_state(
        cls,
        data: bytes,
        store: TO2OwnerStore,
        *,
        rand: Rand = os.urandom,
        max_device_service_info_size: int = DEFAULT_SERVICE_INFO_MTU,
    ) -> Self:
        obj: Mapping[str, CborValue] = cls.load_state(data)
        m = cls(store, rand=rand, max_device_service_info_size=max_device_service_info_size)
        m.state = cls._state_enum(obj, TO2State)
        m.guid = codec.optional(obj.get("guid"), Guid.from_cbor_obj)
        cipher = obj.get("cipher")
        m.cipher = None if cipher is None else CipherSuite(codec.as_int(cipher, "state.cipher"))
        m.num_entries = codec.as_uint(obj.get("n"), "state.n", 8)
        m.nonce_prove_dv = codec.optional(obj.get("pdv"), Nonce.from_cbor_obj)
        m.nonce_setup_dv = codec.optional(obj.get("sdv"), Nonce.from_cbor_obj)
        kex = obj.get("kex")
        m.kex = None if kex is None else OwnerKex.from_state(codec.as_bytes(kex, "state.kex"))
        sess = obj.get("sess")
        m.session = None if sess is None else SessionCrypto.from_state(codec.as_bytes(sess, "state.sess"))
        m.replacement_guid = codec.optional(obj.get("rguid"), Guid.from_cbor_obj)
        m.replacement_rv_raw = codec.optional(obj.get("rrv"), lambda v: codec.as_bytes(v, "state.rrv"))
        m.replacement_key_raw = codec.optional(obj.get("rkey"), lambda v: codec.as_bytes(v, "state.rkey"))
        m.replacement_basis = obj.get("rbasis")
        m.reuse = codec.as_bool(obj.get("reuse"), "state.reuse")
        m.replacement_hmac = codec.optional(obj.get("rhmac"), Hash.from_cbor_obj)
        m.device_mtu = codec.as_uint(obj.get("mtu"), "state.mtu", 16)
        si = obj.get("si")
        if si is not None:
            m.service_info = OwnerServiceInfoDriver.from_state(si, restore=store.restore_module)
            m.devmod = m.service_info.devmod
        return m
