"""TO2 messages 60-71 (spec §5.5, reference §5.3) and the payloads of 61 and 65.

```
60 HelloDevice  = [ maxDeviceMessageSize: uint16, Guid, NonceTO2ProveOV,
                    kexSuiteName: tstr, cipherSuiteName: int, eASigInfo ]
61 ProveOVHdr   = #6.18 COSE_Sign1, unprotected {256: NonceTO2ProveDv, 257: PublicKey},
                  payload [ bstr .cbor OVHeader, NumOVEntries: uint8, OVHeaderHMac,
                            NonceTO2ProveOV, eBSigInfo, xAKeyExchange: bstr,
                            helloDeviceHash: Hash, maxOwnerMessageSize: uint16 ]
62 GetOVNextEntry = [ OVEntryNum: uint8 ]
63 OVNextEntry    = [ OVEntryNum: uint8, OVEntry: #6.18 COSE_Sign1 ]
64 ProveDevice  = EAToken {10: NonceTO2ProveDv, 256: UEID, -257: [xBKeyExchange]},
                  unprotected {-259: NonceTO2SetupDv}
65 SetupDevice  = #6.18 COSE_Sign1, payload [ RendezvousInfo, Guid, NonceTO2SetupDv, Owner2Key ]
66 DeviceServiceInfoReady = [ ReplacementHMac / null, maxOwnerServiceInfoSz: uint16 / null ]
67 OwnerServiceInfoReady  = [ maxDeviceServiceInfoSz: uint16 / null ]
68 DeviceServiceInfo      = [ IsMoreServiceInfo: bool, ServiceInfo ]
69 OwnerServiceInfo       = [ IsMoreServiceInfo: bool, IsDone: bool, ServiceInfo ]
70 Done  = [ NonceTO2ProveDv ]
71 Done2 = [ NonceTO2SetupDv ]
```

65-71 travel inside the encrypted envelope (:mod:`fdo.kex`); these classes are the
plaintext. The size fields are advisory (rs sends 17): any uint16 is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Self

from fdo import codec
from fdo.codec import CborValue, Raw
from fdo.cose import (
    CUPH_NONCE,
    CUPH_OWNER_PUBKEY,
    EUPH_NONCE,
    CoseSign1,
    EatPayload,
    make_eat,
    read_eat,
)
from fdo.crypto import PkType, PrivateKeyT, PublicKey
from fdo.errors import FdoError, MessageBodyError
from fdo.messages import MessageBase, parse_cose_sign1
from fdo.rvinfo import RendezvousInfo
from fdo.serviceinfo import ServiceInfoKV, decode_service_info, encode_service_info
from fdo.types import Guid, Hash, MsgType, Nonce, SigInfo

_U8, _U16 = 8, 16
#: Longest kexSuiteName accepted ("DHKEXid15", "ECDH384", ... are short).
_MAX_KEX_NAME = 64
#: Longest xAKeyExchange / xBKeyExchange accepted (ASYMKEX3072 / DHKEXid15 are < 400 B).
_MAX_KEX_BLOB = 2048


def _public_key(obj: CborValue, what: str) -> PublicKey:
    """A PublicKey from peer data: whatever the key parser raises becomes an FdoError."""
    try:
        return PublicKey.from_cbor_obj(obj, what)
    except FdoError:
        raise
    except Exception as exc:  # cryptography may raise e.g. UnsupportedAlgorithm
        raise MessageBodyError(f"{what}: unusable key ({type(exc).__name__})") from None


def _header(token: CoseSign1, label: int, what: str) -> CborValue:
    value = token.unprotected.get(label)
    if value is None:
        raise MessageBodyError(f"{what} missing from the unprotected header")
    return value


# --------------------------------------------------------------------------- 60


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2HelloDevice(MessageBase):
    """TO2.HelloDevice (type 60).

    ``[maxDeviceMessageSize: uint16, Guid, NonceTO2ProveOV, kexSuiteName: tstr,
    cipherSuiteName: int, eASigInfo]``. The owner hashes the received body bytes for
    helloDeviceHash, so keep them; this class is for reading the fields.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_HELLO_DEVICE

    max_device_message_size: int
    guid: Guid
    nonce: Nonce
    kex_suite: str
    cipher_suite: int
    ea_sig_info: SigInfo

    def to_cbor_obj(self) -> list[CborValue]:
        return [
            self.max_device_message_size,
            self.guid.to_cbor_obj(),
            self.nonce.to_cbor_obj(),
            self.kex_suite,
            self.cipher_suite,
            self.ea_sig_info.to_cbor_obj(),
        ]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "TO2.HelloDevice"
        items = codec.as_list(obj, what, 6)
        return cls(
            max_device_message_size=codec.as_uint(items[0], f"{what}.maxDeviceMessageSize", _U16),
            guid=Guid.from_cbor_obj(items[1]),
            nonce=Nonce.from_cbor_obj(items[2]),
            kex_suite=codec.as_str(items[3], f"{what}.kexSuiteName", max_size=_MAX_KEX_NAME),
            cipher_suite=codec.as_int(items[4], f"{what}.cipherSuiteName", -(1 << 63), (1 << 63) - 1),
            ea_sig_info=SigInfo.from_cbor_obj(items[5], f"{what}.eASigInfo"),
        )


