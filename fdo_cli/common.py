"""Helpers shared by the ``fdo`` command groups: reading keys and certificates from files."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

import typer
from cryptography import x509

from fdo.crypto import PrivateKeyT, PublicKeyT, load_private_key, load_public_key
from fdo.errors import FdoError

_PEM_BODY = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END [A-Z0-9 ]+-----", re.DOTALL)


def die(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _pem_ders(data: bytes) -> list[bytes]:
    """DER bodies of the PEM blocks in ``data`` (whatever their labels say)."""
    out = []
    for match in _PEM_BODY.finditer(data):
        try:
            out.append(base64.b64decode(b"".join(match.group(1).split()), validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def read_public_key(path: Path) -> PublicKeyT:
    """A public key from a file holding a public key, a certificate or a private key (PEM or DER).

    PEM blocks whose label does not match their contents (fido-device-onboard-rs writes
    PKCS#8 keys under ``EC PRIVATE KEY``) are read by their DER body.
    """
    data = read_bytes(path)
    candidates = [data, *_pem_ders(data)]
    for blob in candidates:
        try:
            return load_public_key(blob)
        except FdoError:
            pass
        try:
            return load_private_key(blob).public_key()
        except FdoError:
            pass
    raise die(f"{path}: no supported public key, certificate or private key found")


def read_private_key(path: Path) -> PrivateKeyT:
    """A private key from a PEM or DER file (PKCS#8, SEC1 or PKCS#1)."""
    data = read_bytes(path)
    for blob in [data, *_pem_ders(data)]:
        try:
            return load_private_key(blob)
        except FdoError:
            pass
    raise die(f"{path}: no supported private key found")


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Certificates from a PEM file (one or more) or a single DER certificate."""
    data = read_bytes(path)
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise die(f"{path}: no certificate found") from None


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise die(f"cannot read {path}: {exc.strerror}") from None
