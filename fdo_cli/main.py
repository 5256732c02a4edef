"""The ``fdo`` command: a registry of command groups, one module each.

``fdo device ...`` is what a device runs, on hardware that may be small, so
:func:`main` keeps it cheap: ``fdo device onboard`` with plain arguments runs without
typer (:func:`fdo_cli.device_onboard.fast_onboard`), and any other ``fdo device`` command
gets a root command holding only the device group, so the services' command groups are
not imported. Help, usage errors and exit codes are the same either way: the device
group's commands do not depend on their siblings. Everything else (``fdo --help``,
shell completion, the other groups) gets :data:`app`, the whole command, built on first
use: ``from fdo_cli.main import app`` still works.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

HELP = "FIDO Device Onboard for bootc devices."

# (name, module holding its Typer ``app``): add new groups here.
GROUPS: list[tuple[str, str]] = [
    ("keys", "fdo_cli.keys"),
    ("voucher", "fdo_cli.voucher"),
    ("device", "fdo_cli.device"),
    ("manufacturer", "manufacturer.cli"),
    ("rendezvous", "rendezvous.cli"),
    ("owner", "owner.cli"),
]


def build_app(only: str | None = None) -> typer.Typer:
    """The ``fdo`` command with every group (or only the group ``only``)."""
    import typer

    from fdo_cli.root import root as root_callback

    root = typer.Typer(no_args_is_help=True, help=HELP)
    root.callback()(root_callback)
    for name, module in GROUPS:
        if only is None or name == only:
            root.add_typer(import_module(module).app, name=name)
    return root


_app: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command, built once on first use."""
    global _app
    if name == "app":
        if _app is None:
            _app = build_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _completing() -> bool:
    """Whether the shell asks for completions (click's ``_<PROG>_COMPLETE`` variable)."""
    return any(key.startswith("_") and key.endswith("_COMPLETE") for key in os.environ)


def main(argv: list[str] | None = None) -> None:
    """The ``fdo`` console script (``argv``: the arguments, default ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["device"] and not _completing():
        if args[1:2] == ["onboard"]:
            from fdo_cli.device_onboard import fast_onboard

            fast_onboard(args[2:], os.environ)  # exits unless typer must parse the arguments
        command = build_app(only="device")
    else:
        command = __getattr__("app")
    if argv is None:
        command()
    else:
        command(args=argv, prog_name="fdo")
