"""Manufacturer settings (environment ``FDO_MANUFACTURER_...``).

:class:`ManufacturerSettings` only holds paths and values; :func:`load_material`
(:mod:`manufacturer.material`) reads the PEM files once at start and fails with one
:class:`SettingsError` naming the setting at fault.

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
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from fdo.crypto import KEY_KINDS
from fdo_server.config import IPNetwork, Networks, ServiceSettings, body_limit_field, parse_networks

# The material's loading has no pydantic (a device-plane worker loads it from handed
# settings, fdo_server.handed); named here too, where the CLI and tests import them.
from manufacturer.material import (
    ENV_PREFIX,
    ManufacturerMaterial,
    SettingsError,
    load_material,
    rendezvous_directive,
)

__all__ = [
    "ENV_PREFIX",
    "ManufacturerMaterial",
    "ManufacturerSettings",
    "SettingsError",
    "load_material",
    "rendezvous_directive",
]


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
