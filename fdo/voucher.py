"""Ownership voucher (spec §3.4; reference ``fdo-protocol.md`` §4).

::

    OwnershipVoucher = [OVProtVer, OVHeaderTag: bstr .cbor OVHeader, OVHeaderHMac: HMac,
                        OVDevCertChain: [+ bstr] / null, OVEntryArray: [* OVEntry]]
    OVHeader         = [OVHProtVer, OVGuid, OVRVInfo, OVDeviceInfo, OVPubKey, OVDevCertChainHash / null]
    OVEntry          = #6.18 COSE_Sign1 of OVEntryPayload, signed by the previous owner
    OVEntryPayload   = [OVEHashPrevEntry, OVEHashHdrInfo, OVEExtra: null / bstr .cbor {* int => bstr},
                        OVEPubKey]

Design: everything that is hashed, MACed or signed is kept as the bytes that were
received — the header (:attr:`OVHeader.raw`), the HMac and certificate chain elements,
and each entry's full tagged encoding (:attr:`OVEntry.raw`) — and checks run over those
bytes, never over a re-encoding. :meth:`OwnershipVoucher.encode` gives back the input
exactly; :meth:`OwnershipVoucher.extend` appends a freshly signed entry to the raw
array without touching older ones.

Hashes (reference §4.2): entry 0's OVEHashPrevEntry covers ``header bytes || CBOR(HMac)``,
entry *i*'s covers entry *i-1* including its 0xD2 tag byte; OVEHashHdrInfo covers
``GUID || DeviceInfo``; OVDevCertChainHash covers the concatenated DER certificates
(old fido-device-onboard-rs vouchers hashed the CBOR array instead: accepted on request
and reported, see :class:`VoucherReport`).

Extending writes OVEExtra as ``null`` when there is no extra data, as
fido-device-onboard-rs and the conformance tools do; go-fdo writes ``h'A0'`` (an empty
map) but reads ``null`` (its own ``testdata/ov_extended.pem`` has ``null``). Both are
accepted when reading.

This module is sans-I/O: text and bytes in, objects and bytes out.
"""

from __future__ import annotations

import base64
import binascii
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from fdo import codec
from fdo.codec import CborValue, Raw
from fdo.cose import CoseSign1
from fdo.crypto import (
    PkEnc,
    PkType,
    PrivateKeyT,
    PublicKey,
    PublicKeyT,
    hash_alg_for,
    is_384_class,
    key_kind,
    load_cert_chain,
    verify_cert_chain,
)
from fdo.errors import (
    FdoError,
    FdoUsageError,
    InvalidMessageError,
    InvalidVoucherError,
    MessageBodyError,
    SignatureError,
    UnsupportedError,
)
from fdo.rvinfo import RendezvousInfo
from fdo.types import PROTOCOL_VERSION, Guid, Hash, HashType

FDO10_PROTOCOL_VERSION = 100
MAX_ENTRIES = 255
"""NumOVEntries is a uint8."""
MAX_CERT_CHAIN = 32
PEM_LABEL = "OWNERSHIP VOUCHER"

