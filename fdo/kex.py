"""TO2 key exchange: xAKeyExchange, xBKeyExchange and the session keys (spec §3.6).

Reference: ``fdo-protocol.md`` §6.1-§6.2, checked against go-fdo ``kex/ecdh.go``,
``kex/dh.go``, ``kex/oaep.go`` and ``kex/suite.go``. The owner (party A) draws its
share when it builds TO2.ProveOVHdr (61) and sends xA; the device (party B) answers
in TO2.ProveDevice (64) with xB; both run the KDF of :mod:`fdo.cipher` and from then
on wrap messages 64-71 with :class:`~fdo.cipher.SessionCrypto`.

========== ========================================= =============================== ===========
suite      xA / xB                                   ShSe                            ContextRand
========== ========================================= =============================== ===========
ECDH256    len‖X‖len‖Y‖len‖Random (2-byte lengths,   Shx ‖ DeviceRandom ‖ OwnerRandom empty
ECDH384    full-length coordinates, Random 16/48 B)  (Shx at full field length)
DHKEXid14  g^a / g^b mod p, minimal big-endian       g^ab mod p, padded to len(p)    empty
DHKEXid15  (RFC 3526 groups 14/15, g = 2)
ASYMKEX*   xA = OwnerRandom (32/96 B);               DeviceRandom                    OwnerRandom
           xB = RSA-OAEP-SHA256(owner key, DeviceRandom)
========== ========================================= =============================== ===========

Design: sans-I/O and behind one interface, as go's ``kex.Session``. The owner side is
an :class:`OwnerKex` whose :meth:`~OwnerKex.to_state` carries its private share so any
worker can finish the exchange when 64 arrives; the device side is a single call,
:func:`device_kex`, because the device learns xA and answers in one step. Random bytes
come from a ``rand`` parameter (private scalars and exponents included); only RSA-OAEP
padding draws from OpenSSL. Peer values are validated (point on the curve, DH value in
[2, p-2], OAEP padding) and failures raise :class:`~fdo.errors.FdoError` subclasses,
never ``cryptography`` or ``ValueError`` exceptions.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fdo.cipher import CipherSuite, SessionCrypto, kdf, parse_cipher_suite
from fdo.codec import as_bytes, as_list, decode, encode_state
from fdo.errors import (
    FdoError,
    FdoUsageError,
    InternalError,
    InvalidMessageError,
    MessageBodyError,
    UnsupportedError,
)
from fdo.types import Rand

__all__ = [
    "CipherSuite",
    "KexSuite",
    "OwnerKex",
    "SessionCrypto",
    "device_kex",
    "kdf",
    "parse_cipher_suite",
    "parse_kex_suite",
    "suite_allowed",
]


class KexSuite(StrEnum):
    """kexSuiteName values (spec §3.6.1); the device names one in TO2.HelloDevice."""

    ECDH256 = "ECDH256"
    ECDH384 = "ECDH384"
    DHKEXid14 = "DHKEXid14"
    DHKEXid15 = "DHKEXid15"
    ASYMKEX2048 = "ASYMKEX2048"
    ASYMKEX3072 = "ASYMKEX3072"


def parse_kex_suite(value: object) -> KexSuite:
    """Map a received kexSuiteName to :class:`KexSuite` (UnsupportedError if unknown)."""
    if not isinstance(value, str):
        raise MessageBodyError("kexSuiteName: expected a text string")
    try:
        return KexSuite(value)
    except ValueError:
        raise UnsupportedError(f"unsupported key exchange suite {value[:40]!r}") from None


# ----------------------------------------------------------------------------- parameters

_EC_CURVES: Final[dict[KexSuite, tuple[ec.EllipticCurve, int, int, int]]] = {
    # suite: (curve, coordinate length, random length, group order n)
    KexSuite.ECDH256: (
        ec.SECP256R1(),
        32,
        16,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    KexSuite.ECDH384: (
        ec.SECP384R1(),
        48,
        48,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
}

# RFC 3526 MODP groups 14 (2048-bit) and 15 (3072-bit), generator 2.
_P14: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_P15: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
_DH_GROUPS: Final[dict[KexSuite, tuple[int, int]]] = {
    # suite: (prime, private exponent length in bytes; go's paramSize)
    KexSuite.DHKEXid14: (_P14, 32),
    KexSuite.DHKEXid15: (_P15, 96),
}
_DH_GENERATOR: Final = 2

_ASYM_RANDOM_LEN: Final[dict[KexSuite, int]] = {KexSuite.ASYMKEX2048: 32, KexSuite.ASYMKEX3072: 96}
_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)

_STATE_VERSION: Final = 1


def _draw(rand: Rand, size: int) -> bytes:
    data = rand(size)
    if len(data) != size:
        raise FdoUsageError(f"random source returned {len(data)} bytes, wanted {size}")
    return bytes(data)


# ----------------------------------------------------------------------------- ECDH


def _ec_private_key(suite: KexSuite, scalar: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(scalar, _EC_CURVES[suite][0])


def _ec_new_scalar(suite: KexSuite, rand: Rand) -> int:
    _, size, _, order = _EC_CURVES[suite]
    # 64 extra bits make the bias of the reduction negligible (FIPS 186-5 A.2.1).
    return int.from_bytes(_draw(rand, size + 8), "big") % (order - 1) + 1


def _ec_param(key: ec.EllipticCurvePrivateKey, random: bytes) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    size = (len(point) - 1) // 2
    head = size.to_bytes(2, "big")
    return b"".join(
        (head, point[1 : 1 + size], head, point[1 + size :], len(random).to_bytes(2, "big"), random)
    )


def _ec_parse(suite: KexSuite, blob: bytes, what: str) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    """Parse ``len‖X‖len‖Y‖len‖Random``; short coordinates are left-padded (rs, conf)."""
    curve, size, _, _ = _EC_CURVES[suite]
    fields: list[bytes] = []
    pos = 0
    for name in ("X", "Y", "random"):
        if pos + 2 > len(blob):
            raise MessageBodyError(f"{what}: truncated before the {name} length")
        length = int.from_bytes(blob[pos : pos + 2], "big")
        pos += 2
        if pos + length > len(blob):
            raise MessageBodyError(f"{what}: {name} runs past the end")
        fields.append(blob[pos : pos + length])
        pos += length
    if pos != len(blob):
        raise MessageBodyError(f"{what}: trailing bytes")
    x, y, random = fields[0].lstrip(b"\x00"), fields[1].lstrip(b"\x00"), fields[2]
    if len(x) > size or len(y) > size:
        raise InvalidMessageError(f"{what}: coordinate longer than the {suite} field")
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(
            curve, b"\x04" + x.rjust(size, b"\x00") + y.rjust(size, b"\x00")
        )
    except ValueError:
        raise InvalidMessageError(f"{what}: point is not on the {suite} curve") from None
    return peer, random


def _ec_shared_x(key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    try:
        return key.exchange(ec.ECDH(), peer)  # full field length, as go writes it
    except ValueError:
        raise InvalidMessageError("ECDH: key agreement failed") from None


# ----------------------------------------------------------------------------- DH


def _dh_peer(suite: KexSuite, blob: bytes, what: str) -> int:
    prime, _ = _DH_GROUPS[suite]
    if len(blob) > 2 * len(_int_bytes(prime)):  # don't bother converting absurd input
        raise InvalidMessageError(f"{what}: DH value out of range")
    value = int.from_bytes(blob, "big")
    # NIST SP 800-56A r3 §5.6.2.3.1 partial check, as go-fdo: 2 <= y <= p-2.
    if not 2 <= value <= prime - 2:
        raise InvalidMessageError(f"{what}: DH value out of range")
    return value


def _dh_shared(suite: KexSuite, peer: int, exponent: int) -> bytes:
    prime, _ = _DH_GROUPS[suite]
    shared = pow(peer, exponent, prime)
    if shared <= 1 or shared == prime - 1:
        raise InvalidMessageError("DH: degenerate shared secret")
    return shared.to_bytes((prime.bit_length() + 7) // 8, "big")


def _dh_exponent(suite: KexSuite, rand: Rand) -> bytes:
    _, size = _DH_GROUPS[suite]
    exponent = _draw(rand, size)
    if int.from_bytes(exponent, "big") < 2:
        raise InternalError("random source returned a degenerate DH exponent")
    return exponent


def _dh_public(suite: KexSuite, exponent: bytes) -> bytes:
    prime, _ = _DH_GROUPS[suite]
    return _int_bytes(pow(_DH_GENERATOR, int.from_bytes(exponent, "big"), prime))


def _int_bytes(value: int) -> bytes:
    """Minimal big-endian bytes, as go's ``big.Int.Bytes``."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


