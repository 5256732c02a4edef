"""Keys, signatures and certificates (spec §3.3.4 PublicKey, §3.3.3 SigInfo, §5.2 DI).

* :class:`PublicKey` is the FDO ``[pkType, pkEnc, pkBody]`` triple with every encoding
  (X509, X5CHAIN, COSEKEY), kept as received so it re-encodes to the same bytes; the
  bstr-wrapped X5CHAIN body that fido-device-onboard-rs writes is read too.
* Signatures are COSE algorithms (ES256, ES384, RS256, RS384, PS256, PS384). ECDSA
  signatures are raw ``r || s`` of fixed width, as COSE requires (never DER).
* Device certificates: a device CA signs the device key from its CSR (DI).

No files are read here: keys and certificates come in as bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from typing import TYPE_CHECKING, Self, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import (
    FdoUsageError,
    InvalidMessageError,
    MessageBodyError,
    SignatureError,
    UnsupportedError,
)
from fdo.types import HashType, SgType

if TYPE_CHECKING:
    # Loaded where certificates are read or made: a device onboarding with X509 keys
    # never needs it (1 MB and 20 modules).
    from cryptography import x509

PublicKeyT: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKeyT: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PkType(IntEnum):
    """pkType (spec §3.3.4)."""

    RSA2048RESTR = 1
    RSAPKCS = 5
    RSAPSS = 6
    SECP256R1 = 10
    SECP384R1 = 11


class PkEnc(IntEnum):
    """pkEnc (spec §3.3.4)."""

    CRYPTO = 0
    X509 = 1
    X5CHAIN = 2
    COSEKEY = 3


class SigAlg(IntEnum):
    """COSE signature algorithms used by FDO."""

    ES256 = -7
    ES384 = -35
    RS256 = -257
    RS384 = -258
    PS256 = -37
    PS384 = -38

    @property
    def hash(self) -> hashes.SHA256 | hashes.SHA384:
        if self in (SigAlg.ES256, SigAlg.RS256, SigAlg.PS256):
            return hashes.SHA256()
        return hashes.SHA384()


KEY_KINDS = ("ec256", "ec384", "rsa2048", "rsa3072")
"""Names of the key kinds :func:`generate_key` makes."""


# --------------------------------------------------------------------------- private keys


def generate_key(kind: str) -> PrivateKeyT:
    """Generate a private key: ``ec256``, ``ec384``, ``rsa2048`` or ``rsa3072``."""
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise FdoUsageError(f"unknown key kind {kind!r}; expected one of {', '.join(KEY_KINDS)}")


def key_kind(key: PrivateKeyT | PublicKeyT) -> str:
    """The :data:`KEY_KINDS` name of ``key``."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ec{key.curve.key_size}"
    return f"rsa{key.key_size}"