# --------------------------------------------------------------------------- 61


@dataclass(frozen=True, slots=True, kw_only=True)
class ProveOVHdrPayload:
    """The TO2.ProveOVHdr payload (``bstr .cbor`` of an 8-element array).

    ``ov_header`` is the OVHeader's CBOR (the contents of the bstr), exactly as received:
    the device checks OVHeaderHMac over these bytes.
    """

    ov_header: bytes
    num_ov_entries: int
    hmac: Hash
    nonce: Nonce
    eb_sig_info: SigInfo
    xa_key_exchange: bytes
    hello_device_hash: Hash
    max_owner_message_size: int

    def to_cbor_obj(self) -> list[CborValue]:
        return [
            self.ov_header,
            self.num_ov_entries,
            self.hmac.to_cbor_obj(),
            self.nonce.to_cbor_obj(),
            self.eb_sig_info.to_cbor_obj(),
            self.xa_key_exchange,
            self.hello_device_hash.to_cbor_obj(),
            self.max_owner_message_size,
        ]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "TO2.ProveOVHdr payload"
        items = codec.as_list(obj, what, 8)
        return cls(
            ov_header=codec.as_bytes(items[0], f"{what}.OVHeader"),
            num_ov_entries=codec.as_uint(items[1], f"{what}.NumOVEntries", _U8),
            hmac=Hash.from_cbor_obj(items[2], f"{what}.OVHeaderHMac"),
            nonce=Nonce.from_cbor_obj(items[3]),
            eb_sig_info=SigInfo.from_cbor_obj(items[4], f"{what}.eBSigInfo"),
            xa_key_exchange=codec.as_bytes(items[5], f"{what}.xAKeyExchange", max_size=_MAX_KEX_BLOB),
            hello_device_hash=Hash.from_cbor_obj(items[6], f"{what}.helloDeviceHash"),
            max_owner_message_size=codec.as_uint(items[7], f"{what}.maxOwnerMessageSize", _U16),
        )

    def to_bytes(self) -> bytes:
        """The COSE_Sign1 payload bytes."""
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.from_cbor_obj(codec.decode(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2ProveOVHdr(MessageBase):
    """TO2.ProveOVHdr (type 61): ``#6.18 COSE_Sign1`` signed by the owner key.

    Payload :class:`ProveOVHdrPayload`; unprotected header ``{256 CUPHNonce:
    NonceTO2ProveDv, 257 CUPHOwnerPubKey: PublicKey}`` (read with :attr:`cuph_nonce`
    and :attr:`cuph_owner_pubkey`).
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_PROVE_OV_HDR

    token: CoseSign1

    @classmethod
    def sign(
        cls,
        key: PrivateKeyT,
        payload: ProveOVHdrPayload,
        *,
        nonce: Nonce,
        owner_pubkey: PublicKey,
        pk_type: PkType | None = None,
    ) -> Self:
        """Sign ``payload`` with the owner key; ``nonce`` is NonceTO2ProveDv."""
        token = CoseSign1.sign(
            key,
            payload.to_bytes(),
            unprotected={CUPH_NONCE: nonce.to_cbor_obj(), CUPH_OWNER_PUBKEY: owner_pubkey.to_cbor_obj()},
            pk_type=pk_type,
        )
        return cls(token=token)

    def payload(self) -> ProveOVHdrPayload:
        """The parsed payload (the signature is checked separately)."""
        return ProveOVHdrPayload.from_bytes(self.token.payload)

    @property
    def cuph_nonce(self) -> Nonce:
        """CUPHNonce (NonceTO2ProveDv); MessageBodyError when missing or malformed."""
        return Nonce.from_cbor_obj(_header(self.token, CUPH_NONCE, "TO2.ProveOVHdr CUPHNonce"))

    @property
    def cuph_owner_pubkey(self) -> PublicKey:
        """CUPHOwnerPubKey; an FdoError when missing, malformed or unsupported."""
        obj = _header(self.token, CUPH_OWNER_PUBKEY, "TO2.ProveOVHdr CUPHOwnerPubKey")
        return _public_key(obj, "CUPHOwnerPubKey")

    def to_cbor_obj(self) -> CborValue:
        return self.token.to_cbor_obj()

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(token=parse_cose_sign1(obj, "TO2.ProveOVHdr"))


# --------------------------------------------------------------------------- 62, 63


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2GetOVNextEntry(MessageBase):
    """TO2.GetOVNextEntry (type 62): ``[OVEntryNum: uint8]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_GET_OV_NEXT_ENTRY

    entry_num: int

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.entry_num]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO2.GetOVNextEntry", 1)
        return cls(entry_num=codec.as_uint(items[0], "TO2.GetOVNextEntry.OVEntryNum", _U8))


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2OVNextEntry(MessageBase):
    """TO2.OVNextEntry (type 63): ``[OVEntryNum: uint8, OVEntry: #6.18 COSE_Sign1]``.

    ``entry`` is the entry's encoded CBOR (tag included) exactly as stored or received:
    the next entry's OVEHashPrevEntry covers these bytes. :meth:`decode` checks that it
    is a COSE_Sign1 and keeps its bytes; :meth:`encode` copies them verbatim.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_OV_NEXT_ENTRY

    entry_num: int
    entry: bytes

    def entry_token(self) -> CoseSign1:
        """The entry as a COSE_Sign1 (parse the payload with ``fdo.voucher``)."""
        return CoseSign1.decode(self.entry, "TO2.OVNextEntry.OVEntry")

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.entry_num, Raw(self.entry)]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        # Only the decoded entry is available here: it is re-encoded deterministically.
        items = codec.as_list(obj, "TO2.OVNextEntry", 2)
        token = parse_cose_sign1(items[1], "TO2.OVNextEntry.OVEntry")
        return cls(
            entry_num=codec.as_uint(items[0], "TO2.OVNextEntry.OVEntryNum", _U8),
            entry=token.encode(),
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        items = codec.as_list(codec.decode(data), "TO2.OVNextEntry", 2)
        raw = codec.split_array(data, "TO2.OVNextEntry")
        parse_cose_sign1(items[1], "TO2.OVNextEntry.OVEntry")
        return cls(entry_num=codec.as_uint(items[0], "TO2.OVNextEntry.OVEntryNum", _U8), entry=raw[1])


# --------------------------------------------------------------------------- 64


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2ProveDevice(MessageBase):
    """TO2.ProveDevice (type 64): the EAT itself, ``#6.18 COSE_Sign1`` by the device key.

    Payload ``{10: NonceTO2ProveDv, 256: 0x01||Guid, -257: [xBKeyExchange]}`` and
    unprotected ``{-259 EUPHNonce: NonceTO2SetupDv}``; read with :meth:`eat`,
    :attr:`setup_nonce` and :attr:`xb_key_exchange`.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_PROVE_DEVICE

    token: CoseSign1

    @classmethod
    def sign(
        cls,
        key: PrivateKeyT,
        *,
        nonce: Nonce,
        guid: Guid,
        xb_key_exchange: bytes,
        setup_nonce: Nonce,
        pk_type: PkType | None = None,
    ) -> Self:
        """The device's EAT: ``nonce`` is NonceTO2ProveDv, ``setup_nonce`` NonceTO2SetupDv."""
        token = make_eat(
            key,
            EatPayload(nonce=nonce, ueid=guid.ueid, fdo=[xb_key_exchange]),
            unprotected={EUPH_NONCE: setup_nonce.to_cbor_obj()},
            pk_type=pk_type,
        )
        return cls(token=token)

    def eat(self) -> EatPayload:
        """The EAT claims (the signature is checked separately)."""
        return read_eat(self.token, "TO2.ProveDevice")

    @property
    def setup_nonce(self) -> Nonce:
        """EUPHNonce (NonceTO2SetupDv) from the unprotected header."""
        return Nonce.from_cbor_obj(_header(self.token, EUPH_NONCE, "TO2.ProveDevice EUPHNonce"))

    @property
    def xb_key_exchange(self) -> bytes:
        """xBKeyExchange, the one element of the EAT-FDO claim."""
        claim = codec.as_list(self.eat().fdo, "TO2.ProveDevice EAT-FDO", 1)
        return codec.as_bytes(claim[0], "TO2.ProveDevice xBKeyExchange", max_size=_MAX_KEX_BLOB)

    def to_cbor_obj(self) -> CborValue:
        return self.token.to_cbor_obj()

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(token=parse_cose_sign1(obj, "TO2.ProveDevice"))


# --------------------------------------------------------------------------- 65


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupDevicePayload:
    """The TO2.SetupDevice payload: ``[RendezvousInfo, Guid, NonceTO2SetupDv, Owner2Key]``.

    ``rv_info_raw`` and ``owner2_key_raw`` are the encoded bytes of those two elements
    as received: the device builds the replacement OVHeader from them, and must HMAC
    exactly what the owner will put in the new voucher. When building a payload, leave
    them out and they are computed from ``rv_info`` and ``owner2_key``.
    """

    rv_info: RendezvousInfo
    guid: Guid
    nonce: Nonce
    owner2_key: PublicKey
    rv_info_raw: bytes = field(default=b"")
    owner2_key_raw: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if not self.rv_info_raw:
            object.__setattr__(self, "rv_info_raw", codec.encode(self.rv_info.to_cbor_obj()))
        if not self.owner2_key_raw:
            object.__setattr__(self, "owner2_key_raw", self.owner2_key.encode())

    def to_cbor_obj(self) -> list[CborValue]:
        return [
            Raw(self.rv_info_raw),
            self.guid.to_cbor_obj(),
            self.nonce.to_cbor_obj(),
            Raw(self.owner2_key_raw),
        ]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        # Only the decoded objects are available here: raw fields are re-encoded.
        what = "TO2.SetupDevice payload"
        items = codec.as_list(obj, what, 4)
        return cls(
            rv_info=RendezvousInfo.from_cbor_obj(items[0]),
            guid=Guid.from_cbor_obj(items[1]),
            nonce=Nonce.from_cbor_obj(items[2]),
            owner2_key=_public_key(items[3], f"{what}.Owner2Key"),
        )

    def to_bytes(self) -> bytes:
        """The COSE_Sign1 payload bytes."""
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        what = "TO2.SetupDevice payload"
        items = codec.as_list(codec.decode(data), what, 4)
        raw = codec.split_array(data, what)
        return cls(
            rv_info=RendezvousInfo.from_cbor_obj(items[0]),
            guid=Guid.from_cbor_obj(items[1]),
            nonce=Nonce.from_cbor_obj(items[2]),
            owner2_key=_public_key(items[3], f"{what}.Owner2Key"),
            rv_info_raw=raw[0],
            owner2_key_raw=raw[3],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2SetupDevice(MessageBase):
    """TO2.SetupDevice (type 65): ``#6.18 COSE_Sign1`` signed with Owner2Key.

    Payload :class:`SetupDevicePayload` (read with :meth:`payload`).
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_SETUP_DEVICE

    token: CoseSign1

    @classmethod
    def sign(cls, key: PrivateKeyT, payload: SetupDevicePayload, *, pk_type: PkType | None = None) -> Self:
        """Sign ``payload`` with the Owner2Key private key."""
        return cls(token=CoseSign1.sign(key, payload.to_bytes(), pk_type=pk_type))

    def payload(self) -> SetupDevicePayload:
        """The parsed payload (the signature is checked separately)."""
        return SetupDevicePayload.from_bytes(self.token.payload)

    def to_cbor_obj(self) -> CborValue:
        return self.token.to_cbor_obj()

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(token=parse_cose_sign1(obj, "TO2.SetupDevice"))


# --------------------------------------------------------------------------- 66, 67


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2DeviceServiceInfoReady(MessageBase):
    """TO2.DeviceServiceInfoReady (type 66).

    ``[ReplacementHMac: HMac / null, maxOwnerServiceInfoSz: uint16 / null]``; a null
    HMAC asks for credential reuse, a null size means 1300.
    """

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_DEVICE_SERVICE_INFO_READY

    replacement_hmac: Hash | None
    max_owner_service_info_size: int | None

    def to_cbor_obj(self) -> list[CborValue]:
        hmac = None if self.replacement_hmac is None else self.replacement_hmac.to_cbor_obj()
        return [hmac, self.max_owner_service_info_size]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "TO2.DeviceServiceInfoReady"
        items = codec.as_list(obj, what, 2)
        return cls(
            replacement_hmac=codec.optional(
                items[0], lambda v: Hash.from_cbor_obj(v, f"{what}.ReplacementHMac")
            ),
            max_owner_service_info_size=codec.optional(
                items[1], lambda v: codec.as_uint(v, f"{what}.maxOwnerServiceInfoSz", _U16)
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2OwnerServiceInfoReady(MessageBase):
    """TO2.OwnerServiceInfoReady (type 67): ``[maxDeviceServiceInfoSz: uint16 / null]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_OWNER_SERVICE_INFO_READY

    max_device_service_info_size: int | None

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.max_device_service_info_size]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "TO2.OwnerServiceInfoReady"
        items = codec.as_list(obj, what, 1)
        return cls(
            max_device_service_info_size=codec.optional(
                items[0], lambda v: codec.as_uint(v, f"{what}.maxDeviceServiceInfoSz", _U16)
            )
        )


# --------------------------------------------------------------------------- 68, 69


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2DeviceServiceInfo(MessageBase):
    """TO2.DeviceServiceInfo (type 68): ``[IsMoreServiceInfo: bool, ServiceInfo]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_DEVICE_SERVICE_INFO

    is_more: bool
    service_info: tuple[ServiceInfoKV, ...]

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.is_more, encode_service_info(self.service_info)]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "TO2.DeviceServiceInfo"
        items = codec.as_list(obj, what, 2)
        return cls(
            is_more=codec.as_bool(items[0], f"{what}.IsMoreServiceInfo"),
            service_info=tuple(decode_service_info(items[1])),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2OwnerServiceInfo(MessageBase):
    """TO2.OwnerServiceInfo (type 69): ``[IsMoreServiceInfo: bool, IsDone: bool, ServiceInfo]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_OWNER_SERVICE_INFO

    is_more: bool
    is_done: bool
    service_info: tuple[ServiceInfoKV, ...]

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.is_more, self.is_done, encode_service_info(self.service_info)]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        what = "TO2.OwnerServiceInfo"
        items = codec.as_list(obj, what, 3)
        return cls(
            is_more=codec.as_bool(items[0], f"{what}.IsMoreServiceInfo"),
            is_done=codec.as_bool(items[1], f"{what}.IsDone"),
            service_info=tuple(decode_service_info(items[2])),
        )