# ----------------------------------------------------------------------------- owner


class OwnerKex:
    """The owner's half of the exchange (party A), from TO2.ProveOVHdr to TO2.ProveDevice.

    ``xa`` goes in message 61; :meth:`derive` takes the device's xB from message 64.
    Between the two the owner service keeps :meth:`to_state` (secret: it holds the
    private share).
    """

    __slots__ = ("suite", "xa", "_secret", "_ec_key")

    suite: KexSuite
    xa: bytes

    def __init__(self, suite: KexSuite, xa: bytes, secret: bytes) -> None:
        self.suite = parse_kex_suite(suite)
        self.xa = bytes(xa)
        # ECDH: private scalar; DH: private exponent; ASYMKEX: OwnerRandom (= xa).
        self._secret = bytes(secret)
        self._ec_key: ec.EllipticCurvePrivateKey | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"OwnerKex({self.suite})"

    @classmethod
    def new(cls, suite: KexSuite, *, rand: Rand = os.urandom) -> OwnerKex:
        """Draw the owner's share for ``suite`` and compute xA."""
        suite = parse_kex_suite(suite)
        if suite in _EC_CURVES:
            _, size, random_len, _ = _EC_CURVES[suite]
            scalar = _ec_new_scalar(suite, rand)
            key = _ec_private_key(suite, scalar)
            kex = cls(suite, _ec_param(key, _draw(rand, random_len)), scalar.to_bytes(size, "big"))
            kex._ec_key = key
            return kex
        if suite in _DH_GROUPS:
            exponent = _dh_exponent(suite, rand)
            return cls(suite, _dh_public(suite, exponent), exponent)
        owner_random = _draw(rand, _ASYM_RANDOM_LEN[suite])
        return cls(suite, owner_random, owner_random)

    def derive(
        self,
        xb: bytes,
        cipher: CipherSuite,
        *,
        owner_private_key: rsa.RSAPrivateKey | None = None,
    ) -> SessionCrypto:
        """Complete the exchange with the device's xB and return the session crypto.

        ASYMKEX suites need ``owner_private_key`` (the voucher's current owner key) to
        decrypt xB; the other suites ignore it.
        """
        cipher = parse_cipher_suite(cipher)
        xb = as_bytes(xb, "xBKeyExchange")
        suite = self.suite
        if suite in _EC_CURVES:
            peer, device_random = _ec_parse(suite, xb, "xBKeyExchange")
            owner_random = self.xa[-_EC_CURVES[suite][2] :]
            shx = _ec_shared_x(self._ec_private(), peer)
            return SessionCrypto.derive(cipher, shx + device_random + owner_random)
        if suite in _DH_GROUPS:
            peer_value = _dh_peer(suite, xb, "xBKeyExchange")
            shared = _dh_shared(suite, peer_value, int.from_bytes(self._secret, "big"))
            return SessionCrypto.derive(cipher, shared)
        if not isinstance(owner_private_key, rsa.RSAPrivateKey):
            raise FdoUsageError(f"{suite} needs the owner's RSA private key")
        try:
            device_random = owner_private_key.decrypt(xb, _OAEP)
        except ValueError:
            raise InvalidMessageError("xBKeyExchange: RSA-OAEP decryption failed") from None
        if len(device_random) != _ASYM_RANDOM_LEN[suite]:
            raise InvalidMessageError("xBKeyExchange: DeviceRandom has the wrong length")
        return SessionCrypto.derive(cipher, device_random, self._secret)

    def _ec_private(self) -> ec.EllipticCurvePrivateKey:
        if self._ec_key is None:
            self._ec_key = _ec_private_key(self.suite, int.from_bytes(self._secret, "big"))
        return self._ec_key

    def to_state(self) -> bytes:
        """Serialise the exchange (suite, xA and the private share)."""
        return encode_state([_STATE_VERSION, str(self.suite), self.xa, self._secret])

    @classmethod
    def from_state(cls, data: bytes) -> OwnerKex:
        """Rebuild an exchange from :meth:`to_state` output (InternalError if corrupt)."""
        try:
            version, suite, xa, secret = as_list(decode(data), "kex state", 4)
            if version != _STATE_VERSION:
                raise InternalError("kex state: unknown version")
            kex = cls(parse_kex_suite(suite), as_bytes(xa, "kex xA"), as_bytes(secret, "kex secret"))
            if kex.suite in _EC_CURVES:
                scalar = int.from_bytes(kex._secret, "big")
                if not 1 <= scalar < _EC_CURVES[kex.suite][3]:
                    raise InternalError("kex state: bad scalar")
        except (FdoError, FdoUsageError):
            raise InternalError("stored key exchange state is corrupt") from None
        return kex