_FDO10_MESSAGE = (
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


# --------------------------------------------------------------------------- voucher


@dataclass(frozen=True)
class OwnershipVoucher:
    """An FDO 1.1 ownership voucher (see the module docstring)."""

    prot_ver: int
    header: OVHeader
    hmac: Hash
    cert_chain: tuple[bytes, ...] | None
    entries: tuple[OVEntry, ...] = ()
    # Received encodings of [OVProtVer, OVHeaderTag, OVHeaderHMac, OVDevCertChain], kept
    # so that an extended voucher re-emits them verbatim; and the whole input, so that
    # encode() gives it back exactly. dataclasses.replace() drops both (fresh encoding).
    _parts: tuple[bytes, bytes, bytes, bytes] | None = field(
        default=None, init=False, compare=False, repr=False
    )
    _source: bytes | None = field(default=None, init=False, compare=False, repr=False)

    # ------------------------------------------------------------------ decoding

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode a voucher from raw CBOR.

        FDO 1.0 vouchers (a 4-element array, protocol version 100) raise
        :class:`UnsupportedVoucherVersionError`; malformed input raises
        :class:`~fdo.errors.MessageBodyError` or another :class:`~fdo.errors.FdoError`.
        """
        data = bytes(data)
        items = codec.split_array(data, "OwnershipVoucher")
        if len(items) == 4:
            # FDO 1.0: [OVHeader (array, protver 100), HMac, chain, entries].
            raise UnsupportedVoucherVersionError(_FDO10_MESSAGE)
        if len(items) != 5:
            raise MessageBodyError(f"OwnershipVoucher: expected 5 elements, got {len(items)}")
        prot_ver = codec.as_uint(codec.decode(items[0]), "OVProtVer", 16)
        if prot_ver == FDO10_PROTOCOL_VERSION:
            raise UnsupportedVoucherVersionError(_FDO10_MESSAGE)
        if prot_ver != PROTOCOL_VERSION:
            raise UnsupportedVoucherVersionError(
                f"voucher protocol version {prot_ver} is not supported (expected {PROTOCOL_VERSION})"
            )
        header = OVHeader.from_bytes(codec.as_bytes(codec.decode(items[1]), "OVHeaderTag"))
        hmac = Hash.from_cbor_obj(codec.decode(items[2]), "OVHeaderHMac")
        chain_obj = codec.decode(items[3])
        chain: tuple[bytes, ...] | None = None
        if chain_obj is not None:
            ders = codec.as_list(chain_obj, "OVDevCertChain", max_len=MAX_CERT_CHAIN)
            chain = tuple(codec.as_bytes(d, "OVDevCertChain certificate") for d in ders)
        entry_raws = codec.split_array(items[4], "OVEntryArray")
        if len(entry_raws) > MAX_ENTRIES:
            raise MessageBodyError(f"OVEntryArray: more than {MAX_ENTRIES} entries")
        entries = tuple(OVEntry.from_bytes(raw, f"OVEntry[{i}]") for i, raw in enumerate(entry_raws))
        voucher = cls(prot_ver, header, hmac, chain, entries)
        object.__setattr__(voucher, "_parts", (items[0], items[1], items[2], items[3]))
        object.__setattr__(voucher, "_source", data)
        return voucher

    @classmethod
    def from_pem(cls, text: str | bytes) -> list[Self]:
        """Every voucher in PEM text (several blocks allowed), or one raw CBOR voucher."""
        return [cls.decode(block) for block in split_pem(text)]

    @classmethod
    def create(
        cls,
        *,
        header: OVHeader,
        hmac: Hash,
        cert_chain: Sequence[bytes] | None,
    ) -> Self:
        """A new voucher with no entries (the manufacturer at the end of DI)."""
        if not hmac.alg.is_hmac:
            raise FdoUsageError("OVHeaderHMac must be an HMAC")
        chain = None if cert_chain is None else tuple(bytes(d) for d in cert_chain)
        return cls(PROTOCOL_VERSION, header, hmac, chain, ())

    # ------------------------------------------------------------------ encoding

    def _raw_parts(self) -> tuple[bytes, bytes, bytes, bytes]:
        if self._parts is not None:
            return self._parts
        chain = None if self.cert_chain is None else list(self.cert_chain)
        return (
            codec.encode(self.prot_ver),
            codec.encode(self.header.raw),
            codec.encode(self.hmac.to_cbor_obj()),
            codec.encode(chain),
        )

    @property
    def hmac_bytes(self) -> bytes:
        """The CBOR of OVHeaderHMac as received (entry 0's prev-hash covers it)."""
        return self._raw_parts()[2]

    def encode(self) -> bytes:
        """The voucher's CBOR; for a decoded voucher, exactly the input bytes."""
        if self._source is not None:
            return self._source
        parts = self._raw_parts()
        return codec.encode([Raw(p) for p in parts] + [[Raw(e.raw) for e in self.entries]])

    def to_pem(self) -> str:
        """PEM text form (base64 in 64-character lines)."""
        return to_pem(self.encode())

    # ------------------------------------------------------------------ accessors

    @property
    def guid(self) -> Guid:
        return self.header.guid

    @property
    def owner_public_key(self) -> PublicKey:
        """The current owner: the last entry's OVEPubKey, or OVPubKey when there are none."""
        if self.entries:
            return self.entries[-1].payload.public_key
        return self.header.public_key

    @property
    def device_certificates(self) -> list[x509.Certificate]:
        """OVDevCertChain parsed (leaf first; [] when null). Raises MessageBodyError."""
        if self.cert_chain is None:
            return []
        return load_cert_chain(self.cert_chain, "OVDevCertChain")

    @property
    def device_public_key(self) -> PublicKeyT | None:
        """The device attestation key (leaf of OVDevCertChain), None without a chain."""
        certs = self.device_certificates
        if not certs:
            return None
        try:
            key = certs[0].public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise MessageBodyError("OVDevCertChain: unreadable device key") from None
        if not isinstance(key, PublicKeyT):
            raise UnsupportedError("OVDevCertChain: device key is neither EC nor RSA")
        return key

    @property
    def entry_hash_alg(self) -> HashType | None:
        """The hash algorithm of the entries (entry 0's), None without entries."""
        return self.entries[0].payload.prev_hash.alg if self.entries else None

    @property
    def hello_hash_alg(self) -> HashType:
        """TO2 helloDeviceHash algorithm: OVDevCertChainHash's (§2.5), else the entries', else SHA-256."""
        if self.header.cert_chain_hash is not None and not self.header.cert_chain_hash.alg.is_hmac:
            return self.header.cert_chain_hash.alg
        return self.entry_hash_alg or HashType.SHA256

    def next_entry_hash_alg(self, owner_key: PublicKeyT) -> HashType:
        """The hash algorithm for a new entry signed by ``owner_key`` (reference §4.3 step 3).

        Entry 0's algorithm when there are entries; otherwise go's rule (device leaf key
        vs signing key), or the signing key alone when there is no device chain.
        """
        if self.entries:
            return self.entries[0].payload.prev_hash.alg
        device_key = self.device_public_key
        if device_key is None:
            return HashType.SHA384 if is_384_class(owner_key) else HashType.SHA256
        return hash_alg_for(device_key, owner_key)

    # ------------------------------------------------------------------ extending

    def extend(
        self,
        owner_private_key: PrivateKeyT,
        next_owner: PublicKey | PublicKeyT,
        *,
        extra: Mapping[int, bytes] | None = None,
    ) -> Self:
        """Return a copy with one more entry transferring the voucher to ``next_owner`` (§4.3).

        ``owner_private_key`` must be the private half of :attr:`owner_public_key`; the
        next owner's key must have OVPubKey's type and size/curve (a bare key is encoded
        with OVPubKey's pkType, as X509, or COSEKEY if OVPubKey is COSEKEY). Older
        entries are re-emitted verbatim. OVEExtra is written as ``null`` when ``extra``
        is empty or None. Misuse raises :class:`~fdo.errors.FdoUsageError`.
        """
        if len(self.entries) >= MAX_ENTRIES:
            raise FdoUsageError(f"a voucher holds at most {MAX_ENTRIES} entries")
        mfg_key = self.header.public_key
        signer_pub = owner_private_key.public_key()
        if key_kind(signer_pub) != key_kind(mfg_key.key):
            raise FdoUsageError(
                f"signing key is {key_kind(signer_pub)} but the voucher's keys are {key_kind(mfg_key.key)}"
            )
        if not self.owner_public_key.same_key(signer_pub):
            raise FdoUsageError("signing key is not the voucher's current owner key")

        if isinstance(next_owner, PublicKey):
            next_key = next_owner
        else:
            enc = PkEnc.COSEKEY if mfg_key.pk_enc == PkEnc.COSEKEY else PkEnc.X509
            try:
                next_key = PublicKey.from_key(next_owner, pk_type=mfg_key.pk_type, enc=enc)
            except FdoError:
                kind = key_kind(next_owner)
                raise FdoUsageError(
                    f"next owner key ({kind}) must have the type and size of OVPubKey ({mfg_key})"
                ) from None
        if not next_key.same_kind(mfg_key):
            raise FdoUsageError(
                f"next owner key ({next_key}) must have the type and size of OVPubKey ({mfg_key})"
            )

        alg = self.next_entry_hash_alg(signer_pub)
        prev = self.entries[-1].raw if self.entries else self.header.raw + self.hmac_bytes
        extra_bytes = None
        if extra:
            for key, value in extra.items():
                if isinstance(key, bool) or not isinstance(key, int) or not isinstance(value, bytes):
                    raise FdoUsageError("OVEExtra maps integers to byte strings")
            extra_bytes = codec.encode(dict(extra))
        payload = OVEntryPayload(
            prev_hash=Hash.compute(alg, prev),
            hdr_hash=Hash.compute(alg, self.header.header_info),
            extra=extra_bytes,
            public_key=next_key,
        )
        entry = OVEntry.sign(owner_private_key, payload, pk_type=mfg_key.pk_type)
        extended = type(self)(self.prot_ver, self.header, self.hmac, self.cert_chain, (*self.entries, entry))
        object.__setattr__(extended, "_parts", self._raw_parts())
        return extended

    # ------------------------------------------------------------------ verifying

    def verify(
        self,
        *,
        hmac_secret: bytes | None = None,
        manufacturer_key_hash: Hash | None = None,
        owner_key: PublicKey | PublicKeyT | None = None,
        min_entries: int = 0,
        allow_legacy_chain_hash: bool = True,
        allow_sha1_certificates: bool = True,
        trusted_device_cas: Sequence[x509.Certificate] = (),
        trusted_manufacturer_keys: Sequence[PublicKey | PublicKeyT] = (),
        now: datetime | None = None,
    ) -> VoucherReport:
        """Run every check of reference §4.4 over the received bytes.

        * ``hmac_secret`` / ``manufacturer_key_hash`` (device): OVHeaderHMac and DCPubKeyHash.
        * ``owner_key``: the final owner key must be this key.
        * ``min_entries``: the RV wants at least 1 (TO0).
        * ``allow_legacy_chain_hash``: accept the old CBOR-framed OVDevCertChainHash.
        * ``allow_sha1_certificates``: accept device certificates signed with SHA-1 (the
          FIDO conformance test PKI in go-fdo's ``ov_extended.pem`` has one); a note says so.
        * ``trusted_device_cas``: the device chain must end in (or be signed by) one of them.
        * ``trusted_manufacturer_keys``: OVPubKey must be one of them.
        * ``now``: every device certificate must be valid at this time.

        Raises :class:`~fdo.errors.InvalidVoucherError` naming the first failing check
        (``check``): ``prot_ver``, ``header.prot_ver``, ``header.hmac``,
        ``header.pubkey_hash``, ``manufacturer_key``, ``header.cert_chain_hash``,
        ``cert_chain``, ``entries.count``, ``entries.hash_alg``, ``entry[i].signature``,
        ``entry[i].prev_hash``, ``entry[i].hdr_hash``, ``entry[i].public_key``,
        ``owner_key``.
        """
        report = VoucherReport()
        if self.prot_ver != PROTOCOL_VERSION:
            raise UnsupportedVoucherVersionError(f"OVProtVer is {self.prot_ver}, expected {PROTOCOL_VERSION}")
        report.checks.append("prot_ver")
        if self.header.prot_ver != PROTOCOL_VERSION:
            raise _fail(
                "header.prot_ver", f"OVHProtVer is {self.header.prot_ver}, expected {PROTOCOL_VERSION}"
            )
        report.checks.append("header.prot_ver")

        if hmac_secret is not None:
            try:
                self.hmac.verify_hmac(hmac_secret, self.header.raw, "OVHeaderHMac")
            except FdoError:
                raise _fail("header.hmac", "OVHeaderHMac does not match the header") from None
            report.checks.append("header.hmac")
        if manufacturer_key_hash is not None:
            if manufacturer_key_hash.alg.is_hmac or not manufacturer_key_hash.matches(
                self.header.public_key_bytes
            ):
                raise _fail("header.pubkey_hash", "OVPubKey does not match the device's DCPubKeyHash")
            report.checks.append("header.pubkey_hash")
        if trusted_manufacturer_keys:
            if not any(self.header.public_key.same_key(k) for k in trusted_manufacturer_keys):
                raise _fail("manufacturer_key", "OVPubKey is not a trusted manufacturer key")
            report.checks.append("manufacturer_key")

        self._verify_cert_chain(
            report, allow_legacy_chain_hash, allow_sha1_certificates, trusted_device_cas, now
        )

        if len(self.entries) < min_entries:
            raise _fail(
                "entries.count", f"voucher has {len(self.entries)} entries, at least {min_entries} needed"
            )
        report.checks.append("entries.count")
        self._verify_entries(report)

        if owner_key is not None:
            if not self.owner_public_key.same_key(owner_key):
                raise _fail("owner_key", "the voucher's final owner key is not the expected owner key")
            report.checks.append("owner_key")
        return report

    def _verify_cert_chain(
        self,
        report: VoucherReport,
        allow_legacy: bool,
        allow_sha1: bool,
        trusted: Sequence[x509.Certificate],
        now: datetime | None,
    ) -> None:
        chain_hash = self.header.cert_chain_hash
        if self.cert_chain is None or chain_hash is None:
            if self.cert_chain is not None or chain_hash is not None:
                raise _fail(
                    "header.cert_chain_hash",
                    "OVDevCertChain and OVDevCertChainHash must both be present or both be null",
                )
            if trusted:
                raise _fail("cert_chain", "voucher has no device certificate chain to check")
            report.notes.append("no device certificate chain (EPID device)")
            return
        if chain_hash.alg.is_hmac:
            raise _fail("header.cert_chain_hash", f"{chain_hash.alg.name} is not a hash algorithm")
        if chain_hash.matches(b"".join(self.cert_chain)):
            report.checks.append("header.cert_chain_hash")
        elif legacy_cert_chain_hash(chain_hash.alg, self.cert_chain).value == chain_hash.value:
            if not allow_legacy:
                raise _fail(
                    "header.cert_chain_hash",
                    "OVDevCertChainHash uses the legacy CBOR-framed rule (old fido-device-onboard-rs), "
                    "not the DER concatenation of FDO 1.1",
                )
            report.legacy_chain_hash = True
            report.checks.append("header.cert_chain_hash")
            report.notes.append(
                "OVDevCertChainHash matches only the legacy CBOR-framed rule (hash of the CBOR array "
                "of certificates, as old fido-device-onboard-rs wrote it), not the FDO 1.1 DER concatenation"
            )
        else:
            raise _fail("header.cert_chain_hash", "OVDevCertChainHash does not match OVDevCertChain")

        try:
            certs = load_cert_chain(self.cert_chain, "OVDevCertChain")
            try:
                verify_cert_chain(certs, trusted=trusted, now=now)
            except SignatureError:
                if not allow_sha1 or not any(_is_sha1_signed(c) for c in certs):
                    raise
                report.notes.extend(_verify_chain_sha1(certs, trusted, now))
        except FdoError as exc:
            raise _fail("cert_chain", exc.message) from None
        report.checks.append("cert_chain")

    def _verify_entries(self, report: VoucherReport) -> None:
        previous: OVEntry | None = None
        signer = self.header.public_key
        alg = self.entry_hash_alg
        for i, entry in enumerate(self.entries):
            verify_entry(
                entry,
                index=i,
                header=self.header,
                header_hmac=self.hmac_bytes,
                previous=previous,
                signer=signer,
                hash_alg=alg,
            )
            previous, signer = entry, entry.payload.public_key
        if self.entries:
            report.checks.append("entries")


def verify_entry(
    entry: OVEntry | bytes,
    *,
    index: int,
    header: OVHeader,
    header_hmac: Hash | bytes,
    previous: OVEntry | None,
    signer: PublicKey,
    hash_alg: HashType | None = None,
) -> OVEntry:
    """Check one entry against the header and the entry before it (reference §4.4 step 4).

    For a device reading entries one at a time in TO2 (OVNextEntry) as much as for
    :meth:`OwnershipVoucher.verify`. ``signer`` is the previous owner key (OVPubKey for
    entry 0); ``header_hmac`` is OVHeaderHMac (its received CBOR bytes, or the Hash,
    encoded deterministically); ``hash_alg`` is entry 0's algorithm (None for entry 0
    itself). ``entry`` given as bytes is decoded (MessageBodyError if malformed).
    Returns the entry; raises :class:`~fdo.errors.InvalidVoucherError` with ``check``
    ``entry[i].signature``, ``entries.hash_alg``, ``entry[i].prev_hash``,
    ``entry[i].hdr_hash`` or ``entry[i].public_key``.
    """
    name = f"entry[{index}]"
    if not isinstance(entry, OVEntry):
        entry = OVEntry.from_bytes(entry, f"OVEntry[{index}]")
    if previous is None and index != 0:
        raise FdoUsageError("verify_entry: entries after the first need the previous entry")
    try:
        entry.sign1.verify(signer.key, f"{name} signature")
    except FdoError as exc:
        raise _fail(f"{name}.signature", f"not signed by the previous owner key ({exc.message})") from None
    payload = entry.payload
    alg = hash_alg or payload.prev_hash.alg
    if alg.is_hmac:
        raise _fail("entries.hash_alg", f"entry hashes use {alg.name}, which is not a hash")
    if payload.prev_hash.alg != alg or payload.hdr_hash.alg != alg:
        raise _fail(
            "entries.hash_alg",
            f"{name} hashes with {payload.prev_hash.alg.name}/{payload.hdr_hash.alg.name}, "
            f"entry 0 with {alg.name}",
        )
    if previous is not None:
        prev_bytes = previous.raw
    else:
        hmac_bytes = (
            header_hmac if isinstance(header_hmac, bytes) else codec.encode(header_hmac.to_cbor_obj())
        )
        prev_bytes = header.raw + hmac_bytes
    if not payload.prev_hash.matches(prev_bytes):
        raise _fail(f"{name}.prev_hash", "OVEHashPrevEntry does not match the previous entry")
    if not payload.hdr_hash.matches(header.header_info):
        raise _fail(f"{name}.hdr_hash", "OVEHashHdrInfo does not match GUID and DeviceInfo")
    if not payload.public_key.same_kind(header.public_key):
        raise _fail(
            f"{name}.public_key",
            f"OVEPubKey ({payload.public_key}) must have the type and size of OVPubKey ({header.public_key})",
        )
    return entry


_SHA1_SIGNATURES = frozenset({SignatureAlgorithmOID.RSA_WITH_SHA1, SignatureAlgorithmOID.ECDSA_WITH_SHA1})


def _is_sha1_signed(cert: x509.Certificate) -> bool:
    return cert.signature_algorithm_oid in _SHA1_SIGNATURES


def _check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> bool:
    """Like ``verify_directly_issued_by`` but also for SHA-1 signatures; True when SHA-1 was used."""
    if cert.issuer != issuer.subject:
        raise SignatureError(f"{what}: issuer name does not match the next certificate")
    if not _is_sha1_signed(cert):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureError(f"{what} is not signed by the next certificate") from None
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1()))  # noqa: S303
        else:
            raise SignatureError(f"{what}: unsupported issuer key")
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{what} is not signed by the next certificate") from None
    return True


