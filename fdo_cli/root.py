"""The ``fdo`` root command's own option, ``--version`` (:func:`fdo_cli.main.build_app`)."""

from typing import Annotated

import typer


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"fdo-bootc {version('fdo-bootc')}")
        except PackageNotFoundError:
            typer.echo("fdo-bootc (not installed as a distribution)")
        raise typer.Exit()


def root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """FIDO Device Onboard for bootc devices."""
