"""Service settings from the environment and an optional TOML file (``--config``).

Every service keeps its settings in a pydantic-settings class with an environment prefix
(``FDO_<SERVICE>_``). :func:`load_settings` builds one, reading the TOML file named by
``--config`` or ``FDO_<SERVICE>_CONFIG`` first; environment variables override the
file, which overrides the defaults. The TOML keys are the setting names
(``database_url = "..."``, ``[keys]`` ``ec256 = "/path"``); an unknown key is an error.

:class:`ServiceSettings` holds the settings every service has (database URL, largest
FDO and other request bodies, session lifetime and sweep, listen addresses, trusted
proxies, first-message rate limits, connection limits and timeouts) with the same bounds in each.

Every problem is raised as one :class:`ConfigError` line naming the file or the setting
(``FDO_OWNER_MAX_BODY: Input should be a valid integer``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsError

S = TypeVar("S", bound=BaseSettings)


class ConfigError(Exception):
    """The settings file or a setting is unusable; the message is one line naming it."""


def env_prefix(cls: type[BaseSettings]) -> str:
    """The environment prefix of a settings class, e.g. ``FDO_OWNER_``."""
    return str(cls.model_config.get("env_prefix") or "")


def config_env_var(cls: type[BaseSettings]) -> str:
    """The variable naming a settings file, e.g. ``FDO_OWNER_CONFIG``."""
    return f"{env_prefix(cls)}CONFIG"


def read_config_file(cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    """The settings in TOML file ``path`` (ConfigError if unreadable, invalid or unknown keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"settings file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"settings file {path}: cannot read it: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise ConfigError(f"settings file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


class _DictSource(PydanticBaseSettingsSource):
    """Fixed values (a TOML file's) as a pydantic-settings source."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _with_file(cls: type[S], data: dict[str, Any]) -> type[S]:
    """``cls`` with ``data`` as a source below the environment and above the defaults."""

    def customise(
        _cls: type[BaseSettings],
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _DictSource(settings_cls, data))

    return type(cls.__name__, (cls,), {"settings_customise_sources": classmethod(customise)})


def format_validation_error(cls: type[BaseSettings], exc: ValidationError) -> str:
    """The first error of ``exc`` as one line naming the environment variable."""
    prefix = env_prefix(cls)
    errors = exc.errors()
    first = errors[0]
    parts = [str(part) for part in first["loc"] if not isinstance(part, int)]
    name = prefix + "__".join(parts).upper() if parts else prefix.rstrip("_")
    message = str(first["msg"]).removeprefix("Value error, ")
    if message.startswith(name + ":"):
        line = message
    else:
        line = f"{name}: {message}"
    more = len(errors) - 1
    return line + (f" (and {more} more)" if more else "")


def load_settings(cls: type[S], config: Path | None = None) -> S:
    """Settings of ``cls`` from the environment over TOML file ``config`` over the defaults.

    Without ``config`` the file named by ``FDO_<SERVICE>_CONFIG`` is read, if set.
    """
    if config is None:
        named = os.environ.get(config_env_var(cls), "").strip()
        config = Path(named) if named else None
    target: type[S] = cls if config is None else _with_file(cls, read_config_file(cls, config))
    try:
        settings = target()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(cls, exc)) from None
    except SettingsError as exc:
        raise ConfigError(_unparsable(cls, exc)) from None
    if type(settings) is cls:
        return settings
    values = {name: getattr(settings, name) for name in cls.model_fields}
    return cls.model_construct(_fields_set=settings.model_fields_set, **values)


def settings_values(settings: BaseSettings) -> dict[str, Any]:
    """Every setting of ``settings`` by name, as it holds them (for :mod:`fdo_server.handed`)."""
    return {name: getattr(settings, name) for name in type(settings).model_fields}


def hand_over_settings(service: str, settings: ServiceSettings, admin_port: int) -> str | None:
    """What ``serve`` hands its device workers (:func:`fdo_server.handed.hand_over`):
    ``settings`` with the admin port ``serve`` gives them."""
    from fdo_server.handed import hand_over

    return hand_over(service, {**settings_values(settings), "admin_port": admin_port})


def _unparsable(cls: type[BaseSettings], exc: SettingsError) -> str:
    """One line for a list or map setting whose environment value is not JSON (pydantic
    settings parses those as JSON before validating)."""
    found = re.search(r'field "([^"]+)"', str(exc))
    if found is None:
        return f"bad setting: {str(exc).splitlines()[0]}"
    field = found.group(1)
    name = f"{env_prefix(cls)}{field.upper()}"
    info = cls.model_fields.get(field)
    shown = str(info.annotation) if info is not None else ""
    example = '{"KEY": "VALUE"}' if "dict" in shown or "Mapping" in shown else '["VALUE", "VALUE"]'
    return f"{name}: not valid JSON; this setting is written as JSON, e.g. {name}='{example}'"


def check_database_url(value: str) -> str:
    """A pydantic validator body: ``value`` is a database URL the services open
    (:func:`fdo_server.sql.parse_url`: SQLite or PostgreSQL with psycopg), and a SQLite
    file's folder exists."""
    from fdo_server.sql import parse_url

    try:
        target = parse_url(value)
    except ValueError as exc:
        if "://" not in value:
            raise ValueError(f"{value!r} is not a database URL (e.g. sqlite:///path/service.db)") from None
        raise ValueError(str(exc)) from None
    if target.dialect == "sqlite" and not target.memory and not target.uri:
        folder = Path(target.database).parent
        if not folder.is_dir():
            raise ValueError(f"{value}: folder {folder} does not exist")
    return value


#: Bounds of ``max_body``: the spec's smallest ServiceInfo MTU (1300) must fit, and no
#: FDO message comes near 16 MiB (go and rs stop at 64 KiB and 16 KiB).
MIN_BODY = 1024
MAX_BODY = 16 * 1024 * 1024
#: Default and upper bound of the body limits of the other routes (admin API, ``/ui``,
#: device check-in and reports; :mod:`fdo_server.body_limit`).
DEFAULT_REQUEST_BODY = 1024 * 1024
MAX_REQUEST_BODY = 1024 * 1024 * 1024


def body_limit_field(default: int) -> Any:
    """A pydantic field for a request body limit in bytes (1024 bytes to 1 GiB)."""
    return Field(default=default, ge=MIN_BODY, le=MAX_REQUEST_BODY)


IPNetwork = IPv4Network | IPv6Network


def parse_networks(value: Any) -> list[IPNetwork]:
    """A pydantic ``before`` validator body: networks from a JSON list, a comma or space
    separated string (``10.0.0.0/8, 2001:db8::/32``) or a TOML list; a bare address is a
    one-address network."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.replace(",", " ").split()
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of networks (e.g. 10.0.0.0/8, 2001:db8::/32)")
    networks: list[IPNetwork] = []
    for item in value:
        if isinstance(item, IPv4Network | IPv6Network):
            networks.append(item)
            continue
        try:
            networks.append(ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (e.g. 10.0.0.0/8 or 192.0.2.7)") from None
    return networks


#: A settings field holding networks (see :func:`parse_networks`).
Networks = Annotated[list[IPNetwork], NoDecode]


class ServiceSettings(BaseSettings):
    """Settings every service reads; each subclass sets its prefix, its database default
    and its port (``port: int = Field(default=..., ge=1, le=65535)``)."""

    database_url: str
    #: Listen address and port of ``serve`` (``--host`` and ``--port`` override them).
    host: str = "0.0.0.0"  # noqa: S104 - a network service listens on all interfaces by default
    port: int = Field(ge=1, le=65535)
    #: Listen address and port of the admin plane (admin API, ``/ui``, ``/docs``,
    #: ``/metrics``; :mod:`fdo_server.planes`); ``--admin-host`` and ``--admin-port``
    #: override them. No port: the admin plane shares the device listener.
    admin_host: str = "127.0.0.1"
    admin_port: int | None = Field(default=None, ge=1, le=65535)
    #: With ``admin_port``: serve the admin plane from a process of its own, so the
    #: device listener's workers never load the admin stack (``serve --admin-process``).
    admin_process: bool = False
    #: Largest FDO request body in bytes.
    max_body: int = Field(default=65535, ge=MIN_BODY, le=MAX_BODY)
    #: Largest body of any other request (admin API, ``/ui``, device check-in and
    #: reports) unless its route has a setting of its own; enforced while reading.
    max_request_body: int = body_limit_field(DEFAULT_REQUEST_BODY)
    #: Lifetime of a protocol session (DI, TO0, TO1, TO2) between two messages.
    session_ttl_seconds: int = Field(default=600, ge=10, le=86400)
    #: Seconds between two sweeps of expired protocol sessions by each worker; 0: never
    #: (then run ``fdo <service> sessions sweep`` from a timer).
    session_sweep_seconds: float = Field(default=300, ge=0, le=86400)
    #: Proxies whose ``X-Forwarded-For`` (and ``X-Forwarded-Proto``) are believed: a
    #: request from one of these networks is from the first address, from the right of
    #: ``X-Forwarded-For``, that is not in them. Empty: the peer address, always.
    trusted_proxies: Networks = Field(default_factory=list)
    #: First messages of a protocol (DI.AppStart, TO0.Hello, TO1.HelloRV, TO2.HelloDevice)
    #: one client address may send per second, per worker; 0: no limit.
    first_message_rate: float = Field(default=20, ge=0, le=1_000_000)
    #: How many first messages one client address may send at once before the rate applies.
    first_message_burst: int = Field(default=100, ge=1, le=1_000_000)
    #: Client addresses whose rate each worker tracks (the least recently seen is forgotten).
    rate_limit_addresses: int = Field(default=10_000, ge=100, le=10_000_000)
    #: Open connections per worker; one more is answered 503 and closed. 0: no limit.
    max_connections: int = Field(default=1000, ge=0, le=1_000_000)
    #: Seconds a client has to send a complete request head (from connecting, or from the
    #: first byte of the next request on a kept-alive connection); 0: no limit.
    header_timeout_seconds: float = Field(default=10, ge=0, le=3600)
    #: Seconds a client has to send a complete request body once its head arrived; 0: no limit.
    body_timeout_seconds: float = Field(default=30, ge=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("admin_port")
    @classmethod
    def _admin_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value == info.data.get("port"):
            raise ValueError(f"{value} is the device port too; the admin listener needs a port of its own")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> list[IPNetwork]:
        return parse_networks(value)


def use_config_file(variable: str, path: Path | None) -> None:
    """Name settings file ``path`` in ``variable`` (``FDO_<SERVICE>_CONFIG``) for this process
    and the uvicorn workers it starts (they build their settings with :func:`load_settings`)."""
    if path is not None:
        os.environ[variable] = str(path.resolve())
