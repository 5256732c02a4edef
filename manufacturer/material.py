"""The manufacturer's key material: what DI needs from the service, read from the files
its settings name (:mod:`manufacturer.settings`).

:func:`load_material` reads the PEM files once at start and fails with one
:class:`SettingsError` naming the setting at fault. :class:`ManufacturerMaterial` is what
DI needs (:class:`fdo.di.manufacturer.DIManufacturerConfig`). No pydantic here: a worker
that serves only devices loads the material from the settings ``serve`` handed it
(:mod:`fdo_server.handed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fdo.crypto import (
    PrivateKeyT,
    PublicKey,
    cert_der,
    common_name,
    issue_device_cert,
    key_kind,
    load_private_key,
    spki_der,
)
from fdo.di.messages import MfgInfo
from fdo.errors import FdoError, MessageBodyError, UnsupportedError
from fdo.rvinfo import RendezvousDirective, RendezvousInfo

ENV_PREFIX = "FDO_MANUFACTURER_"


class SettingsError(Exception):
    """A setting is missing, names a missing file or holds something unusable."""


class MaterialSettings(Protocol):
    """The settings the material is read from."""

    keys: dict[str, Path]
    device_ca_key: Path | None
    device_ca_cert: Path | None
    rendezvous: list[str]


def rendezvous_directive(url: str) -> RendezvousDirective:
    """``http://host:port`` or ``https://ip:port`` as a RendezvousDirective (SettingsError if bad)."""
    try:
        return RendezvousDirective.from_url(url)
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}RENDEZVOUS: {exc}") from None


@dataclass(frozen=True)
class ManufacturerMaterial:
    """The loaded keys, device CA and rendezvous info (a DIManufacturerConfig)."""

    keys: dict[str, PrivateKeyT]
    ca_key: PrivateKeyT
    ca_chain: tuple[x509.Certificate, ...]
    rv: RendezvousInfo
    #: ``ov_public_key``'s answer per key kind, made on first use (one per DI otherwise).
    _public_keys: dict[str, PublicKey] = field(default_factory=dict, init=False, compare=False, repr=False)

    # ------------------------------------------------------------ DIManufacturerConfig

    def ov_public_key(self, info: MfgInfo) -> PublicKey:
        """The manufacturer key of the device's kind (the kind of the key in its CSR).

        Other implementations expect voucher entries to use the device's key type, so
        a device whose kind has no configured key is refused rather than given another.
        """
        kind = _device_kind(info)
        public = self._public_keys.get(kind)
        if public is None:
            key = self.keys.get(kind)
            if key is None:
                raise UnsupportedError(f"manufacturer has no {kind} key (configured: {', '.join(self.keys)})")
            public = self._public_keys[kind] = PublicKey.from_key(key.public_key())
        return public

    def issue_chain(self, csr: x509.CertificateSigningRequest, info: MfgInfo, now: datetime) -> list[bytes]:
        device_key = csr.public_key()
        name = common_name(info.serial or info.device_info or "")
        cert = issue_device_cert(self.ca_key, self.ca_chain[0], device_key, name, now)  # type: ignore[arg-type]
        return [cert_der(cert), *(cert_der(c) for c in self.ca_chain)]

    def rv_info(self, info: MfgInfo) -> RendezvousInfo:
        return self.rv

    # ------------------------------------------------------------ hand-off

    def key_for(self, public_key: PublicKey) -> PrivateKeyT | None:
        """The configured private key whose public half is ``public_key``."""
        wanted = spki_der(public_key.key)
        for key in self.keys.values():
            if spki_der(key.public_key()) == wanted:
                return key
        return None


def _device_kind(info: MfgInfo) -> str:
    """The kind of the key in the device's CSR. The DI machine has checked the CSR (its
    self-signature too, :func:`fdo.crypto.load_csr`) before it asks, so the request is
    only parsed here, not verified a second time."""
    if info.csr is None:
        raise UnsupportedError("DeviceMfgInfo carries no CSR")
    try:
        key = x509.load_der_x509_csr(info.csr).public_key()
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise MessageBodyError("CSR: not a DER PKCS#10 request with a readable key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise UnsupportedError("CSR: only EC and RSA keys are supported")
    return key_kind(key)


def _read(setting: str, path: Path | None) -> bytes:
    if path is None:
        raise SettingsError(f"{ENV_PREFIX}{setting} is not set")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(f"{ENV_PREFIX}{setting}: {path}: no such file") from None
    except OSError as exc:
        raise SettingsError(f"{ENV_PREFIX}{setting}: {path}: {exc.strerror}") from None


def _private_key(setting: str, path: Path | None) -> PrivateKeyT:
    data = _read(setting, path)
    try:
        return load_private_key(data)
    except FdoError as exc:
        raise SettingsError(f"{ENV_PREFIX}{setting}: {path}: {exc.message}") from None


def load_material(settings: MaterialSettings) -> ManufacturerMaterial:
    """Read and check every key, certificate and URL the settings name (SettingsError)."""
    if not settings.keys:
        raise SettingsError(f"{ENV_PREFIX}KEYS: at least one manufacturer key is needed")
    keys: dict[str, PrivateKeyT] = {}
    for kind, path in settings.keys.items():
        setting = f"KEYS__{kind.upper()}"
        key = _private_key(setting, path)
        if key_kind(key) != kind:
            raise SettingsError(f"{ENV_PREFIX}{setting}: {path} holds a {key_kind(key)} key, not {kind}")
        keys[kind] = key
    ca_key = _private_key("DEVICE_CA_KEY", settings.device_ca_key)
    ca_data = _read("DEVICE_CA_CERT", settings.device_ca_cert)
    try:
        chain = tuple(x509.load_pem_x509_certificates(ca_data))
    except ValueError:
        raise SettingsError(
            f"{ENV_PREFIX}DEVICE_CA_CERT: {settings.device_ca_cert}: no PEM certificate"
        ) from None
    if spki_der(chain[0].public_key()) != spki_der(ca_key.public_key()):  # type: ignore[arg-type]
        raise SettingsError(
            f"{ENV_PREFIX}DEVICE_CA_CERT: {settings.device_ca_cert} does not match {ENV_PREFIX}DEVICE_CA_KEY"
        )
    if not settings.rendezvous:
        raise SettingsError(f"{ENV_PREFIX}RENDEZVOUS: at least one rendezvous URL is needed")
    rv = RendezvousInfo.of([rendezvous_directive(url) for url in settings.rendezvous])
    return ManufacturerMaterial(keys, ca_key, chain, rv)
