"""Device credential (spec §5.2 "DeviceCredential", reference §3.1).

::

    DeviceCredential = [DCActive: bool, DCProtVer: protver, DCHmacSecret: bstr, DCDeviceInfo: tstr,
                        DCGuid: Guid, DCRVInfo: RendezvousInfo, DCPubKeyHash: Hash]

The spec's structure is a non-normative example and every implementation stores it its
own way. This module reads and writes bytes only (no files):

* :meth:`DeviceCredential.encode` / :meth:`DeviceCredential.decode`: this project's
  format, the spec's 7-element array plus an 8th element, the device private key as
  PKCS#8 DER, and a 9th, the serial number given at DI (tstr), when the device knows
  it. Files written before the serial was kept have 8 elements and still read (serial
  None); the device then sends devmod ``sn`` only if told the serial another way.
* :meth:`DeviceCredential.decode_fdo_rs`: fido-device-onboard-rs's
  ``FileDeviceCredential`` (``data-formats/src/devicecredential/file.rs``)::

      [active, protver, device_info, guid, rvinfo, pubkey_hash,
       {"Plain": {"hmac_secret": bytes, "private_key": DER}}]

  where serde writes the byte vectors as arrays of small integers (go-fdo's
  ``testdata/dc.bin`` is such a file); byte strings are accepted too. The ``Tpm`` key
  storage variant cannot be read without a TPM and raises UnsupportedError.

The HMAC secret and private key are secrets: they never appear in ``repr`` or errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from fdo import codec
from fdo.codec import CborValue
from fdo.crypto import PrivateKeyT, load_private_key, private_key_to_der
from fdo.errors import MessageBodyError, UnsupportedError
from fdo.rvinfo import RendezvousInfo
from fdo.types import PROTOCOL_VERSION, Guid, Hash

MAX_SECRET_SIZE = 128
#: Longest serial kept (devmod's own bound on a text field).
MAX_SERIAL_SIZE = 4096


def _byte_vector(obj: CborValue, what: str) -> bytes:
    """A serde ``Vec<u8>``: an array of integers 0..255, or a byte string."""
    if isinstance(obj, bytes):
        return obj
    items = codec.as_list(obj, what, max_len=16384)
    return bytes(codec.as_uint(b, what, 8) for b in items)


@dataclass(frozen=True)
class DeviceCredential:
    """What a device keeps between DI and TO2 (and after each TO2)."""

    active: bool
    prot_ver: int
    hmac_secret: bytes = field(repr=False)
    device_info: str
    guid: Guid
    rv_info: RendezvousInfo
    pubkey_hash: Hash
    private_key: PrivateKeyT = field(repr=False, compare=False)
    #: The serial number given at DI (not in the spec's structure): sent as devmod ``sn``.
    serial: str | None = None
    # cryptography's private keys compare by identity: compare their DER instead.
    _key_der: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key_der", private_key_to_der(self.private_key))

    # ------------------------------------------------------------------ our format

    def to_cbor_obj(self) -> list[CborValue]:
        obj: list[CborValue] = [
            self.active,
            self.prot_ver,
            self.hmac_secret,
            self.device_info,
            self.guid.to_cbor_obj(),
            self.rv_info.to_cbor_obj(),
            self.pubkey_hash.to_cbor_obj(),
            self._key_der,
        ]
        if self.serial is not None:
            obj.append(self.serial)
        return obj

    def encode(self) -> bytes:
        """This project's format: the spec's 7 elements, the PKCS#8 DER private key, and
        the serial when known (so a credential without one stays byte-identical to the
        8-element files written before)."""
        return codec.encode(self.to_cbor_obj())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Read :meth:`encode`'s format, 8 or 9 elements (raises :class:`~fdo.errors.FdoError`)."""
        items = codec.as_list(codec.decode(data), "DeviceCredential", min_len=8, max_len=9)
        serial = None
        if len(items) == 9:
            serial = codec.as_str(items[8], "device serial", max_size=MAX_SERIAL_SIZE) or None
        return cls(
            active=codec.as_bool(items[0], "DCActive"),
            prot_ver=codec.as_uint(items[1], "DCProtVer", 16),
            hmac_secret=codec.as_bytes(items[2], "DCHmacSecret", max_size=MAX_SECRET_SIZE),
            device_info=codec.as_str(items[3], "DCDeviceInfo", max_size=1024),
            guid=Guid.from_cbor_obj(items[4]),
            rv_info=RendezvousInfo.from_cbor_obj(items[5]),
            pubkey_hash=Hash.from_cbor_obj(items[6], "DCPubKeyHash"),
            private_key=load_private_key(codec.as_bytes(items[7], "device private key", max_size=8192)),
            serial=serial,
        )

    # ------------------------------------------------------------------ fido-device-onboard-rs

    @classmethod
    def decode_fdo_rs(cls, data: bytes) -> Self:
        """Read a fido-device-onboard-rs ``FileDeviceCredential`` with plain key storage."""
        items = codec.as_list(codec.decode(data), "FileDeviceCredential", 7)
        storage = codec.as_map(items[6], "FileDeviceCredential.key_storage")
        if len(storage) != 1:
            raise MessageBodyError("FileDeviceCredential.key_storage: expected one variant")
        variant, body = next(iter(storage.items()))
        if variant == "Tpm":
            raise UnsupportedError("fido-device-onboard-rs TPM key storage is not supported")
        if variant != "Plain":
            raise MessageBodyError(f"FileDeviceCredential.key_storage: unknown variant {variant!r}")
        plain = codec.as_map(body, "KeyStorage.Plain")
        secret = _byte_vector(plain.get("hmac_secret"), "KeyStorage.Plain.hmac_secret")
        if not secret or len(secret) > MAX_SECRET_SIZE:
            raise MessageBodyError("KeyStorage.Plain.hmac_secret: bad length")
        key_der = _byte_vector(plain.get("private_key"), "KeyStorage.Plain.private_key")
        return cls(
            active=codec.as_bool(items[0], "active"),
            prot_ver=codec.as_uint(items[1], "protver", 16),
            hmac_secret=secret,
            device_info=codec.as_str(items[2], "device_info", max_size=1024),
            guid=Guid.from_cbor_obj(items[3]),
            rv_info=RendezvousInfo.from_cbor_obj(items[4]),
            pubkey_hash=Hash.from_cbor_obj(items[5], "pubkey_hash"),
            private_key=load_private_key(key_der),
        )

    # ------------------------------------------------------------------ helpers

    @property
    def is_fdo11(self) -> bool:
        return self.prot_ver == PROTOCOL_VERSION


__all__ = ["DeviceCredential"]
