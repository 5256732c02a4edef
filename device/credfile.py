"""The device credential file: read ours or fido-device-onboard-rs's layout, write ours atomically.

Reference §3.1. This project's format is :meth:`DeviceCredential.encode`: the spec's
seven elements, the PKCS#8 private key and, when known, the serial given at DI as a
ninth element (eight-element files written before still read, with no serial).
fido-device-onboard-rs's ``FileDeviceCredential`` (the layout of go-fdo's
``testdata/dc.bin``) is recognised by its shape: seven elements, the last a one-entry
map naming the key storage; it has no serial, so ``fdo device onboard --serial``
supplies one. Writing always uses our format (a foreign file is never rewritten in its
own layout), through a temporary file in the same folder that is fsynced and renamed
over the target, so a power cut leaves either the old or the new credential, never
half of one. The file is created with mode 0600: it holds the HMAC secret and the
device private key.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from device.modules import atomic_write
from fdo import codec
from fdo.credential import DeviceCredential
from fdo.errors import FdoError

#: Refuse to read anything larger (a credential is well under 10 KiB).
MAX_FILE_SIZE = 256 * 1024


class CredentialFormat(StrEnum):
    """On-disk layouts :func:`parse_credential` understands."""

    FDO_BOOTC = "fdo-bootc"
    FDO_RS = "fdo-rs"


class CredentialFileError(Exception):
    """The credential file cannot be read, parsed or written (text never holds secrets)."""


def detect_format(data: bytes) -> CredentialFormat:
    """Which layout ``data`` is in (raises CredentialFileError if neither)."""
    try:
        obj = codec.decode(data)
    except FdoError as exc:
        raise CredentialFileError(f"not a CBOR device credential ({exc.message})") from None
    if isinstance(obj, list) and len(obj) in (8, 9) and isinstance(obj[2], bytes):
        return CredentialFormat.FDO_BOOTC
    if isinstance(obj, list) and len(obj) == 7 and isinstance(obj[6], dict):
        return CredentialFormat.FDO_RS
    raise CredentialFileError("not a device credential in a known layout (fdo-bootc or fdo-rs)")


def parse_credential(data: bytes) -> tuple[DeviceCredential, CredentialFormat]:
    """Decode a credential in either layout; returns it and the layout it was in."""
    fmt = detect_format(data)
    try:
        if fmt == CredentialFormat.FDO_BOOTC:
            return DeviceCredential.decode(data), fmt
        return DeviceCredential.decode_fdo_rs(data), fmt
    except FdoError as exc:
        raise CredentialFileError(f"bad {fmt} device credential: {exc.message}") from None


def read_credential(path: Path) -> DeviceCredential:
    """Read the credential stored at ``path`` (either layout)."""
    return read_credential_with_format(path)[0]


def read_credential_with_format(path: Path) -> tuple[DeviceCredential, CredentialFormat]:
    """Read the credential at ``path`` and tell which layout it was in."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise CredentialFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_SIZE:
        raise CredentialFileError(f"{path}: larger than {MAX_FILE_SIZE} bytes, not a credential")
    try:
        return parse_credential(data)
    except CredentialFileError as exc:
        raise CredentialFileError(f"{path}: {exc}") from None


def write_credential(path: Path, credential: DeviceCredential) -> None:
    """Replace ``path`` with ``credential`` in our format, atomically, mode 0600."""
    try:
        atomic_write(path, credential.encode(), 0o600)
    except OSError as exc:
        raise CredentialFileError(f"cannot write {path}: {exc.strerror}") from None


__all__ = [
    "CredentialFileError",
    "CredentialFormat",
    "detect_format",
    "parse_credential",
    "read_credential",
    "read_credential_with_format",
    "write_credential",
]