# ----------------------------------------------------------------------------- device


def device_kex(
    suite: KexSuite,
    xa: bytes,
    cipher: CipherSuite,
    *,
    owner_public_key: rsa.RSAPublicKey | None = None,
    rand: Rand = os.urandom,
) -> tuple[bytes, SessionCrypto]:
    """The device's half (party B): answer the owner's xA.

    Returns xB for TO2.ProveDevice (64) and the session crypto. ASYMKEX suites need
    the owner's RSA public key (from the voucher) to encrypt DeviceRandom.
    """
    suite = parse_kex_suite(suite)
    cipher = parse_cipher_suite(cipher)
    xa = as_bytes(xa, "xAKeyExchange")
    if suite in _EC_CURVES:
        peer, owner_random = _ec_parse(suite, xa, "xAKeyExchange")
        key = _ec_private_key(suite, _ec_new_scalar(suite, rand))
        device_random = _draw(rand, _EC_CURVES[suite][2])
        shx = _ec_shared_x(key, peer)
        return _ec_param(key, device_random), SessionCrypto.derive(cipher, shx + device_random + owner_random)
    if suite in _DH_GROUPS:
        peer_value = _dh_peer(suite, xa, "xAKeyExchange")
        exponent = _dh_exponent(suite, rand)
        shared = _dh_shared(suite, peer_value, int.from_bytes(exponent, "big"))
        return _dh_public(suite, exponent), SessionCrypto.derive(cipher, shared)
    random_len = _ASYM_RANDOM_LEN[suite]
    if len(xa) != random_len:
        raise MessageBodyError(f"xAKeyExchange: {suite} OwnerRandom must be {random_len} bytes")
    if not isinstance(owner_public_key, rsa.RSAPublicKey):
        raise UnsupportedError(f"{suite} needs an RSA owner key")
    device_random = _draw(rand, random_len)
    try:
        xb = owner_public_key.encrypt(device_random, _OAEP)
    except ValueError:
        raise UnsupportedError(f"owner RSA key too small for {suite}") from None
    return xb, SessionCrypto.derive(cipher, device_random, xa)


