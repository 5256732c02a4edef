"""``fdo rendezvous``: run the service and administer its database.

Only typer is imported at module level, so ``fdo`` starts without the server stack;
each command imports the service modules it needs when it runs.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fdo_cli.admin_http import list_page
from fdo_cli.db import db_app, local_engine
from fdo_cli.output import (
    AllOpt,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    OutputOpt,
    col,
)
from fdo_cli.sessions import sessions_app

if TYPE_CHECKING:
    from rendezvous.settings import RendezvousSettings

app = typer.Typer(no_args_is_help=True, help="The rendezvous service (TO0 and TO1).")
token_app = typer.Typer(no_args_is_help=True, help="Admin API tokens.")
registrations_app = typer.Typer(no_args_is_help=True, help="TO0 registrations (over the admin API).")
app.add_typer(token_app, name="token")
app.add_typer(registrations_app, name="registrations")
app.add_typer(db_app("rendezvous"), name="db")
app.add_typer(sessions_app("rendezvous"), name="sessions")

DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL (default: FDO_RENDEZVOUS_DATABASE_URL)."),
]

UrlOpt = Annotated[str, typer.Option("--url", envvar="FDO_RENDEZVOUS_URL", help="Rendezvous base URL.")]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="FDO_RENDEZVOUS_TOKEN", help="Admin API bearer token.")
]


class RoleName(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


def _settings(database_url: str | None) -> RendezvousSettings:
    from fdo_server.config import ConfigError, load_settings
    from rendezvous.settings import RendezvousSettings

    try:
        settings = load_settings(RendezvousSettings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if database_url is not None:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Listen address (default: FDO_RENDEZVOUS_HOST, 0.0.0.0)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (default: FDO_RENDEZVOUS_PORT, 8041).")
    ] = None,
    admin_host: Annotated[
        str | None,
        typer.Option(
            "--admin-host", help="Admin listener address (default: FDO_RENDEZVOUS_ADMIN_HOST, 127.0.0.1)."
        ),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(
            "--admin-port",
            min=1,
            max=65535,
            help="Serve the admin API, /ui, /docs and /metrics on this port only (default: "
            "FDO_RENDEZVOUS_ADMIN_PORT; unset: they share the device port).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="FDO_RENDEZVOUS_TLS_CERT",
            help="Serve HTTPS with this PEM certificate (chain).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", envvar="FDO_RENDEZVOUS_TLS_KEY", help="Private key (PEM) of --tls-cert."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="FDO_RENDEZVOUS_CONFIG",
            help="TOML settings file (environment variables override it).",
        ),
    ] = None,
) -> None:
    """Serve TO0/TO1 (settings from FDO_RENDEZVOUS_* environment variables and --config)."""
    from fdo_cli.serve import start

    start(
        "rendezvous",
        check=lambda: _settings(None),
        host=host,
        port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        workers=workers,
        tls_cert=tls_cert,
        tls_key=tls_key,
        config=config,
    )


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what the token is for.")],
    role: Annotated[RoleName, typer.Option("--role", case_sensitive=False, help="Token role.")],
    database_url: DatabaseOpt = None,
) -> None:
    """Create an admin API token in the service's database and print it (only this once)."""
    from fdo_server.auth import Role, create_token
    from fdo_server.db import unit_of_work

    with (
        local_engine("rendezvous", _settings(database_url).database_url) as engine,
        unit_of_work(engine) as db,
    ):
        token = create_token(db, name, Role(role.value))
    typer.echo(token)


@app.command()
def purge(database_url: DatabaseOpt = None) -> None:
    """Delete expired registrations and protocol sessions."""
    from fdo_server.clock import utc_now
    from fdo_server.db import unit_of_work
    from fdo_server.sessions import SQLSessionStore
    from rendezvous.store import purge_expired_registrations

    with (
        local_engine("rendezvous", _settings(database_url).database_url) as engine,
        unit_of_work(engine) as db,
    ):
        registrations = purge_expired_registrations(db, utc_now())
        sessions = SQLSessionStore().purge_expired()
    typer.echo(f"deleted {registrations} expired registration(s) and {sessions} session(s)")


@app.command()
def unpin(
    guid: Annotated[str, typer.Argument(help="The device GUID whose pin to clear.")],
    database_url: DatabaseOpt = None,
) -> None:
    """Clear a GUID's pin (manufacturer key and owner key chain) so that its next valid
    registration pins it anew: for a device whose voucher was legitimately re-issued."""
    import getpass

    from fdo.errors import MessageBodyError
    from fdo.types import Guid
    from fdo_server.db import lent, unit_of_work
    from rendezvous.pins import delete_pin, log_unpin

    try:
        parsed = Guid.parse(guid)
    except MessageBodyError:
        typer.echo(f"error: not a GUID: {guid}", err=True)
        raise typer.Exit(2) from None
    with (
        local_engine("rendezvous", _settings(database_url).database_url) as engine,
        unit_of_work(engine) as db,
    ):
        found = delete_pin(lent(db.connection()), parsed)
    if not found:
        typer.echo(f"error: GUID {parsed} is not pinned", err=True)
        raise typer.Exit(1)
    log_unpin(parsed, f"{getpass.getuser()} (fdo rendezvous unpin)")
    typer.echo(f"cleared the pin of GUID {parsed}: its next valid registration pins it anew")


@registrations_app.command("list")
def registrations_list(
    url: UrlOpt,
    token: TokenOpt,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the TO0 registrations (GUID, wait, registered, expires, live); never owner addresses."""
    columns = (
        col("GUID", "guid"),
        col("WAIT S", "wait_seconds", "right"),
        col("REGISTERED", "registered_at"),
        col("EXPIRES", "expires_at"),
        col("LIVE", "live"),
    )
    list_page(
        url,
        token,
        "/registrations",
        columns,
        "registrations",
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )
