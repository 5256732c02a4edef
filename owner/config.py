"""The owner's configuration as loaded from its settings (:mod:`owner.settings`): keys,
TO2 addresses and the ServiceInfo file's actions.

:func:`load_config` checks the settings and loads what they name, raising
:class:`SettingsError` that names the offending setting; the service calls it at start
so a bad setting fails before any device connects. No pydantic here: a worker that
serves only devices loads its configuration from the settings ``serve`` handed it
(:mod:`fdo_server.handed`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdo.crypto import KEY_KINDS, PrivateKeyT, key_kind, load_private_key
from fdo.errors import FdoError
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry

if TYPE_CHECKING:
    from owner.settings import OwnerSettings

PREFIX = "FDO_OWNER_"


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class DownloadAction:
    """Send ``data`` to the device as ``path`` (fdo.download)."""

    path: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CommandAction:
    """Run ``command args...`` on the device (fdo.command)."""

    command: str
    args: tuple[str, ...] = ()
    may_fail: bool = False


@dataclass(frozen=True)
class OwnerConfig:
    """The checked, loaded form of :class:`OwnerSettings`."""

    settings: OwnerSettings
    keys: dict[str, PrivateKeyT]
    to2_addr: RVTO2Addr | None
    downloads: tuple[DownloadAction, ...] = ()
    commands: tuple[CommandAction, ...] = ()


def _name(setting: str) -> str:
    return PREFIX + setting.upper()


@functools.lru_cache(maxsize=16)
def _key_from(data: bytes) -> PrivateKeyT:
    """The private key in ``data``, read and checked once per process (``fdo owner serve``
    loads the settings once to check them and once more to serve them; an RSA key's check
    signs and verifies, :func:`fdo.crypto.load_private_key`)."""
    return load_private_key(data)


def load_keys(keys: dict[str, Path]) -> dict[str, PrivateKeyT]:
    out: dict[str, PrivateKeyT] = {}
    if not keys:
        raise SettingsError(f"{_name('keys')}: no owner keys configured")
    for kind, path in keys.items():
        if kind not in KEY_KINDS:
            raise SettingsError(
                f"{_name('keys')}: unknown key kind {kind!r} (use one of {', '.join(KEY_KINDS)})"
            )
        try:
            key = _key_from(Path(path).read_bytes())
        except OSError as exc:
            raise SettingsError(
                f"{_name('keys')}: cannot read the {kind} key {path}: {exc.strerror}"
            ) from None
        except FdoError as exc:
            raise SettingsError(
                f"{_name('keys')}: {path} holds no supported private key ({exc.message})"
            ) from None
        if key_kind(key) != kind:
            raise SettingsError(f"{_name('keys')}: {path} is a {key_kind(key)} key, not {kind}")
        out[kind] = key
    return out


def to2_addr_entry(url: str) -> RVTO2AddrEntry:
    """An RVTO2AddrEntry for a base URL (``http(s)://host[:port]``)."""
    try:
        return RVTO2AddrEntry.from_url(url)
    except ValueError as exc:
        raise SettingsError(f"{_name('to2_urls')}: {exc}") from None


def _load_service_info(path: Path) -> tuple[tuple[DownloadAction, ...], tuple[CommandAction, ...]]:
    what = _name("service_info")
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{what}: cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            doc: Any = json.loads(text)
        else:
            import tomllib  # only with a service-info file in TOML

            doc = tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is one
        raise SettingsError(
            f"{what}: {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{what}: {path} must hold a table")
    downloads: list[DownloadAction] = []
    commands: list[CommandAction] = []
    try:
        for item in doc.get("download", []):
            source = path.parent / str(item["source"])
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise SettingsError(f"{what}: download source {source}: {exc.strerror}") from None
            downloads.append(DownloadAction(path=str(item["path"]), data=data))
        for item in doc.get("command", []):
            args = item.get("args", [])
            if not isinstance(args, list):
                raise SettingsError(f"{what}: command args must be a list")
            commands.append(
                CommandAction(
                    command=str(item["command"]),
                    args=tuple(str(a) for a in args),
                    may_fail=bool(item.get("may_fail", False)),
                )
            )
    except (KeyError, TypeError) as exc:
        raise SettingsError(f"{what}: {path}: bad or missing entry field {exc}") from None
    return tuple(downloads), tuple(commands)


def load_config(settings: OwnerSettings) -> OwnerConfig:
    """Check ``settings`` and load what they name; raises :class:`SettingsError`."""
    keys = load_keys(settings.keys)
    entries = tuple(to2_addr_entry(u) for u in settings.to2_urls)
    for name in ("to0_wait_seconds", "to0_retry_seconds", "to0_max_backoff_seconds", "to0_claim_seconds"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{_name(name)} must be at least 1")
    if settings.to0_wait_seconds > 0xFFFFFFFF:
        raise SettingsError(f"{_name('to0_wait_seconds')} must fit in 32 bits")
    if not 0 < settings.to0_renew_fraction < 1:
        raise SettingsError(f"{_name('to0_renew_fraction')} must be between 0 and 1")
    if settings.to0_interval_seconds < 0:
        raise SettingsError(f"{_name('to0_interval_seconds')} must be 0 (no limit) or positive")
    if settings.tls_ca is not None and not settings.tls_ca.is_file():
        raise SettingsError(f"{_name('tls_ca')}: {settings.tls_ca}: no such file")
    downloads: tuple[DownloadAction, ...] = ()
    commands: tuple[CommandAction, ...] = ()
    if settings.service_info is not None:
        downloads, commands = _load_service_info(settings.service_info)
    return OwnerConfig(
        settings=settings,
        keys=keys,
        to2_addr=RVTO2Addr(entries) if entries else None,
        downloads=downloads,
        commands=commands,
    )
