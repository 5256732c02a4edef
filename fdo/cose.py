"""COSE_Sign1 (RFC 9052, tag 18) and the FDO Entity Attestation Token (spec §3.3.6).

FDO signs with tagged COSE_Sign1 everywhere (voucher entries, to1d, EATs, ProveOVHdr,
SetupDevice). A received object keeps its protected-header and payload bytes exactly as
they arrived, and signatures are checked over those bytes (reference §2.4). Untagged
COSE_Sign1 is read as a lenient fallback (old fido-device-onboard-rs), never written.
The encrypted envelopes (COSE_Encrypt0/COSE_Mac0) live in :mod:`fdo.kex`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from fdo import codec
from fdo.codec import CborValue, Tag
from fdo.crypto import PkType, PrivateKeyT, PublicKeyT, SigAlg, sig_alg_for, sign, verify
from fdo.errors import MessageBodyError, UnsupportedError
from fdo.types import Guid, Nonce

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
HEADER_IV = 5

# FDO header and claim labels (reference §2.7).
EAT_NONCE = 10
EAT_UEID = 256
EAT_UEID_LEGACY = 11  # fido-device-onboard-rs still uses the 1.0-draft label
EAT_FDO = -257
EAT_MAROE_PREFIX = -258
EUPH_NONCE = -259
CUPH_NONCE = 256
CUPH_OWNER_PUBKEY = 257


@dataclass(frozen=True)
class CoseSign1:
    """``COSE_Sign1 = #6.18([protected: bstr, unprotected: map, payload: bstr, signature: bstr])``."""

    protected: bytes
    unprotected: Mapping[CborValue, CborValue]
    payload: bytes
    signature: bytes
    tagged: bool = True
    alg: SigAlg = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "alg", _parse_alg(self.protected))

    @classmethod
    def sign(
        cls,
        key: PrivateKeyT,
        payload: bytes,
        *,
        unprotected: Mapping[CborValue, CborValue] | None = None,
        alg: SigAlg | None = None,
        pk_type: PkType | None = None,
    ) -> Self:
        """Sign ``payload`` (already CBOR bytes) with ``key``."""
        alg = alg or sig_alg_for(key, pk_type)
        protected = codec.encode({HEADER_ALG: int(alg)})
        signature = sign(key, alg, _sig_structure(protected, payload))
        return cls(protected, dict(unprotected or {}), payload, signature)

    def verify(self, key: PublicKeyT, what: str = "COSE_Sign1") -> None:
        """Raise :class:`~fdo.errors.SignatureError` unless the signature verifies."""
        verify(key, self.alg, _sig_structure(self.protected, self.payload), self.signature, what)

    def payload_obj(self, what: str = "COSE_Sign1 payload") -> CborValue:
        """The decoded payload."""
        try:
            return codec.decode(self.payload)
        except MessageBodyError as exc:
            raise MessageBodyError(f"{what}: {exc.message}") from None

    @classmethod
    def from_cbor_obj(cls, obj: CborValue, what: str = "COSE_Sign1") -> Self:
        tagged = isinstance(obj, Tag)
        inner = codec.as_tag(obj, what, COSE_SIGN1_TAG, optional=True)
        items = codec.as_list(inner, what, 4)
        return cls(
            codec.as_bytes(items[0], f"{what}.protected"),
            codec.as_map(items[1], f"{what}.unprotected"),
            codec.as_bytes(items[2], f"{what}.payload"),
            codec.as_bytes(items[3], f"{what}.signature", max_size=1024),
            tagged,
        )

    def to_cbor_obj(self) -> CborValue:
        body = [self.protected, dict(self.unprotected), self.payload, self.signature]
        return Tag(COSE_SIGN1_TAG, body) if self.tagged else body

    def encode(self) -> bytes:
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def decode(cls, data: bytes, what: str = "COSE_Sign1") -> Self:
        return cls.from_cbor_obj(codec.decode(data), what)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return codec.encode(["Signature1", protected, b"", payload])


def _parse_alg(protected: bytes) -> SigAlg:
    if not protected:
        raise MessageBodyError("COSE_Sign1: empty protected header (no alg)")
    header = codec.as_map(codec.decode(protected), "COSE_Sign1 protected header")
    raw = codec.as_int(header.get(HEADER_ALG), "COSE_Sign1 alg")
    try:
        return SigAlg(raw)
    except ValueError:
        raise UnsupportedError(f"COSE_Sign1: unsupported signature algorithm {raw}") from None


@dataclass(frozen=True, slots=True)
class EatPayload:
    """``EAT-payload = {10: Nonce, 256: UEID, ?-257: EAT-FDO}`` (spec §3.3.6)."""

    nonce: Nonce
    ueid: bytes
    fdo: CborValue = None

    def guid(self) -> Guid:
        """The GUID in an EAT-RAND UEID (``0x01 || GUID``)."""
        if len(self.ueid) != 17 or self.ueid[0] != 1:
            raise MessageBodyError("EAT: UEID is not 0x01 followed by a GUID")
        return Guid(self.ueid[1:])

    def to_cbor_obj(self) -> dict[int, CborValue]:
        obj: dict[int, CborValue] = {EAT_NONCE: self.nonce.value, EAT_UEID: self.ueid}
        if self.fdo is not None:
            obj[EAT_FDO] = self.fdo
        return obj

    @classmethod
    def from_cbor_obj(cls, obj: CborValue, what: str = "EAT payload") -> Self:
        claims = codec.as_map(obj, what)
        ueid = claims.get(EAT_UEID, claims.get(EAT_UEID_LEGACY))
        return cls(
            Nonce.from_cbor_obj(claims.get(EAT_NONCE)),
            codec.as_bytes(ueid, f"{what}.UEID", max_size=64),
            claims.get(EAT_FDO),
        )


def make_eat(
    key: PrivateKeyT,
    payload: EatPayload,
    *,
    unprotected: Mapping[CborValue, CborValue] | None = None,
    pk_type: PkType | None = None,
) -> CoseSign1:
    """Sign an EAT with the device key."""
    return CoseSign1.sign(key, codec.encode(payload.to_cbor_obj()), unprotected=unprotected, pk_type=pk_type)


def read_eat(token: CoseSign1, what: str = "EAT") -> EatPayload:
    """The claims of an EAT (the signature is checked separately with :meth:`CoseSign1.verify`)."""
    return EatPayload.from_cbor_obj(token.payload_obj(f"{what} payload"), what)