# ----------------------------------------------------------------------------- pairing

_PK_RSA2048RESTR: Final = 1
_PK_RSAPKCS: Final = 5
_PK_RSAPSS: Final = 6
_PK_SECP256R1: Final = 10
_PK_SECP384R1: Final = 11

#: Security strength in bits (NIST SP 800-57 Part 1, table 2) of each suite and owner key size.
_SUITE_STRENGTH: Final[dict[KexSuite, int]] = {
    KexSuite.DHKEXid14: 112,
    KexSuite.ASYMKEX2048: 112,
    KexSuite.DHKEXid15: 128,
    KexSuite.ASYMKEX3072: 128,
    KexSuite.ECDH256: 128,
    KexSuite.ECDH384: 192,
}
_OWNER_STRENGTH: Final[dict[int, int]] = {256: 128, 384: 192, 2048: 112, 3072: 128}
_ASYM_BITS: Final[dict[KexSuite, int]] = {KexSuite.ASYMKEX2048: 2048, KexSuite.ASYMKEX3072: 3072}


def _owner_key_size(owner_key_type: int, key_bits: int | None) -> tuple[int, int] | None:
    """(RSA-or-curve type, size) of the owner key, or None when it is not supported."""
    if owner_key_type == _PK_SECP256R1:
        return _PK_SECP256R1, 256
    if owner_key_type == _PK_SECP384R1:
        return _PK_SECP384R1, 384
    if owner_key_type == _PK_RSA2048RESTR:
        return _PK_RSAPKCS, 2048
    if owner_key_type in (_PK_RSAPKCS, _PK_RSAPSS):
        if key_bits is None:
            raise FdoUsageError("suite_allowed: key_bits is needed for RSAPKCS/RSAPSS owner keys")
        return (_PK_RSAPKCS, key_bits) if key_bits in (2048, 3072) else None
    return None


def suite_allowed(suite: KexSuite, owner_key_type: int, key_bits: int | None = None) -> bool:
    """Whether the owner accepts ``suite`` with an owner key of pkType ``owner_key_type``.

    RSA2048RESTR (1) is always 2048-bit; for RSAPKCS (5) and RSAPSS (6) ``key_bits``
    gives the modulus size (only 2048 and 3072 are supported owner keys).

    Every suite at least as strong as the owner key is accepted (security strength,
    NIST SP 800-57: RSA-2048 112 bits; RSA-3072 and P-256 128; P-384 192), whatever the
    device key. The spec's table (§3.6.5: P-256 → ECDH256, P-384 → ECDH384, RSA-2048 →
    DHKEXid14/ASYMKEX2048, RSA-3072 → DHKEXid15/ASYMKEX3072) is the strength each key
    needs, not a ceiling: go-fdo's owner completes TO2 for an RSA-2048 device with
    DHKEXid15 or ECDH256. ASYMKEX encrypts to the owner key, so it needs an RSA owner key
    of its own size.
    """
    suite = parse_kex_suite(suite)
    owner = _owner_key_size(owner_key_type, key_bits)
    if owner is None:
        return False
    if suite in _ASYM_BITS:
        return owner == (_PK_RSAPKCS, _ASYM_BITS[suite])
    return _SUITE_STRENGTH[suite] >= _OWNER_STRENGTH[owner[1]]
