"""Common FDO 1.1 types (spec §3.3): message numbers, GUID, nonce, Hash/HMac, SigInfo.

Each type has a ``to_cbor_obj``/``from_cbor_obj`` pair next to its fields: the object
form is what :mod:`fdo.codec` encodes, and ``from_cbor_obj`` raises
:class:`~fdo.errors.MessageBodyError` on any wrong shape. Public keys are in
:mod:`fdo.keys`, rendezvous info in :mod:`fdo.rvinfo`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import HashMismatchError, MessageBodyError, UnsupportedError

Rand = Callable[[int], bytes]
"""A source of random bytes; the core never draws randomness any other way."""

PROTOCOL_VERSION = 101
"""protver of FDO 1.1."""


class MsgType(IntEnum):
    """Message type numbers (spec §3.2, reference §1.3)."""

    DI_APP_START = 10
    DI_SET_CREDENTIALS = 11
    DI_SET_HMAC = 12
    DI_DONE = 13
    TO0_HELLO = 20
    TO0_HELLO_ACK = 21
    TO0_OWNER_SIGN = 22
    TO0_ACCEPT_OWNER = 23
    TO1_HELLO_RV = 30
    TO1_HELLO_RV_ACK = 31
    TO1_PROVE_TO_RV = 32
    TO1_RV_REDIRECT = 33
    TO2_HELLO_DEVICE = 60
    TO2_PROVE_OV_HDR = 61
    TO2_GET_OV_NEXT_ENTRY = 62
    TO2_OV_NEXT_ENTRY = 63
    TO2_PROVE_DEVICE = 64
    TO2_SETUP_DEVICE = 65
    TO2_DEVICE_SERVICE_INFO_READY = 66
    TO2_OWNER_SERVICE_INFO_READY = 67
    TO2_DEVICE_SERVICE_INFO = 68
    TO2_OWNER_SERVICE_INFO = 69
    TO2_DONE = 70
    TO2_DONE2 = 71
    ERROR = 255


def _fixed_bytes(cls_name: str, size: int, value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise MessageBodyError(f"{cls_name}: expected {size} bytes")
    return value


@dataclass(frozen=True, slots=True)
class Guid:
    """A 16-byte device GUID (``Guid = bstr .size 16``)."""

    value: bytes

    def __post_init__(self) -> None:
        _fixed_bytes("Guid", 16, self.value)

    @classmethod
    def new(cls, rand: Rand = os.urandom) -> Self:
        return cls(rand(16))

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(codec.as_bytes(obj, "Guid", 16))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse the UUID text form (with or without dashes)."""
        try:
            return cls(uuid.UUID(text).bytes)
        except ValueError:
            raise MessageBodyError(f"not a GUID: {text!r}") from None

    def to_cbor_obj(self) -> bytes:
        return self.value

    def __str__(self) -> str:
        return str(uuid.UUID(bytes=self.value))

    @property
    def ueid(self) -> bytes:
        """EAT-UEID for this GUID: 0x01 (EAT-RAND) followed by the GUID (§2.7)."""
        return b"\x01" + self.value


@dataclass(frozen=True, slots=True)
class Nonce:
    """A 16-byte protocol nonce."""

    value: bytes

    def __post_init__(self) -> None:
        _fixed_bytes("Nonce", 16, self.value)

    @classmethod
    def new(cls, rand: Rand = os.urandom) -> Self:
        return cls(rand(16))

    @classmethod
    def from_cbor_obj(cls, obj: CborValue) -> Self:
        return cls(codec.as_bytes(obj, "Nonce", 16))

    def to_cbor_obj(self) -> bytes:
        return self.value

    def __str__(self) -> str:
        return self.value.hex()


#: The core hashes with cryptography's OpenSSL, not :mod:`hashlib` or :mod:`hmac` (nor
#: cryptography's ``constant_time``, which is hmac's): they load the system's libcrypto
#: beside it, 3.5 MB on a device onboarding over http. By the names hashlib gives them.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def digest(name: str, data: bytes | bytearray) -> bytes:
    """The ``name`` (``"sha256"`` or ``"sha384"``) hash of ``data``."""
    h = hashes.Hash(_HASHES[name]())
    h.update(data)
    return h.finalize()


def hmac_digest(key: bytes, data: bytes, name: str) -> bytes:
    """HMAC-``name`` (``"sha256"`` or ``"sha384"``) of ``data`` keyed with ``key``."""
    mac = _hmac.HMAC(key, _HASHES[name]())
    mac.update(data)
    return mac.finalize()


def hmac_matches(key: bytes, data: bytes, name: str, tag: bytes) -> bool:
    """Whether ``tag`` is the HMAC-``name`` of ``data`` under ``key`` (compared in constant time)."""
    mac = _hmac.HMAC(key, _HASHES[name]())
    mac.update(data)
    try:
        mac.verify(tag)
    except InvalidSignature:
        return False
    return True