def private_key_to_pem(key: PrivateKeyT) -> bytes:
    """PKCS#8 PEM, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_to_der(key: PrivateKeyT) -> bytes:
    """PKCS#8 DER, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes) -> PrivateKeyT:
    """Load a PEM or DER private key (PKCS#8, SEC1 or PKCS#1) of a supported type.

    Private keys come only from the operator's or the device's own files, never from the
    network. An RSA key is therefore not put through OpenSSL's full check of its primes,
    which takes 37 ms for 2048 bits and 124 ms for 3072 on every start of a service that
    holds them; a signature made with it must verify with its public key instead (0.4 and
    1 ms), which refuses a key whose private part does not belong to its public one (a
    damaged file). OpenSSL checks each RSA signature it makes with the public key anyway.
    """
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
        else:
            key = serialization.load_der_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as exc:
        raise MessageBodyError(f"cannot read private key: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UnsupportedError("only EC and RSA private keys are supported")
    check_key_supported(key.public_key())
    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa_pair(key)
    return key


_PAIR_CHECK = b"fdo-bootc: does this private key sign for its public key?"


def _check_rsa_pair(key: rsa.RSAPrivateKey) -> None:
    """MessageBodyError unless a signature ``key`` makes verifies with its public key."""
    try:
        signature = key.sign(_PAIR_CHECK, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, _PAIR_CHECK, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError) as exc:
        raise MessageBodyError(
            f"cannot read private key: its RSA parts do not belong together ({type(exc).__name__})"
        ) from None


def load_public_key(data: bytes) -> PublicKeyT:
    """Load a PEM or DER SubjectPublicKeyInfo, or the key of a PEM/DER certificate."""
    key: object
    try:
        stripped = data.lstrip()
        if stripped.startswith(b"-----BEGIN CERTIFICATE"):
            from cryptography import x509

            key = x509.load_pem_x509_certificate(stripped).public_key()
        elif stripped.startswith(b"-----"):
            key = serialization.load_pem_public_key(stripped)
        else:
            key = _der_public_key(bytes(data))  # the rendezvous loads a device key twice per TO1
    except (ValueError, TypeError) as exc:
        raise MessageBodyError(f"cannot read public key: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise UnsupportedError("only EC and RSA public keys are supported")
    check_key_supported(key)
    return key


def public_key_to_pem(key: PublicKeyT) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_der(key: PublicKeyT) -> bytes:
    """DER SubjectPublicKeyInfo of ``key``."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_key_supported(key: PublicKeyT) -> None:
    """Only P-256, P-384 and RSA 2048/3072 keys take part in FDO."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise UnsupportedError(f"unsupported curve {key.curve.name}")
    elif key.key_size not in (2048, 3072):
        raise UnsupportedError(f"unsupported RSA key size {key.key_size}")


def is_384_class(key: PublicKeyT) -> bool:
    """P-384 and RSA-3072 keys are "384-class" for hash selection (reference §2.5)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size == 384
    return key.key_size >= 3072


def hash_alg_for(device_key: PublicKeyT, other_key: PublicKeyT) -> HashType:
    """SHA-384 only when both keys are 384-class, else SHA-256 (go's rule, §2.5)."""
    if is_384_class(device_key) and is_384_class(other_key):
        return HashType.SHA384
    return HashType.SHA256


# --------------------------------------------------------------------------- signatures


def sig_alg_for(key: PrivateKeyT | PublicKeyT, pk_type: PkType | None = None) -> SigAlg:
    """The signature algorithm FDO uses with ``key`` (PSS when ``pk_type`` is RSAPSS)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return SigAlg.ES256 if key.curve.key_size == 256 else SigAlg.ES384
    if pk_type == PkType.RSAPSS:
        return SigAlg.PS256 if key.key_size <= 2048 else SigAlg.PS384
    return SigAlg.RS256 if key.key_size <= 2048 else SigAlg.RS384


def _check_alg_matches_key(alg: SigAlg, key: PublicKeyT) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        want = SigAlg.ES256 if key.curve.key_size == 256 else SigAlg.ES384
        if alg != want:
            raise SignatureError(f"{alg.name} cannot be used with a P-{key.curve.key_size} key")
    elif alg in (SigAlg.ES256, SigAlg.ES384):
        raise SignatureError(f"{alg.name} cannot be used with an RSA key")


def _coord_size(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> int:
    return (key.curve.key_size + 7) // 8


def sign(key: PrivateKeyT, alg: SigAlg, data: bytes) -> bytes:
    """Sign ``data``; ECDSA output is COSE's fixed-width ``r || s``."""
    _check_alg_matches_key(alg, key.public_key())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(alg.hash)))
        size = _coord_size(key)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg in (SigAlg.PS256, SigAlg.PS384):
        pss = padding.PSS(mgf=padding.MGF1(alg.hash), salt_length=alg.hash.digest_size)
        return key.sign(data, pss, alg.hash)
    return key.sign(data, padding.PKCS1v15(), alg.hash)


def verify(key: PublicKeyT, alg: SigAlg, data: bytes, signature: bytes, what: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` over ``data`` verifies."""
    _check_alg_matches_key(alg, key)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = _coord_size(key)
            if len(signature) != 2 * size:
                raise SignatureError(f"{what}: ECDSA signature must be {2 * size} bytes")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(alg.hash))
        elif alg in (SigAlg.PS256, SigAlg.PS384):
            pss = padding.PSS(mgf=padding.MGF1(alg.hash), salt_length=alg.hash.digest_size)
            key.verify(signature, data, pss, alg.hash)
        else:
            key.verify(signature, data, padding.PKCS1v15(), alg.hash)
    except InvalidSignature:
        raise SignatureError(f"{what}: signature does not verify") from None
    except ValueError:
        raise SignatureError(f"{what}: malformed signature") from None


SG_TYPE_PK_TYPES: Mapping[SgType, tuple[PkType, ...]] = {
    SgType.ES256: (PkType.SECP256R1,),
    SgType.ES384: (PkType.SECP384R1,),
    SgType.RS256: (PkType.RSA2048RESTR, PkType.RSAPKCS),
    SgType.RS384: (PkType.RSAPKCS,),
    SgType.PS256: (PkType.RSAPSS,),
    SgType.PS384: (PkType.RSAPSS,),
}
"""Which OVPubKey types go's owner accepts for a device signature type (reference §2.3)."""


def sg_type_for(key: PrivateKeyT | PublicKeyT, pk_type: PkType | None = None) -> SgType:
    """The DeviceSgType a device with ``key`` announces in eASigInfo."""
    return SgType(int(sig_alg_for(key, pk_type)))


# --------------------------------------------------------------------------- PublicKey


def default_pk_type(key: PublicKeyT, *, pss: bool = False) -> PkType:
    """pkType for ``key``: RSA-2048 is RSA2048RESTR and RSA-3072 RSAPKCS, as rs maps them."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return PkType.SECP256R1 if key.curve.key_size == 256 else PkType.SECP384R1
    if pss:
        return PkType.RSAPSS
    return PkType.RSA2048RESTR if key.key_size == 2048 else PkType.RSAPKCS


def _check_type_matches(pk_type: PkType, key: PublicKeyT) -> None:
    if pk_type == PkType.SECP256R1:
        ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size == 256
    elif pk_type == PkType.SECP384R1:
        ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size == 384
    elif pk_type == PkType.RSA2048RESTR:
        ok = isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048 and key.public_numbers().e == 65537
    else:
        ok = isinstance(key, rsa.RSAPublicKey) and key.key_size in (2048, 3072)
    if not ok:
        raise InvalidMessageError(f"PublicKey: key does not match pkType {pk_type.name}")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big")


def _cose_key_to_crypto(body: Mapping[CborValue, CborValue]) -> PublicKeyT:
    kty = body.get(1)
    if kty == 2:  # EC2
        crv = body.get(-1)
        curve: ec.EllipticCurve
        if crv == 1:
            curve, size = ec.SECP256R1(), 32
        elif crv == 2:
            curve, size = ec.SECP384R1(), 48
        else:
            raise UnsupportedError(f"COSE_Key: unsupported curve {crv!r}")
        x = codec.as_bytes(body.get(-2), "COSE_Key.x")
        y = codec.as_bytes(body.get(-3), "COSE_Key.y")
        if len(x) > size or len(y) > size:
            raise MessageBodyError("COSE_Key: coordinate too long")
        point = b"\x04" + x.rjust(size, b"\0") + y.rjust(size, b"\0")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError:
            raise InvalidMessageError("COSE_Key: point is not on the curve") from None
    if kty == 3:  # RSA
        n = int.from_bytes(codec.as_bytes(body.get(-1), "COSE_Key.n"), "big")
        e = int.from_bytes(codec.as_bytes(body.get(-2), "COSE_Key.e"), "big")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise InvalidMessageError("COSE_Key: invalid RSA key") from None
    raise UnsupportedError(f"COSE_Key: unsupported key type {kty!r}")


def _crypto_to_cose_key(key: PublicKeyT) -> dict[int, CborValue]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        nums = key.public_numbers()
        size = _coord_size(key)
        crv = 1 if key.curve.key_size == 256 else 2
        return {1: 2, -1: crv, -2: _int_bytes(nums.x, size), -3: _int_bytes(nums.y, size)}
    rnums = key.public_numbers()
    return {1: 3, -1: _int_bytes(rnums.n), -2: _int_bytes(rnums.e)}


# Parsed keys and certificates by their DER bytes. The same few keys (the owner's, the
# manufacturer's, the device CA) and each device's certificates come back in every
# message of a TO2 and in every voucher; ``cryptography`` objects are immutable, so a
# hit is the very object those bytes parse to. Bounded: a few hundred small entries.
_PARSED_CACHE_SIZE = 256


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def _der_certificate(der: bytes) -> x509.Certificate:
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def _der_public_key(der: bytes) -> object:
    return serialization.load_der_public_key(der)


def _load_der_cert(der: bytes, what: str) -> x509.Certificate:
    try:
        return _der_certificate(bytes(der))
    except ValueError:
        raise MessageBodyError(f"{what}: not a DER certificate") from None


@dataclass(frozen=True)
class PublicKey:
    """``PublicKey = [pkType, pkEnc, pkBody]``.

    ``body`` is kept in the received form (bytes for X509, a sequence of DER
    certificates for X5CHAIN, or bytes holding that array as rs writes it, a map for
    COSEKEY) so that re-encoding gives the same bytes.
    """

    pk_type: PkType
    pk_enc: PkEnc
    body: CborValue
    _key: PublicKeyT = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", self._parse_key())

    def _parse_key(self) -> PublicKeyT:
        if self.pk_enc == PkEnc.X509:
            der = codec.as_bytes(self.body, "PublicKey.X509")
            try:
                key = _der_public_key(der)
            except ValueError:
                raise MessageBodyError("PublicKey: not a DER SubjectPublicKeyInfo") from None
            except UnsupportedAlgorithm:
                raise UnsupportedError("PublicKey: unsupported key algorithm") from None
        elif self.pk_enc == PkEnc.X5CHAIN:
            chain = self.chain()
            if not chain:
                raise MessageBodyError("PublicKey: empty X5CHAIN")
            key = cert_public_key(chain[0])
        elif self.pk_enc == PkEnc.COSEKEY:
            key = _cose_key_to_crypto(codec.as_map(self.body, "PublicKey.COSEKEY"))
        else:
            raise UnsupportedError(f"PublicKey: unsupported encoding {self.pk_enc.name}")
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise UnsupportedError("PublicKey: only EC and RSA keys are supported")
        check_key_supported(key)
        _check_type_matches(self.pk_type, key)
        return key

    @property
    def key(self) -> PublicKeyT:
        """The key as a ``cryptography`` object."""
        return self._key

    def chain(self) -> list[x509.Certificate]:
        """The certificates of an X5CHAIN key, leaf first ([] for other encodings)."""
        if self.pk_enc != PkEnc.X5CHAIN:
            return []
        body = self.body
        if isinstance(body, bytes):  # rs wraps the array in a bstr
            body = codec.decode(body)
        ders = codec.as_list(body, "PublicKey.X5CHAIN", min_len=1, max_len=16)
        return [_load_der_cert(codec.as_bytes(d, "X5CHAIN cert"), "PublicKey.X5CHAIN") for d in ders]

    @classmethod
    def from_key(
        cls,
        key: PublicKeyT,
        *,
        pk_type: PkType | None = None,
        enc: PkEnc = PkEnc.X509,
        chain: Sequence[x509.Certificate] = (),
    ) -> Self:
        """Build the FDO form of ``key`` (X509 by default, the encoding all peers read)."""
        kind = pk_type or default_pk_type(key)
        body: CborValue
        if enc == PkEnc.X509:
            body = spki_der(key)
        elif enc == PkEnc.X5CHAIN:
            if not chain:
                raise FdoUsageError("X5CHAIN encoding needs the certificate chain")
            body = [c.public_bytes(serialization.Encoding.DER) for c in chain]
        elif enc == PkEnc.COSEKEY:
            body = _crypto_to_cose_key(key)
        else:
            raise FdoUsageError(f"cannot encode a key as {enc.name}")
        return cls(kind, enc, body)

    @classmethod
    def from_cbor_obj(cls, obj: CborValue, what: str = "PublicKey") -> Self:
        items = codec.as_list(obj, what, 3)
        raw_type = codec.as_int(items[0], f"{what}.pkType")
        raw_enc = codec.as_int(items[1], f"{what}.pkEnc")
        try:
            pk_type, pk_enc = PkType(raw_type), PkEnc(raw_enc)
        except ValueError:
            raise UnsupportedError(f"{what}: unsupported key type {raw_type}/{raw_enc}") from None
        return cls(pk_type, pk_enc, items[2])

    def to_cbor_obj(self) -> list[CborValue]:
        return [int(self.pk_type), int(self.pk_enc), self.body]

    def encode(self) -> bytes:
        """CBOR of the whole ``[pkType, pkEnc, pkBody]`` (what DCPubKeyHash covers)."""
        return codec.encode(self.to_cbor_obj())

    def same_key(self, other: PublicKey | PublicKeyT) -> bool:
        """True when both hold the same key, whatever their encodings."""
        other_key = other.key if isinstance(other, PublicKey) else other
        return spki_der(self._key) == spki_der(other_key)

    def same_kind(self, other: PublicKey) -> bool:
        """Same pkType and same size/curve (the voucher rule of spec §3.4)."""
        return self.pk_type == other.pk_type and key_kind(self._key) == key_kind(other._key)

    @property
    def sig_alg(self) -> SigAlg:
        """The signature algorithm this key verifies."""
        return sig_alg_for(self._key, self.pk_type)

    def __str__(self) -> str:
        return f"{self.pk_type.name}/{self.pk_enc.name} {key_kind(self._key)}"


# --------------------------------------------------------------------------- certificates


#: X.509's upper bound on a common name (ub-common-name), counted by ``cryptography`` in
#: UTF-8 bytes.
MAX_COMMON_NAME = 64


def common_name(text: str, fallback: str = "fdo-device") -> str:
    """``text`` cut to fit a certificate's common name: at most 64 UTF-8 bytes, never inside
    a character; ``fallback`` when nothing of it is left."""
    cut = text.encode()[:MAX_COMMON_NAME].decode(errors="ignore")
    return cut or fallback


def make_csr(key: PrivateKeyT, common_name: str) -> bytes:
    """A DER PKCS#10 request for ``key`` (what a device sends in DI.AppStart)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    alg = sig_alg_for(key)
    csr = builder.sign(key, alg.hash)
    return csr.public_bytes(serialization.Encoding.DER)


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    """Parse a DER CSR and check its self-signature."""
    from cryptography import x509

    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion: a version other than v1 (0)
        raise MessageBodyError("CSR: not a DER PKCS#10 request") from None
    try:
        valid = csr.is_signature_valid
        pub = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
        raise InvalidMessageError("CSR: unreadable") from None
    except Exception:  # noqa: BLE001 - cryptography may raise its own errors on odd CSRs
        raise InvalidMessageError("CSR: unreadable") from None
    if not valid:
        raise SignatureError("CSR: self-signature does not verify")
    if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise UnsupportedError("CSR: only EC and RSA keys are supported")
    check_key_supported(pub)
    return csr


def make_ca(key: PrivateKeyT, common_name: str, now: datetime, *, days: int = 3650) -> x509.Certificate:
    """A self-signed CA certificate (the manufacturer's device CA)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(key, sig_alg_for(key).hash)


def issue_device_cert(
    ca_key: PrivateKeyT,
    ca_cert: x509.Certificate,
    device_key: PublicKeyT,
    common_name: str,
    now: datetime,
    *,
    days: int = 365 * 25,
) -> x509.Certificate:
    """The device CA signs the device's attestation key."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(device_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(ca_key, sig_alg_for(ca_key).hash)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_cert_chain(ders: Sequence[bytes], what: str = "certificate chain") -> list[x509.Certificate]:
    """Parse DER certificates (leaf first)."""
    return [_load_der_cert(d, what) for d in ders]


def verify_cert_chain(
    chain: Sequence[x509.Certificate],
    *,
    trusted: Sequence[x509.Certificate] = (),
    now: datetime | None = None,
) -> None:
    """Check that each certificate is signed by the next one (leaf first).

    With ``trusted``, the last certificate must be one of them or be signed by one.
    With ``now``, every certificate must be valid at that time.
    """
    if not chain:
        raise InvalidMessageError("certificate chain is empty")
    for i, cert in enumerate(chain):
        if now is not None and not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise InvalidMessageError(f"certificate {i} is not valid at {now.isoformat()}")
        if i + 1 < len(chain):
            _check_issued_by(cert, chain[i + 1], f"certificate {i}")
    if trusted:
        last = chain[-1]
        for root in trusted:
            if cert_der(root) == cert_der(last):
                return
            try:
                _check_issued_by(last, root, "chain root")
                return
            except SignatureError:
                continue
        raise SignatureError("certificate chain does not end in a trusted CA")


def _check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise SignatureError(f"{what} is not signed by the next certificate") from None


def cert_public_key(cert: x509.Certificate) -> PublicKeyT:
    """The (EC or RSA) public key of ``cert``."""
    try:
        key = cert.public_key()
    except ValueError:
        raise MessageBodyError("certificate: unreadable public key") from None
    except UnsupportedAlgorithm:
        raise UnsupportedError("certificate: unsupported key algorithm") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise UnsupportedError("certificate key is neither EC nor RSA")
    check_key_supported(key)
    return key


def sg_type_fits(sg_type: SgType, key: PublicKeyT) -> bool:
    """Whether a device with ``key`` may announce ``sg_type`` (ECDSA curve must match)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return sg_type == (SgType.ES256 if key.curve.key_size == 256 else SgType.ES384)
    return sg_type in (SgType.RS256, SgType.RS384, SgType.PS256, SgType.PS384)
