"""Settings read and validated once by ``serve``, handed to the workers that serve only devices.

A worker that serves only the device plane (``serve --admin-process``) would load
pydantic and pydantic-settings (13 MB of its memory) just to read the environment again.
``serve`` has read and validated the very same settings already (refusing bad ones with
one line, :mod:`fdo_server.config`) and the workers inherit its environment, so it puts
the validated values there too, in :data:`HANDED_ENV`: each setting's value as the
settings class holds it, pickled (standard-library types only: numbers, strings, paths,
networks, lists and maps), base64. Such a worker reads them back with :func:`handed`
into a :class:`HandedSettings`: the same names and values as the settings class, without
pydantic. ``tests/test_handed.py`` checks both agree for every service.

Only the classes in :data:`_ALLOWED` are unpickled: the variable is read by our own
processes only, but a value that named anything else would be a bug.
"""

from __future__ import annotations

import base64
import importlib
import io
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any

#: The environment variable ``serve`` hands the validated settings over in.
HANDED_ENV = "FDO_SERVE_SETTINGS"

_ALLOWED = frozenset(
    {
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("ipaddress", "IPv4Network"),
        ("ipaddress", "IPv6Network"),
        ("builtins", "frozenset"),
        ("builtins", "set"),
        ("builtins", "tuple"),
    }
)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{HANDED_ENV}: {module}.{name} is not a settings value")
        return super().find_class(module, name)


class HandedSettings:
    """A service's settings as ``serve`` validated them: each setting an attribute."""

    def __init__(self, service: str, values: Mapping[str, Any]) -> None:
        self.service = service
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self.service} has no setting {name!r}")

    def __repr__(self) -> str:
        return f"HandedSettings({self.service!r})"


def hand_over(service: str, values: Mapping[str, Any]) -> str | None:
    """What ``serve`` puts in :data:`HANDED_ENV`: ``values`` (every setting of
    ``service``'s validated settings, by name). None when a value is not of the types
    :func:`handed` reads back (the workers then read the environment themselves)."""
    try:
        data = pickle.dumps((service, dict(values)), protocol=pickle.HIGHEST_PROTOCOL)
        _Unpickler(io.BytesIO(data)).load()
    except (pickle.PickleError, TypeError, AttributeError):
        return None
    return base64.b64encode(data).decode()


def handed(service: str) -> HandedSettings | None:
    """The settings ``serve`` handed this process for ``service``; None when it handed
    none (a worker started some other way reads the environment itself)."""
    text = os.environ.get(HANDED_ENV)
    if not text:
        return None
    named, values = _Unpickler(io.BytesIO(base64.b64decode(text))).load()
    if named != service:
        return None
    return HandedSettings(service, values)


def main(argv: list[str] | None = None) -> int:
    """``python -m fdo_server.handed SERVICE ADMIN_PORT``: print what :func:`hand_over`
    makes of the service's settings, read from this environment and validated (with
    ``ADMIN_PORT`` as serve gives it), or the one-line reason they are unusable (exit 2).

    ``python -m fdo_server.serve`` runs it in a process of its own, so the supervisor
    never loads pydantic either (``fdo <service> serve`` has checked them itself).
    """
    from fdo_server.config import ConfigError, hand_over_settings, load_settings

    service, admin_port = (argv if argv is not None else sys.argv[1:])[:2]
    module = importlib.import_module(f"{service}.settings")
    try:
        settings = load_settings(getattr(module, f"{service.capitalize()}Settings"))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(hand_over_settings(service, settings, int(admin_port)) or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