def _verify_chain_sha1(
    certs: Sequence[x509.Certificate], trusted: Sequence[x509.Certificate], now: datetime | None
) -> list[str]:
    """:func:`fdo.crypto.verify_cert_chain`, accepting SHA-1 signatures; returns notes on them."""
    notes: list[str] = []

    def note(what: str) -> None:
        notes.append(f"{what} is signed with SHA-1 (weak; accepted for interoperability)")

    for i, cert in enumerate(certs):
        if now is not None and not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise InvalidMessageError(f"certificate {i} is not valid at {now.isoformat()}")
        if i + 1 < len(certs) and _check_issued_by(cert, certs[i + 1], f"certificate {i}"):
            note(f"device certificate {i}")
    if trusted:
        last = certs[-1]
        for root in trusted:
            if root == last:
                return notes
            try:
                if _check_issued_by(last, root, "chain root"):
                    note("the last device certificate")
                return notes
            except SignatureError:
                continue
        raise SignatureError("certificate chain does not end in a trusted CA")
    return notes


def _fail(check: str, message: str) -> InvalidVoucherError:
    return InvalidVoucherError(f"{check}: {message}", check=check)


# --------------------------------------------------------------------------- text form

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL)


def split_pem(data: str | bytes) -> list[bytes]:
    """The raw CBOR of each ``OWNERSHIP VOUCHER`` PEM block in ``data`` (reference §4.5).

    Bytes that start with a CBOR array head (0x80-0x9F, never the first byte of text)
    are one raw CBOR voucher, as fido-device-onboard-rs reads data that does not start
    with ``--``; anything else is read as PEM text, where text around the blocks and
    other PEM blocks are ignored. No voucher block at all raises
    :class:`~fdo.errors.MessageBodyError`.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if not raw:
            raise MessageBodyError("voucher: empty input")
        if raw[0] >> 5 == 4:
            return [raw]
        text = raw.decode("latin-1")
    else:
        text = data
    blocks: list[bytes] = []
    for match in _PEM_BLOCK.finditer(text):
        label, body, end_label = match.group(1), match.group(2), match.group(3)
        if label != end_label:
            raise MessageBodyError(f"PEM: BEGIN {label} ends with END {end_label}")
        if label != PEM_LABEL:
            continue
        try:
            decoded = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MessageBodyError("PEM: invalid base64 in OWNERSHIP VOUCHER block") from None
        if not decoded:
            raise MessageBodyError("PEM: empty OWNERSHIP VOUCHER block")
        blocks.append(decoded)
    if text.count(f"-----BEGIN {PEM_LABEL}-----") != len(blocks):
        raise MessageBodyError("PEM: unterminated OWNERSHIP VOUCHER block")
    if not blocks:
        raise MessageBodyError("not a voucher: neither CBOR nor PEM with an OWNERSHIP VOUCHER block")
    return blocks


def to_pem(data: bytes) -> str:
    """One PEM block of raw voucher CBOR (64-character base64 lines)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(data).decode("ascii"), 64))
    return f"-----BEGIN {PEM_LABEL}-----\n{body}\n-----END {PEM_LABEL}-----\n"


