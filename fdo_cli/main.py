"""The ``fdo`` command: a registry of command groups, one module each."""

from typing import Annotated

import typer

from fdo_cli import device, keys, voucher
from manufacturer import cli as manufacturer_cli
from owner import cli as owner_cli
from rendezvous import cli as rendezvous_cli

app = typer.Typer(no_args_is_help=True, help="FIDO Device Onboard for bootc devices.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"fdo-bootc {version('fdo-bootc')}")
        except PackageNotFoundError:
            typer.echo("fdo-bootc (not installed as a distribution)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """FIDO Device Onboard for bootc devices."""


# (name, sub-app): add new groups (manufacturer, rendezvous, owner, device) here.
GROUPS: list[tuple[str, typer.Typer]] = [
    ("keys", keys.app),
    ("voucher", voucher.app),
    ("device", device.app),
    ("manufacturer", manufacturer_cli.app),
    ("rendezvous", rendezvous_cli.app),
    ("owner", owner_cli.app),
]

for _name, _group in GROUPS:
    app.add_typer(_group, name=_name)


def main() -> None:
    app()