# --------------------------------------------------------------------------- 70, 71


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2Done(MessageBase):
    """TO2.Done (type 70): ``[NonceTO2ProveDv]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_DONE

    nonce: Nonce

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.nonce.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO2.Done", 1)
        return cls(nonce=Nonce.from_cbor_obj(items[0]))


@dataclass(frozen=True, slots=True, kw_only=True)
class TO2Done2(MessageBase):
    """TO2.Done2 (type 71): ``[NonceTO2SetupDv]``."""

    MSG_TYPE: ClassVar[MsgType] = MsgType.TO2_DONE2

    nonce: Nonce

    def to_cbor_obj(self) -> list[CborValue]:
        return [self.nonce.to_cbor_obj()]

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        items = codec.as_list(obj, "TO2.Done2", 1)
        return cls(nonce=Nonce.from_cbor_obj(items[0]))


MESSAGES: tuple[type[MessageBase], ...] = (
    TO2HelloDevice,
    TO2ProveOVHdr,
    TO2GetOVNextEntry,
    TO2OVNextEntry,
    TO2ProveDevice,
    TO2SetupDevice,
    TO2DeviceServiceInfoReady,
    TO2OwnerServiceInfoReady,
    TO2DeviceServiceInfo,
    TO2OwnerServiceInfo,
    TO2Done,
    TO2Done2,
)
"""The TO2 message classes, for :func:`fdo.messages.decode_message`."""
