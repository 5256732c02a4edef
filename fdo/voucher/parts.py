"""The parts of an ownership voucher: header, entries, hashes and the check report.

See :mod:`fdo.voucher` for the layout and the design (checks over received bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

from cryptography.exceptions import UnsupportedAlgorithm

from fdo import codec
from fdo.codec import CborValue, Raw
from fdo.cose import CoseSign1
from fdo.crypto import (
    PkType,
    PrivateKeyT,
    PublicKey,
    PublicKeyT,
    hash_alg_for,
)
from fdo.errors import (
    FdoError,
    FdoUsageError,
    InvalidVoucherError,
    MessageBodyError,
    UnsupportedError,
)
from fdo.rvinfo import RendezvousInfo
from fdo.types import PROTOCOL_VERSION, Guid, Hash, HashType

FDO10_PROTOCOL_VERSION = 100
MAX_ENTRIES = 255
"""NumOVEntries is a uint8."""
MAX_CERT_CHAIN = 32
PEM_LABEL = "OWNERSHIP VOUCHER"

FDO10_MESSAGE = (
    "FDO 1.0 voucher (protocol version 100) is not supported: "
    "only FDO 1.1 vouchers (protocol version 101) are accepted"
)


class UnsupportedVoucherVersionError(InvalidVoucherError, UnsupportedError):
    """The voucher is not an FDO 1.1 voucher (e.g. an FDO 1.0 one); ``check`` is ``"prot_ver"``.

    It is both an :class:`InvalidVoucherError` (error code 2 when reported to a peer)
    and an :class:`UnsupportedError`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, check="prot_ver")


def _public_key(obj: CborValue, what: str) -> PublicKey:
    """Parse a PublicKey; odd keys make ``cryptography`` raise its own errors."""
    try:
        return PublicKey.from_cbor_obj(obj, what)
    except FdoError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MessageBodyError(f"{what}: unreadable public key") from None


# --------------------------------------------------------------------------- hash helpers


def cert_chain_hash(alg: HashType, ders: Sequence[bytes]) -> Hash:
    """OVDevCertChainHash: hash of the DER certificates concatenated, leaf first (FDO 1.1)."""
    return Hash.compute(alg, b"".join(ders))


def legacy_cert_chain_hash(alg: HashType, ders: Sequence[bytes]) -> Hash:
    """The old fido-device-onboard-rs rule: hash of the CBOR array of bstr certificates."""
    return Hash.compute(alg, codec.encode([bytes(d) for d in ders]))


def device_hmac_alg(device_key: PublicKeyT, ov_pub_key: PublicKey | PublicKeyT) -> HashType:
    """The voucher HMAC type a device picks: HMAC-SHA384 only when both keys are 384-class (§2.5)."""
    other = ov_pub_key.key if isinstance(ov_pub_key, PublicKey) else ov_pub_key
    return hash_alg_for(device_key, other).as_hmac


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class OVHeader:
    """``OVHeader = [OVHProtVer, OVGuid, OVRVInfo, OVDeviceInfo, OVPubKey, OVDevCertChainHash / null]``.

    ``raw`` is the exact CBOR of the header (the contents of OVHeaderTag): what the
    device HMACs and entry 0 hashes.
    """

    prot_ver: int
    guid: Guid
    rv_info: RendezvousInfo
    device_info: str
    public_key: PublicKey
    cert_chain_hash: Hash | None
    raw: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        """Parse the CBOR of an OVHeader (raises MessageBodyError / UnsupportedError)."""
        raw = bytes(raw)
        items = codec.as_list(codec.decode(raw), "OVHeader", min_len=5, max_len=6)
        # go's decoder accepts a missing trailing optional field: treat it as null.
        chain_hash = items[5] if len(items) == 6 else None
        return cls(
            prot_ver=codec.as_uint(items[0], "OVHProtVer", 16),
            guid=Guid.from_cbor_obj(items[1]),
            rv_info=RendezvousInfo.from_cbor_obj(items[2]),
            device_info=codec.as_str(items[3], "OVDeviceInfo", max_size=1024),
            public_key=_public_key(items[4], "OVPubKey"),
            cert_chain_hash=codec.optional(
                chain_hash, lambda obj: Hash.from_cbor_obj(obj, "OVDevCertChainHash")
            ),
            raw=raw,
        )

    @classmethod
    def build(
        cls,
        *,
        guid: Guid,
        rv_info: RendezvousInfo,
        device_info: str,
        public_key: PublicKey,
        cert_chain_hash: Hash | None,
        prot_ver: int = PROTOCOL_VERSION,
    ) -> Self:
        """Encode a new header deterministically (manufacturer in DI, owner in TO2)."""
        obj = [
            prot_ver,
            guid.to_cbor_obj(),
            rv_info.to_cbor_obj(),
            device_info,
            public_key.to_cbor_obj(),
            None if cert_chain_hash is None else cert_chain_hash.to_cbor_obj(),
        ]
        return cls.from_bytes(codec.encode(obj))

    @property
    def header_info(self) -> bytes:
        """``GUID || DeviceInfo``: what every OVEHashHdrInfo covers."""
        return self.guid.value + self.device_info.encode("utf-8")

    @property
    def public_key_bytes(self) -> bytes:
        """The received CBOR of OVPubKey (what DCPubKeyHash covers)."""
        return codec.split_array(self.raw, "OVHeader")[4]

    def pubkey_hash(self, alg: HashType) -> Hash:
        """DCPubKeyHash: ``alg`` over CBOR(OVPubKey)."""
        return Hash.compute(alg.as_hash, self.public_key_bytes)

    def hmac(self, secret: bytes, alg: HashType) -> Hash:
        """OVHeaderHMac: HMAC of the header bytes (the device does this in DI and TO2)."""
        return Hash.hmac(alg.as_hmac, secret, self.raw)


