"""Manufacturer settings (environment ``FDO_MANUFACTURER_...``) and the key material they name.

:class:`ManufacturerSettings` only holds paths and values; :func:`load_material` reads
the PEM files once at start and fails with one :class:`SettingsError` naming the setting
at fault. :class:`ManufacturerMaterial` is what DI needs from the service
(:class:`fdo.di.manufacturer.DIManufacturerConfig`).

Environment examples::

    FDO_MANUFACTURER_DATABASE_URL=postgresql+psycopg://fdo@db/manufacturer
    FDO_MANUFACTURER_KEYS='{"ec256": "/etc/fdo/mfg-ec256.pem", "ec384": "/etc/fdo/mfg-ec384.pem"}'
    FDO_MANUFACTURER_KEYS__RSA2048=/etc/fdo/mfg-rsa2048.pem
    FDO_MANUFACTURER_DEVICE_CA_KEY=/etc/fdo/device-ca.key
    FDO_MANUFACTURER_DEVICE_CA_CERT=/etc/fdo/device-ca.pem
    FDO_MANUFACTURER_RENDEZVOUS=http://rv.example:8041,https://10.0.0.5:8443
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from fdo.crypto import (
    KEY_KINDS,
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
from fdo_server.config import IPNetwork, Networks, ServiceSettings, body_limit_field, parse_networks

ENV_PREFIX = "FDO_MANUFACTURER_"


class SettingsError(Exception):
    """A setting is missing, names a missing file or holds something unusable."""


class ManufacturerSettings(ServiceSettings):
    """Settings of ``fdo manufacturer serve`` (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    database_url: str = "sqlite:///manufacturer.db"
    port: int = Field(default=8038, ge=1, le=65535)
    #: Manufacturer (OVPubKey) private keys by kind: ec256, ec384, rsa2048, rsa3072.
    keys: dict[str, Path] = Field(default_factory=dict)
    device_ca_key: Path | None = None
    #: The device CA certificate (PEM; may hold the CA's own chain after it).
    device_ca_cert: Path | None = None
    #: Rendezvous URLs written into every credential, e.g. ``http://rv.example:8041``.
    rendezvous: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Largest body of ``POST /api/v1/vouchers/extend`` (a batch of GUIDs and a key).
    max_voucher_extend_body: int = body_limit_field(4 * 1024 * 1024)
    #: The only client networks that may run DI (``10.20.0.0/16, 192.0.2.7``); empty: any.
    di_networks: Networks = Field(default_factory=list)

    @field_validator("di_networks", mode="before")
    @classmethod
    def _di_networks(cls, value: Any) -> list[IPNetwork]:
        return parse_networks(value)

    @field_validator("rendezvous", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        # A JSON list or a comma/space separated string.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.replace(",", " ").split() if part]
        return value

    @field_validator("keys")
    @classmethod
    def _known_kinds(cls, value: dict[str, Path]) -> dict[str, Path]:
        out = {kind.lower(): path for kind, path in value.items()}
        unknown = sorted(set(out) - set(KEY_KINDS))
        if unknown:
            raise ValueError(f"unknown key kind(s) {unknown}; expected {', '.join(KEY_KINDS)}")
        return out


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


def load_material(settings: ManufacturerSettings) -> ManufacturerMaterial:
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
