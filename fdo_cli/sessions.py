"""``fdo <service> sessions sweep``: delete a service's expired protocol sessions now.

Each service sweeps them itself every ``session_sweep_seconds``
(:mod:`fdo_server.sweep`); this runs the same sweep once, e.g. from a timer when the
setting is 0. The database URL comes from the same settings as ``serve``, or
``--database-url``. (No ``from __future__ import annotations``: typer reads the option
annotations made in :func:`sessions_app` at run time.)
"""

from pathlib import Path
from typing import Annotated

import typer

from fdo_cli.db import database_url, local_engine, run


def sessions_app(service: str) -> typer.Typer:
    """The ``sessions`` command group of ``service``."""
    app = typer.Typer(no_args_is_help=True, help=f"The {service}'s protocol sessions (DI, TO0, TO1, TO2).")
    prefix = f"FDO_{service.upper()}_"

    @app.command("sweep")
    def sweep(
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                envvar=f"{prefix}CONFIG",
                help="TOML settings file (environment variables override it), as for serve.",
            ),
        ] = None,
        url: Annotated[
            str | None,
            typer.Option("--database-url", help=f"Database URL (default: {prefix}DATABASE_URL)."),
        ] = None,
    ) -> None:
        """Delete the expired protocol sessions and print how many there were."""
        from fdo_server.clock import utc_now
        from fdo_server.sql import Database
        from fdo_server.sweep import sweep_expired

        target = database_url(service, config, url)
        with local_engine(service, target):  # the schema checked first
            database = Database(target)
            try:
                deleted = run(service, lambda: sweep_expired(database, utc_now()))
            finally:
                database.dispose()
        typer.echo(f"deleted {deleted} expired session(s)")

    return app
