"""Service settings from the environment and an optional TOML file (``--config``).

Every service keeps its settings in an :class:`EnvSettings` class with an environment
prefix (``FDO_<SERVICE>_``). :func:`load_settings` builds one, reading the TOML file named
by ``--config`` or ``FDO_<SERVICE>_CONFIG`` first; environment variables override the
file, which overrides the defaults. The TOML keys are the setting names
(``database_url = "..."``, ``[keys]`` ``ec256 = "/path"``); an unknown key is an error.

:class:`ServiceSettings` holds the settings every service has (database URL, largest
FDO and other request bodies, session lifetime and sweep, listen addresses, trusted
proxies, first-message rate limits, connection limits and timeouts) with the same bounds in each.

Every problem is raised as one :class:`ConfigError` line naming the file or the setting
(``FDO_OWNER_MAX_BODY: Input should be a valid integer``).

:class:`EnvSettings` reads the environment as the pydantic-settings package's
``BaseSettings`` did for these classes (the services no longer import it: 70 modules and
5 MB per process, issue 15): one variable per field, ``env_prefix`` + the field name in
any case; a list, set, tuple, map or model field (or a union holding one) is written as
JSON unless annotated :class:`NoDecode`; with ``env_nested_delimiter`` a map field's
entries may come one variable each (``FDO_MANUFACTURER_KEYS__EC384=/path``); init
arguments override the environment, which overrides the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections import deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeGuard, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Json,
    RootModel,
    Secret,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo


class NoDecode:
    """Field marker (``Annotated[list[str], NoDecode]``): the environment's text goes to the
    field's validators as it is, not decoded as JSON first."""


class SettingsConfigDict(ConfigDict, total=False):
    """A settings class's ``model_config``: pydantic's keys and the environment's."""

    #: Prepended to each field name to name its variable (``FDO_OWNER_``).
    env_prefix: str
    #: Splits a variable naming an entry of a map or model field (``__``); None: no such
    #: variables.
    env_nested_delimiter: str | None
    #: Whether variable names (and init argument names) must match in case.
    case_sensitive: bool


class EnvDecodeError(ValueError):
    """A list, map or model field's environment value is not JSON."""

    def __init__(self, field: str) -> None:
        super().__init__(f'error parsing value for field "{field}" from the environment')
        #: The field's name.
        self.field = field


class EnvSettings(BaseModel):
    """A pydantic model whose fields also come from the environment (see the module
    docstring): ``Settings(**values)`` validates ``values`` over the environment over the
    defaults. Defaults are validated too, and unknown variables are ignored."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
        case_sensitive=False,
        env_prefix="",
        env_nested_delimiter=None,
    )

    def __init__(self, **values: Any) -> None:
        super().__init__(**settings_values(type(self), values))


S = TypeVar("S", bound=EnvSettings)


def settings_values(
    cls: type[EnvSettings], init: Mapping[str, Any], file: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What ``cls`` validates: ``init`` over the environment over ``file``, maps merged
    key by key (EnvDecodeError for a variable that is not the JSON its field needs)."""
    state = _init_values(cls, init)
    state = _deep_update(_env_values(cls), state)
    if file is not None:
        state = _deep_update(dict(file), state)
    return state