class HashType(IntEnum):
    """hashtype values shared by Hash and HMac (COSE algorithm ids)."""

    SHA256 = -16
    SHA384 = -43
    HMAC_SHA256 = 5
    HMAC_SHA384 = 6

    @property
    def hashlib_name(self) -> str:
        return "sha256" if self in (HashType.SHA256, HashType.HMAC_SHA256) else "sha384"

    @property
    def digest_size(self) -> int:
        return 32 if self in (HashType.SHA256, HashType.HMAC_SHA256) else 48

    @property
    def is_hmac(self) -> bool:
        return self in (HashType.HMAC_SHA256, HashType.HMAC_SHA384)

    @property
    def as_hmac(self) -> HashType:
        """The HMAC type with the same inner hash."""
        return HashType.HMAC_SHA256 if self.digest_size == 32 else HashType.HMAC_SHA384

    @property
    def as_hash(self) -> HashType:
        """The plain hash type with the same inner hash."""
        return HashType.SHA256 if self.digest_size == 32 else HashType.SHA384


@dataclass(frozen=True, slots=True)
class Hash:
    """``Hash = HMac = [hashtype: int, hash: bstr]`` (spec §3.3.2).

    One class serves both: :attr:`alg` says whether it is a plain hash or an HMAC.
    """

    alg: HashType
    value: bytes

    @classmethod
    def compute(cls, alg: HashType, data: bytes) -> Self:
        """Plain hash of ``data``."""
        if alg.is_hmac:
            raise UnsupportedError(f"{alg.name} is an HMAC, not a hash")
        return cls(alg, digest(alg.hashlib_name, data))

    @classmethod
    def hmac(cls, alg: HashType, key: bytes, data: bytes) -> Self:
        """HMAC of ``data`` keyed with ``key``."""
        if not alg.is_hmac:
            raise UnsupportedError(f"{alg.name} is a hash, not an HMAC")
        return cls(alg, hmac_digest(key, data, alg.hashlib_name))

    def matches(self, data: bytes) -> bool:
        """True when this (plain) hash covers ``data``."""
        return Hash.compute(self.alg, data).value == self.value  # a hash of public data: no secret to time

    def verify(self, data: bytes, what: str) -> None:
        """Raise :class:`HashMismatchError` unless this hash covers ``data``."""
        if self.alg.is_hmac or not self.matches(data):
            raise HashMismatchError(f"{what}: hash does not match")

    def verify_hmac(self, key: bytes, data: bytes, what: str) -> None:
        """Raise :class:`HashMismatchError` unless this HMAC covers ``data`` under ``key``."""
        if not self.alg.is_hmac or not hmac_matches(key, data, self.alg.hashlib_name, self.value):
            raise HashMismatchError(f"{what}: HMAC does not match")

    @classmethod
    def from_cbor_obj(cls, obj: CborValue, what: str = "Hash") -> Self:
        items = codec.as_list(obj, what, 2)
        raw_alg = codec.as_int(items[0], f"{what}.hashtype")
        try:
            alg = HashType(raw_alg)
        except ValueError:
            raise UnsupportedError(f"{what}: unsupported hash type {raw_alg}") from None
        value = codec.as_bytes(items[1], f"{what}.hash")
        if len(value) != alg.digest_size:
            raise MessageBodyError(f"{what}: {alg.name} value must be {alg.digest_size} bytes")
        return cls(alg, value)

    def to_cbor_obj(self) -> list[CborValue]:
        return [int(self.alg), self.value]

    def __str__(self) -> str:
        return f"{self.alg.name}:{self.value.hex()}"


HMac = Hash
"""Alias: an HMac has the same shape as a Hash."""


class SgType(IntEnum):
    """DeviceSgType (spec §3.3.3) plus the RSA-PSS values go's devices send."""

    ES256 = -7
    ES384 = -35
    RS256 = -257
    RS384 = -258
    PS256 = -37
    PS384 = -38
    EPID10 = 90
    EPID11 = 91


@dataclass(frozen=True, slots=True)
class SigInfo:
    """``SigInfo = [sgType, Info: bstr]``: eASigInfo / eBSigInfo."""

    sg_type: SgType
    info: bytes = b""

    @classmethod
    def from_cbor_obj(cls, obj: CborValue, what: str = "SigInfo") -> Self:
        items = codec.as_list(obj, what, 2)
        raw = codec.as_int(items[0], f"{what}.sgType")
        try:
            sg_type = SgType(raw)
        except ValueError:
            raise UnsupportedError(f"{what}: unsupported signature type {raw}") from None
        return cls(sg_type, codec.as_bytes(items[1], f"{what}.Info", max_size=4096))

    def to_cbor_obj(self) -> list[CborValue]:
        return [int(self.sg_type), self.info]
