"""Owner service settings (``FDO_OWNER_...`` environment variables).

:class:`OwnerSettings` holds what the operator wrote; :func:`load_config`
(:mod:`owner.config`) checks it and loads what it names (keys, TO2 addresses, the ServiceInfo file), raising
:class:`SettingsError` that names the offending setting. The service calls it at start
so a bad setting fails before any device connects.

``FDO_OWNER_KEYS`` is JSON mapping a key kind (``ec256``, ``ec384``, ``rsa2048``,
``rsa3072``) to a PEM file; ``FDO_OWNER_TO2_URLS`` is a JSON list of base URLs.
The ServiceInfo file (TOML or JSON) lists actions run on every device::

    [[download]]
    path = "/etc/motd"          # name on the device
    source = "files/motd"       # local file, relative to this file

    [[command]]
    command = "/usr/bin/systemctl"
    args = ["restart", "sshd"]
    may_fail = false
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fdo_server.config import ServiceSettings, body_limit_field

# What the settings name, loaded without pydantic (a worker that serves only devices
# loads it from the settings serve handed it, fdo_server.handed); named here too.
from owner.config import (
    PREFIX,
    CommandAction,
    DownloadAction,
    OwnerConfig,
    SettingsError,
    load_config,
    load_keys,
    to2_addr_entry,
)

__all__ = [
    "PREFIX",
    "CommandAction",
    "DownloadAction",
    "OwnerConfig",
    "OwnerSettings",
    "SettingsError",
    "load_config",
    "load_keys",
    "to2_addr_entry",
]


class OwnerSettings(ServiceSettings):
    """Everything the owner service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    database_url: str = "sqlite:///owner.db"
    port: int = Field(default=8043, ge=1, le=65535)
    #: Key kind -> private key PEM file; one owner key per kind.
    keys: dict[str, Path] = {}
    #: The owner's public TO2 base URLs (``http://owner.example:8043``), sent in TO0.
    to2_urls: list[str] = []
    #: Registration lifetime asked of the rendezvous (TO0 WaitSeconds).
    to0_wait_seconds: int = 30 * 24 * 3600
    #: Renew when this fraction of the granted lifetime is left.
    to0_renew_fraction: float = 0.2
    #: The longest the scheduler sleeps without being woken (0: no limit). It sleeps
    #: until the next due time it reads from the database, and imports and TO2s in this
    #: process wake it; this bounds how late it notices work no one told it about
    #: (another replica's imports that replica could not finish).
    to0_interval_seconds: float = 300.0
    #: How many registrations the scheduler runs at once (threads, per process).
    to0_concurrency: int = Field(default=16, ge=1, le=256)
    #: First retry delay after a failure; doubled per failure up to the maximum.
    to0_retry_seconds: int = 60
    to0_max_backoff_seconds: int = 3600
    #: How long a claimed work item stays claimed if its worker dies.
    to0_claim_seconds: int = 300
    #: Run the TO0 scheduler thread inside the app (tests turn it off).
    to0_enabled: bool = True
    #: Credential reuse (spec §7): keep GUID, RV info and owner key after TO2.
    credential_reuse: bool = False
    #: Register the replacement voucher a TO2 makes (the device's new GUID) by TO0, so a
    #: device that is reset or re-imaged, or runs FDO again, finds its owner. Off: devices
    #: onboard once; a later TO1 with the new GUID finds no owner.
    to0_replacements: bool = True
    #: How often devices check in (``fdo device agent``; the answer tells them).
    checkin_interval_seconds: int = Field(default=300, ge=5, le=7 * 24 * 3600)
    #: A device is ``overdue`` after this many intervals without a check-in.
    checkin_overdue_intervals: int = Field(default=3, ge=1, le=1000)
    #: Sign-in attempts (``POST /ui/login``) one client address may make per second, per
    #: worker, after a burst of ``login_burst``; 0: no limit. Over it: 429 and Retry-After.
    login_rate: float = Field(default=0.2, ge=0, le=1000)
    login_burst: int = Field(default=10, ge=1, le=10_000)
    #: While a rollout runs, each owner process looks at it at least every 12 ticks (its
    #: safety interval; sooner when something is due or it is woken); with none running it
    #: has no timer (docs/rollouts.md).
    rollout_tick_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: TOML/JSON file of ServiceInfo actions for every device.
    service_info: Path | None = None
    #: CA bundle (PEM) the TO0 client verifies https rendezvous servers with. Unset: the
    #: system CAs, or the file named by the standard ``SSL_CERT_FILE`` variable.
    tls_ca: Path | None = None
    #: Status page (``/ui``) sign-in sessions: they end this long after sign-in, or after
    #: this long without a page read, whichever comes first.
    ui_session_seconds: int = Field(default=12 * 3600, ge=1, le=30 * 24 * 3600)
    ui_idle_seconds: int = Field(default=30 * 60, ge=1, le=30 * 24 * 3600)
    # trusted_proxies (X-Forwarded-Proto for the /ui cookies): the shared ServiceSettings one.
    #: Largest body of ``POST /api/v1/vouchers`` (voucher import: PEM, many vouchers).
    max_voucher_import_body: int = body_limit_field(16 * 1024 * 1024)
    #: Largest body of ``POST /api/v1/vouchers/extend`` (a batch of GUIDs and a key).
    max_voucher_extend_body: int = body_limit_field(4 * 1024 * 1024)
    #: Largest body of ``POST /api/v1/groups/{name}/revisions`` (a revision with its
    #: files, each up to 1 MiB).
    max_revision_body: int = body_limit_field(16 * 1024 * 1024)