def _deep_update(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s entries, maps in both merged recursively."""
    out = base.copy()
    for key, value in over.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def _init_values(cls: type[EnvSettings], init: Mapping[str, Any]) -> dict[str, Any]:
    """``init`` with each argument that names a field (in any case unless case-sensitive)
    under the field's name; the first of several naming one field wins."""
    sensitive = bool(cls.model_config.get("case_sensitive", False))
    left = dict(init)
    out: dict[str, Any] = {}
    for name in cls.model_fields:
        matched = [key for key in init if (key == name if sensitive else key.lower() == name.lower())]
        if matched:
            out[name] = init[matched[0]]
            for key in matched:
                left.pop(key, None)
    out.update(left)
    return out


@dataclasses.dataclass(frozen=True)
class _Environment:
    """The variables a settings class reads, as its ``model_config`` says to."""

    #: Every variable, the names in lower case unless ``sensitive``.
    variables: Mapping[str, str]
    prefix: str
    delimiter: str | None
    sensitive: bool

    @classmethod
    def of(cls, settings: type[EnvSettings]) -> _Environment:
        """The environment of this process as ``settings`` reads it."""
        config = settings.model_config
        sensitive = bool(config.get("case_sensitive", False))
        variables = {(key if sensitive else key.lower()): value for key, value in os.environ.items()}
        prefix = str(config.get("env_prefix") or "")
        return cls(variables, prefix, config.get("env_nested_delimiter"), sensitive)

    def name(self, field_name: str) -> str:
        """The variable of a field (as the names in ``variables`` are written)."""
        return self.prefix + field_name if self.sensitive else (self.prefix + field_name).lower()


def _env_values(cls: type[EnvSettings]) -> dict[str, Any]:
    """The values of ``cls``'s fields that the environment holds, by field name."""
    env = _Environment.of(cls)
    data: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        try:
            value = _field_value(env, name, field)
        except ValueError as exc:
            raise EnvDecodeError(name) from exc
        if value is None:
            continue
        if not env.sensitive and isinstance(value, dict):
            value = _model_keys(field.annotation, value)
        data[name] = value
    return data


def _field_value(env: _Environment, name: str, field: FieldInfo) -> Any:
    """Field ``name``'s value from its variable and, for a list, map or model field, the
    variables naming its entries; None: the environment holds none."""
    value = env.variables.get(env.name(name))
    is_complex, allow_failure = _field_is_complex(field)
    if not is_complex:
        return value
    if value is None:
        return _nested(env, name, field) or None
    try:
        decoded: Any = _decode(field, value)
    except ValueError:
        if not allow_failure:
            raise
        decoded = value
    if isinstance(decoded, dict):
        return _deep_update(decoded, _nested(env, name, field))
    return decoded


def _nested(env: _Environment, name: str, field: FieldInfo) -> dict[str, Any]:
    """The entries of map or model field ``name`` named by variables ``<its variable>
    <delimiter>key`` (``FDO_MANUFACTURER_KEYS__EC384``), deeper ones nested, by key as
    written (lower case unless case-sensitive); each decoded as JSON if its type is a
    list, map or model."""
    delimiter = env.delimiter
    if not delimiter:
        return {}
    annotation = field.annotation
    is_dict = annotation is dict or _lenient_issubclass(get_origin(annotation), dict)
    start = env.name(name) + delimiter
    result: dict[str, Any] = {}
    for variable, value in env.variables.items():
        if not variable.startswith(start):
            continue
        *keys, last = variable[len(start) :].split(delimiter)
        node: Any = result
        target: Any = field
        parent = field
        for key in keys:
            target = _next_field(env, target, key)
            if isinstance(target, FieldInfo):
                parent = target
            if isinstance(node, dict):
                node = node.setdefault(key, {})
        target = _next_field(env, target, last)
        entry: Any = value
        if (target or is_dict) and value:
            if isinstance(target, FieldInfo):
                is_complex, allow_failure = _field_is_complex(target)
            elif target:
                is_complex, allow_failure = _annotation_is_complex(target, []), True
                if not is_complex and _raw_union_is_complex(target):
                    entry = _decode_union_value(parent, value)
            else:
                is_complex, allow_failure = True, True
            if is_complex:
                try:
                    entry = _decode(target if isinstance(target, FieldInfo) else None, value)
                except ValueError:
                    if not allow_failure:
                        raise
        if isinstance(node, dict):
            node[last] = entry
    return result


def _next_field(env: _Environment, field: Any, key: str) -> Any:
    """What entry ``key`` of ``field`` (a FieldInfo or a type) holds: a map's value type, a
    model's field, or None."""
    if not field:
        return None
    annotation = field.annotation if isinstance(field, FieldInfo) else field
    if _lenient_issubclass(get_origin(annotation), dict):
        args = get_args(annotation)
        return args[-1] if args else None
    for member in get_args(annotation):
        found = _next_field(env, member, key)
        if found:
            return found
    if _is_model(annotation):
        for name, sub in annotation.model_fields.items():
            names = (name, env.prefix + name)
            if key in names if env.sensitive else key.lower() in {n.lower() for n in names}:
                return sub
    return None


def _model_keys(annotation: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` of a model field with each key that names a field of the model in another
    case under the field's name, in nested models too."""
    model = _strip_annotated(_unwrap_optional(annotation))
    if not _is_model(model):
        return values
    out: dict[str, Any] = {}
    for key, value in values.items():
        found = next(((n, f) for n, f in model.model_fields.items() if n.lower() == key.lower()), None)
        if found is None:
            out[key] = value
            continue
        name, sub = found
        nested = _is_model(_strip_annotated(_unwrap_optional(sub.annotation))) and isinstance(value, dict)
        out[name] = _model_keys(sub.annotation, value) if nested else value
    return out


def _decode(field: FieldInfo | None, value: str) -> Any:
    """``value`` decoded as JSON, unless ``field`` is marked NoDecode (ValueError if not JSON)."""
    if field is not None and _is_no_decode(_field_annotation_and_metadata(field)[1]):
        return value
    return json.loads(value)


def _decode_union_value(field: FieldInfo, value: str) -> Any:
    """``value`` decoded if it is a JSON array or object, else as it is."""
    try:
        decoded = _decode(field, value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, list | dict) else value


def _is_no_decode(metadata: Sequence[Any]) -> bool:
    return any(item is NoDecode or isinstance(item, NoDecode) for item in metadata)


# The rule of pydantic-settings (its sources/utils.py) for the fields it decodes as JSON.


def _field_is_complex(field: FieldInfo) -> tuple[bool, bool]:
    """Whether ``field``'s variable is decoded as JSON, and whether text that is not JSON is
    then kept as it is (a union of a list, map or model with a plain type) or an error."""
    annotation, metadata = _field_annotation_and_metadata(field)
    if _annotation_is_complex(field.annotation, field.metadata):
        return True, False
    if _is_union(get_origin(annotation)) and _union_is_complex(annotation, metadata):
        return True, True
    return False, False


def _annotation_is_complex(annotation: Any, metadata: Sequence[Any]) -> bool:
    """A model, map, sequence (not text), set, tuple, deque or dataclass type, or a generic
    of one, unless marked Json or a Secret."""
    annotation = _resolve_alias(annotation)
    if _lenient_issubclass(annotation, RootModel) and annotation is not RootModel:
        root = annotation.model_fields["root"].annotation
        if root is not None:
            annotation = root
    if any(isinstance(item, Json) for item in metadata):  # type: ignore[misc]
        return False
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *meta = get_args(annotation)
        return _annotation_is_complex(inner, meta)
    if _lenient_issubclass(origin, Secret):
        return False
    return (
        _complex_type(annotation)
        or _complex_type(origin)
        or hasattr(origin, "__pydantic_core_schema__")
        or hasattr(origin, "__get_pydantic_core_schema__")
    )


def _complex_type(annotation: Any) -> bool:
    if _lenient_issubclass(annotation, str | bytes):
        return False
    kinds = (BaseModel, Mapping, Sequence, AbstractSet, tuple, set, frozenset, deque)
    return _lenient_issubclass(annotation, kinds) or dataclasses.is_dataclass(annotation)


def _union_is_complex(annotation: Any, metadata: Sequence[Any], seen: tuple[Any, ...] = ()) -> bool:
    """Whether a member of union ``annotation`` (unions in it too) is complex."""
    for member in get_args(annotation):
        if member in seen:
            continue
        path = (*seen, member)
        member = _resolve_alias(member)
        if _annotation_is_complex(member, metadata):
            return True
        inner = _unwrap_union_member(member)
        if _is_union(get_origin(inner)) and _union_is_complex(inner, metadata, path):
            return True
    return False


def _raw_union_is_complex(annotation: Any) -> bool:
    union = _unwrap_union_member(_resolve_alias(annotation))
    return _is_union(get_origin(union)) and _union_is_complex(union, [])


def _unwrap_union_member(annotation: Any) -> Any:
    """``annotation`` without its Annotated layers; None if one is marked Json."""
    while get_origin(annotation) is Annotated:
        annotation, *meta = get_args(annotation)
        if any(isinstance(item, Json) for item in meta):  # type: ignore[misc]
            return None
        annotation = _resolve_alias(annotation)
    return annotation


def _field_annotation_and_metadata(field: FieldInfo) -> tuple[Any, list[Any]]:
    annotation = _resolve_alias(field.annotation)
    metadata = list(field.metadata)
    if get_origin(annotation) is Annotated:
        annotation, *meta = get_args(annotation)
        metadata = [*metadata, *meta]
    return annotation, metadata


def _resolve_alias(annotation: Any) -> Any:
    """The value of a type alias (``type X = list[int]``, unparameterised), else ``annotation``."""
    while type(annotation).__name__ == "TypeAliasType" and hasattr(annotation, "__value__"):
        annotation = annotation.__value__
    return annotation


def _strip_annotated(annotation: Any) -> Any:
    return annotation.__origin__ if get_origin(annotation) is Annotated else annotation


def _unwrap_optional(annotation: Any) -> Any:
    """``X`` for ``X | None`` (``Optional[X]``), else ``annotation``."""
    if _is_union(get_origin(annotation)):
        members = get_args(annotation)
        if len(members) == 2 and type(None) in members:
            return next(member for member in members if member is not type(None))
    return annotation


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return _lenient_issubclass(annotation, BaseModel) and annotation is not BaseModel


def _lenient_issubclass(cls: Any, kinds: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, kinds)


class ConfigError(Exception):
    """The settings file or a setting is unusable; the message is one line naming it."""


def env_prefix(cls: type[EnvSettings]) -> str:
    """The environment prefix of a settings class, e.g. ``FDO_OWNER_``."""
    return str(cls.model_config.get("env_prefix") or "")


def config_env_var(cls: type[EnvSettings]) -> str:
    """The variable naming a settings file, e.g. ``FDO_OWNER_CONFIG``."""
    return f"{env_prefix(cls)}CONFIG"


def read_config_file(cls: type[EnvSettings], path: Path) -> dict[str, Any]:
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


def format_validation_error(cls: type[EnvSettings], exc: ValidationError) -> str:
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
    data = None if config is None else read_config_file(cls, config)
    try:
        return cls.model_validate(settings_values(cls, {}, data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(cls, exc)) from None
    except EnvDecodeError as exc:
        raise ConfigError(_unparsable(cls, exc)) from None


def _unparsable(cls: type[EnvSettings], exc: EnvDecodeError) -> str:
    """One line for a list or map setting whose environment value is not JSON (the
    environment's value of those is parsed as JSON before validating)."""
    name = f"{env_prefix(cls)}{exc.field.upper()}"
    info = cls.model_fields.get(exc.field)
    shown = str(info.annotation) if info is not None else ""
    example = '{"KEY": "VALUE"}' if "dict" in shown or "Mapping" in shown else '["VALUE", "VALUE"]'
    return f"{name}: not valid JSON; this setting is written as JSON, e.g. {name}='{example}'"


def check_database_url(value: str) -> str:
    """A pydantic validator body: ``value`` parses as an SQLAlchemy URL, and a SQLite file's
    folder exists."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"{value!r} is not a database URL (e.g. sqlite:///path/service.db)") from None
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).parent
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


class ServiceSettings(EnvSettings):
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
