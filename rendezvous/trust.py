"""The key allow-lists of the rendezvous (``trusted_owner_keys``,
``trusted_manufacturer_keys``): PEM files read into the SubjectPublicKeyInfos TO0 checks.

No pydantic here: a worker that serves only devices reads them from the settings
``serve`` handed it (:mod:`fdo_server.handed`); :class:`rendezvous.settings.RendezvousSettings`
checks each file is readable when the settings are made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fdo.crypto import load_public_key, spki_der
from fdo.errors import FdoError


class TrustSettings(Protocol):
    """The settings the allow-lists are read from."""

    trusted_owner_keys: list[Path]
    trusted_manufacturer_keys: list[Path]


def read_key_spki(path: Path, setting: str) -> bytes:
    """DER SubjectPublicKeyInfo of the PEM/DER public key or certificate in ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        return spki_der(load_public_key(data))
    except FdoError as exc:
        raise ValueError(f"{setting}: {path} is not a usable public key: {exc.message}") from None


def owner_key_spkis(settings: TrustSettings) -> frozenset[bytes]:
    """SPKIs of the trusted owner keys (empty: any owner)."""
    return frozenset(read_key_spki(p, "trusted_owner_keys") for p in settings.trusted_owner_keys)


def manufacturer_key_spkis(settings: TrustSettings) -> frozenset[bytes]:
    """SPKIs of the trusted manufacturer keys (empty: any manufacturer)."""
    return frozenset(
        read_key_spki(p, "trusted_manufacturer_keys") for p in settings.trusted_manufacturer_keys
    )