def replacement_header(
    old: OVHeader,
    *,
    guid: Guid,
    rv_info: RendezvousInfo | None = None,
    rv_info_raw: bytes | None = None,
    owner2_key: PublicKey | None = None,
    owner2_key_raw: bytes | None = None,
) -> OVHeader:
    """The header of the replacement voucher after TO2 (reference §5.3, DeviceServiceInfoReady).

    ``[old protver, new GUID, new RVInfo, old DeviceInfo, Owner2Key, old OVDevCertChainHash]``.
    Give each of RVInfo and Owner2Key either as an object (encoded deterministically) or
    as the bytes received in TO2.SetupDevice (``*_raw``, copied verbatim, so device and
    owner HMAC the same bytes the peer sent). The old DeviceInfo and chain hash are
    re-encoded deterministically, as go-fdo does.
    """
    if (rv_info is None) == (rv_info_raw is None):
        raise FdoUsageError("give exactly one of rv_info and rv_info_raw")
    if (owner2_key is None) == (owner2_key_raw is None):
        raise FdoUsageError("give exactly one of owner2_key and owner2_key_raw")
    rv_obj: CborValue = Raw(bytes(rv_info_raw)) if rv_info_raw is not None else None
    if rv_info is not None:
        rv_obj = rv_info.to_cbor_obj()
    key_obj: CborValue = Raw(bytes(owner2_key_raw)) if owner2_key_raw is not None else None
    if owner2_key is not None:
        key_obj = owner2_key.to_cbor_obj()
    obj = [
        old.prot_ver,
        guid.to_cbor_obj(),
        rv_obj,
        old.device_info,
        key_obj,
        None if old.cert_chain_hash is None else old.cert_chain_hash.to_cbor_obj(),
    ]
    return OVHeader.from_bytes(codec.encode(obj))


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class OVEntryPayload:
    """``OVEntryPayload = [OVEHashPrevEntry, OVEHashHdrInfo, OVEExtra, OVEPubKey]``.

    ``extra`` holds the bstr contents of OVEExtra (CBOR of ``{* int => bstr}``), or
    None for ``null``.
    """

    prev_hash: Hash
    hdr_hash: Hash
    extra: bytes | None
    public_key: PublicKey

    @classmethod
    def from_cbor_obj(cls, obj: CborValue, what: str = "OVEntryPayload") -> Self:
        items = codec.as_list(obj, what, 4)
        return cls(
            prev_hash=Hash.from_cbor_obj(items[0], f"{what}.OVEHashPrevEntry"),
            hdr_hash=Hash.from_cbor_obj(items[1], f"{what}.OVEHashHdrInfo"),
            extra=codec.optional(items[2], lambda v: codec.as_bytes(v, f"{what}.OVEExtra")),
            public_key=_public_key(items[3], f"{what}.OVEPubKey"),
        )

    def to_cbor_obj(self) -> list[CborValue]:
        return [
            self.prev_hash.to_cbor_obj(),
            self.hdr_hash.to_cbor_obj(),
            self.extra,
            self.public_key.to_cbor_obj(),
        ]

    def extra_map(self) -> dict[int, bytes]:
        """OVEExtra decoded (``{}`` for null); raises MessageBodyError on a bad shape."""
        if self.extra is None:
            return {}
        obj = codec.as_map(codec.decode(self.extra), "OVEExtra")
        out: dict[int, bytes] = {}
        for key, value in obj.items():
            out[codec.as_int(key, "OVEExtra key")] = codec.as_bytes(value, "OVEExtra value")
        return out


@dataclass(frozen=True)
class OVEntry:
    """One signed voucher entry; ``raw`` is its full encoding including the 0xD2 tag byte."""

    raw: bytes = field(repr=False)
    sign1: CoseSign1
    payload: OVEntryPayload

    @classmethod
    def from_bytes(cls, raw: bytes, what: str = "OVEntry") -> Self:
        raw = bytes(raw)
        sign1 = CoseSign1.decode(raw, what)
        payload = OVEntryPayload.from_cbor_obj(sign1.payload_obj(f"{what} payload"), f"{what}.payload")
        return cls(raw, sign1, payload)

    @classmethod
    def sign(cls, key: PrivateKeyT, payload: OVEntryPayload, *, pk_type: PkType | None = None) -> Self:
        """Sign ``payload`` with the current owner's key (tag 18, ``{}`` unprotected)."""
        sign1 = CoseSign1.sign(key, codec.encode(payload.to_cbor_obj()), pk_type=pk_type)
        return cls(sign1.encode(), sign1, payload)


# --------------------------------------------------------------------------- report


@dataclass
class VoucherReport:
    """What :meth:`OwnershipVoucher.verify` checked.

    ``legacy_chain_hash`` is True when OVDevCertChainHash matched only the old
    CBOR-framed rule of fido-device-onboard-rs (a note says so too).
    """

    checks: list[str] = field(default_factory=list)
    legacy_chain_hash: bool = False
    notes: list[str] = field(default_factory=list)
