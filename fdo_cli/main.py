"""The ``fdo`` command: a registry of command groups, one module each."""

import typer

from fdo_cli import device, keys, voucher
from manufacturer import cli as manufacturer_cli
from owner import cli as owner_cli
from rendezvous import cli as rendezvous_cli

app = typer.Typer(no_args_is_help=True, help="FIDO Device Onboard for bootc devices.")

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
