"""Checking one voucher entry: its signature, hash links and the device certificate chain."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fdo import codec
from fdo.crypto import PublicKey
from fdo.errors import (
    FdoError,
    FdoUsageError,
    InvalidMessageError,
    InvalidVoucherError,
    SignatureError,
)
from fdo.types import Hash, HashType
from fdo.voucher.parts import OVEntry, OVHeader

if TYPE_CHECKING:
    from cryptography import x509


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
        raise fail(f"{name}.signature", f"not signed by the previous owner key ({exc.message})") from None
    payload = entry.payload
    alg = hash_alg or payload.prev_hash.alg
    if alg.is_hmac:
        raise fail("entries.hash_alg", f"entry hashes use {alg.name}, which is not a hash")
    if payload.prev_hash.alg != alg or payload.hdr_hash.alg != alg:
        raise fail(
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
        raise fail(f"{name}.prev_hash", "OVEHashPrevEntry does not match the previous entry")
    if not payload.hdr_hash.matches(header.header_info):
        raise fail(f"{name}.hdr_hash", "OVEHashHdrInfo does not match GUID and DeviceInfo")
    if not payload.public_key.same_kind(header.public_key):
        raise fail(
            f"{name}.public_key",
            f"OVEPubKey ({payload.public_key}) must have the type and size of OVPubKey ({header.public_key})",
        )
    return entry


@cache
def _sha1_signatures() -> frozenset[object]:
    from cryptography.x509.oid import SignatureAlgorithmOID

    return frozenset({SignatureAlgorithmOID.RSA_WITH_SHA1, SignatureAlgorithmOID.ECDSA_WITH_SHA1})


def is_sha1_signed(cert: x509.Certificate) -> bool:
    return cert.signature_algorithm_oid in _sha1_signatures()


def _check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> bool:
    """Like ``verify_directly_issued_by`` but also for SHA-1 signatures; True when SHA-1 was used."""
    if cert.issuer != issuer.subject:
        raise SignatureError(f"{what}: issuer name does not match the next certificate")
    if not is_sha1_signed(cert):
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


def verify_chain_sha1(
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


def fail(check: str, message: str) -> InvalidVoucherError:
    return InvalidVoucherError(f"{check}: {message}", check=check)
