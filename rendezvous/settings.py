"""Rendezvous service settings: environment variables ``FDO_RENDEZVOUS_*``.

Key allow-lists are PEM files (public keys or certificates) named in settings; they are
read and checked when the settings object is created, so a typo stops the service at
start with an error naming the setting rather than at the first TO0.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from fdo_server.config import ServiceSettings
from rendezvous.trust import read_key_spki

THIRTY_DAYS = 30 * 24 * 3600


class RendezvousSettings(ServiceSettings):
    """Settings of one rendezvous service (all replicas share the database)."""

    model_config = SettingsConfigDict(env_prefix="FDO_RENDEZVOUS_", extra="ignore")

    database_url: str = "sqlite:///rendezvous.db"
    port: int = Field(default=8041, ge=1, le=65535)
    max_wait_seconds: int = Field(default=THIRTY_DAYS, ge=1, le=0xFFFFFFFF)
    #: TO0.Hello messages one client address may send per second, per worker (0: no
    #: limit), and at once before that rate applies: an owner registers its vouchers in
    #: bulk from one address, so TO0 has its own limit, ten times the
    #: ``first_message_rate`` and ``_burst`` that TO1 (devices) keeps (docs/configuration.md).
    to0_rate: float = Field(default=200, ge=0, le=1_000_000)
    to0_burst: int = Field(default=1000, ge=1, le=1_000_000)
    #: PEM files of the owner keys allowed to register; empty allows every owner.
    trusted_owner_keys: list[Path] = Field(default_factory=list)
    #: PEM files of the manufacturer keys whose vouchers may be registered; empty allows all.
    trusted_manufacturer_keys: list[Path] = Field(default_factory=list)

    @field_validator("trusted_owner_keys", "trusted_manufacturer_keys")
    @classmethod
    def _keys_readable(cls, paths: list[Path], info: ValidationInfo) -> list[Path]:
        setting = f"FDO_RENDEZVOUS_{(info.field_name or '').upper()}"
        for path in paths:
            read_key_spki(path, setting)
        return paths