def vouchers_to_pem(vouchers: Sequence[OwnershipVoucher]) -> str:
    """Several vouchers as consecutive PEM blocks."""
    return "".join(v.to_pem() for v in vouchers)


# --------------------------------------------------------------------------- after TO2


def replacement_voucher(
    old: OwnershipVoucher, *, new_header: OVHeader, replacement_hmac: Hash
) -> OwnershipVoucher:
    """The owner's voucher after a TO2 that replaced the credential (reference §8).

    ``[101, new header, ReplacementHMac, old OVDevCertChain (verbatim), []]``; its
    OVPubKey is Owner2Key, so the owner can extend it to a buyer with that key.
    """
    voucher = OwnershipVoucher.create(header=new_header, hmac=replacement_hmac, cert_chain=old.cert_chain)
    parts = voucher._raw_parts()
    object.__setattr__(voucher, "_parts", (parts[0], parts[1], parts[2], old._raw_parts()[3]))
    return voucher


__all__ = [
    "OVEntry",
    "OVEntryPayload",
    "OVHeader",
    "OwnershipVoucher",
    "UnsupportedVoucherVersionError",
    "VoucherReport",
    "cert_chain_hash",
    "device_hmac_alg",
    "legacy_cert_chain_hash",
    "replacement_header",
    "replacement_voucher",
    "split_pem",
    "verify_entry",
    "to_pem",
    "vouchers_to_pem",
]
