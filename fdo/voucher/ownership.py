"""The ownership voucher itself (:class:`OwnershipVoucher`) and the owner's voucher after a TO2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Self

from cryptography.exceptions import UnsupportedAlgorithm

from fdo import codec
from fdo.codec import Raw
from fdo.crypto import (
    PkEnc,
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
    MessageBodyError,
    SignatureError,
    UnsupportedError,
)
from fdo.types import PROTOCOL_VERSION, Guid, Hash, HashType
from fdo.voucher.checks import fail, is_sha1_signed, verify_chain_sha1, verify_entry
from fdo.voucher.parts import (
    FDO10_MESSAGE,
    FDO10_PROTOCOL_VERSION,
    MAX_CERT_CHAIN,
    MAX_ENTRIES,
    OVEntry,
    OVEntryPayload,
    OVHeader,
    UnsupportedVoucherVersionError,
    VoucherReport,
    legacy_cert_chain_hash,
)
from fdo.voucher.pem import split_pem, to_pem

if TYPE_CHECKING:
    from cryptography import x509

# --------------------------------------------------------------------------- voucher


@dataclass(frozen=True)
class OwnershipVoucher:
    """An FDO 1.1 ownership voucher (layout and design: :mod:`fdo.voucher`)."""

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
            raise UnsupportedVoucherVersionError(FDO10_MESSAGE)
        if len(items) != 5:
            raise MessageBodyError(f"OwnershipVoucher: expected 5 elements, got {len(items)}")
        prot_ver = codec.as_uint(codec.decode(items[0]), "OVProtVer", 16)
        if prot_ver == FDO10_PROTOCOL_VERSION:
            raise UnsupportedVoucherVersionError(FDO10_MESSAGE)
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
        # OVEntries = [* OVEntry]: a Go encoder writes a voucher without entries as null.
        entry_raws = [] if items[4] == b"\xf6" else codec.split_array(items[4], "OVEntryArray")
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
            raise fail(
                "header.prot_ver", f"OVHProtVer is {self.header.prot_ver}, expected {PROTOCOL_VERSION}"
            )
        report.checks.append("header.prot_ver")

        if hmac_secret is not None:
            try:
                self.hmac.verify_hmac(hmac_secret, self.header.raw, "OVHeaderHMac")
            except FdoError:
                raise fail("header.hmac", "OVHeaderHMac does not match the header") from None
            report.checks.append("header.hmac")
        if manufacturer_key_hash is not None:
            if manufacturer_key_hash.alg.is_hmac or not manufacturer_key_hash.matches(
                self.header.public_key_bytes
            ):
                raise fail("header.pubkey_hash", "OVPubKey does not match the device's DCPubKeyHash")
            report.checks.append("header.pubkey_hash")
        if trusted_manufacturer_keys:
            if not any(self.header.public_key.same_key(k) for k in trusted_manufacturer_keys):
                raise fail("manufacturer_key", "OVPubKey is not a trusted manufacturer key")
            report.checks.append("manufacturer_key")

        self._verify_cert_chain(
            report, allow_legacy_chain_hash, allow_sha1_certificates, trusted_device_cas, now
        )

        if len(self.entries) < min_entries:
            raise fail(
                "entries.count", f"voucher has {len(self.entries)} entries, at least {min_entries} needed"
            )
        report.checks.append("entries.count")
        self._verify_entries(report)

        if owner_key is not None:
            if not self.owner_public_key.same_key(owner_key):
                raise fail("owner_key", "the voucher's final owner key is not the expected owner key")
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
                raise fail(
                    "header.cert_chain_hash",
                    "OVDevCertChain and OVDevCertChainHash must both be present or both be null",
                )
            if trusted:
                raise fail("cert_chain", "voucher has no device certificate chain to check")
            report.notes.append("no device certificate chain (EPID device)")
            return
        if chain_hash.alg.is_hmac:
            raise fail("header.cert_chain_hash", f"{chain_hash.alg.name} is not a hash algorithm")
        if chain_hash.matches(b"".join(self.cert_chain)):
            report.checks.append("header.cert_chain_hash")
        elif legacy_cert_chain_hash(chain_hash.alg, self.cert_chain).value == chain_hash.value:
            if not allow_legacy:
                raise fail(
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
            raise fail("header.cert_chain_hash", "OVDevCertChainHash does not match OVDevCertChain")

        try:
            certs = load_cert_chain(self.cert_chain, "OVDevCertChain")
            try:
                verify_cert_chain(certs, trusted=trusted, now=now)
            except SignatureError:
                if not allow_sha1 or not any(is_sha1_signed(c) for c in certs):
                    raise
                report.notes.extend(verify_chain_sha1(certs, trusted, now))
        except FdoError as exc:
            raise fail("cert_chain", exc.message) from None
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
