"""``fdo <service> db upgrade|current``: a service's schema migrations (a Typer app per service).

The database URL comes from the same settings as ``serve`` (``FDO_<SERVICE>_DATABASE_URL``,
``--config``/``FDO_<SERVICE>_CONFIG``), or ``--database-url``. The migrations themselves
are :mod:`fdo_server.migrate`, imported when a command runs so ``fdo`` stays light. (No
``from __future__ import annotations``: typer reads the option annotations made in
:func:`db_app` at run time.)
"""

import contextlib
import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from fdo_cli.common import die

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.engine import Engine

T = TypeVar("T")

#: The settings class of each service, ``module:name``.
SETTINGS = {
    "manufacturer": "manufacturer.settings:ManufacturerSettings",
    "rendezvous": "rendezvous.settings:RendezvousSettings",
    "owner": "owner.settings:OwnerSettings",
}


def database_url(service: str, config: Path | None, override: str | None) -> str:
    """The service's database URL: ``override``, else its settings (exit 2 if they are bad)."""
    if override:
        return override
    from fdo_server.config import ConfigError, load_settings

    module, _, name = SETTINGS[service].partition(":")
    cls = getattr(importlib.import_module(module), name)
    try:
        settings = load_settings(cls, config)
    except ConfigError as exc:
        raise die(str(exc), 2) from None
    return str(settings.database_url)


def run(service: str, action: "Callable[[], T]") -> T:
    """``action`` with schema and connection problems turned into one error line (exit 1)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fdo_server.migrate import SchemaError

    try:
        return action()
    except SchemaError as exc:
        raise die(str(exc)) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise die(f"the {service} database: {reason}") from None


def db_app(service: str) -> typer.Typer:
    """The ``db`` command group of ``service``."""
    app = typer.Typer(no_args_is_help=True, help=f"The {service} database schema (Alembic migrations).")
    prefix = f"FDO_{service.upper()}_"
    ConfigOpt = Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar=f"{prefix}CONFIG",
            help="TOML settings file (environment variables override it), as for serve.",
        ),
    ]
    UrlOpt = Annotated[
        str | None,
        typer.Option("--database-url", help=f"Database URL (default: {prefix}DATABASE_URL)."),
    ]

    @app.command("upgrade")
    def upgrade(
        config: ConfigOpt = None,
        url: UrlOpt = None,
        revision: Annotated[str, typer.Option("--revision", help="Target revision.")] = "head",
    ) -> None:
        """Migrate the database to the newest schema (an empty one gets the whole schema)."""
        from fdo_server import migrate

        target = database_url(service, config, url)
        before = run(service, lambda: migrate.status(target, service))
        after = run(service, lambda: migrate.upgrade(target, service, revision))
        if before.current == after.current:
            typer.echo(f"{after.describe()}: nothing to do")
        else:
            typer.echo(f"{after.describe()}: upgraded from {before.current or 'an empty database'}")

    @app.command("current")
    def current(
        config: ConfigOpt = None,
        url: UrlOpt = None,
        check: Annotated[bool, typer.Option("--check", help="Exit 1 unless at head.")] = False,
        wait: Annotated[
            float,
            typer.Option(
                "--wait",
                min=0,
                help="Wait up to this many seconds for the database to reach head (exit 1 if not).",
            ),
        ] = 0,
    ) -> None:
        """Print the database's schema revision and whether it is the newest (head)."""
        from sqlalchemy.exc import SQLAlchemyError

        from fdo_server import migrate

        target = database_url(service, config, url)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # --wait: an unreachable database is retried too
            try:
                if migrate.status(target, service).at_head:
                    break
            except SQLAlchemyError:
                pass
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        state = run(service, lambda: migrate.status(target, service))
        typer.echo(state.describe())
        if (check or wait) and not state.at_head:
            raise typer.Exit(1)

    return app


@contextlib.contextmanager
def local_engine(service: str, database_url: str) -> "Iterator[Engine]":
    """An engine on ``service``'s database for a local command, disposed afterwards;
    exits 1 with the one-line reason unless its schema is at head."""
    from fdo_server.db import make_engine

    engine = make_engine(database_url)
    try:
        require_current(service, engine)
        yield engine
    finally:
        engine.dispose()


def require_current(service: str, database: "Engine | str") -> None:
    """Exit 1 with the one-line reason unless the database is at head (for local commands)."""
    from fdo_server import migrate

    def check() -> None:
        migrate.require_current(database, service)

    run(service, check)
