"""``fdo owner``: run the owner service and administer it.

Service modules (FastAPI, SQLModel, httpx) are imported inside the commands, so that
``import fdo_cli.main`` stays light for devices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from fdo.crypto import KEY_KINDS, generate_key, private_key_to_pem, public_key_to_pem
from fdo_cli.admin_http import list_page
from fdo_cli.common import die, read_bytes, read_public_key
from fdo_cli.db import db_app, local_engine
from fdo_cli.output import (
    AllOpt,
    Column,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    OutputOpt,
    chosen,
    col,
    show_object,
)
from fdo_cli.sessions import sessions_app
from owner.cli_admin import APPS as ADMIN_APPS
from owner.cli_admin import call, status
from owner.cli_rollouts import rollouts_app

app = typer.Typer(no_args_is_help=True, help="The owner service: TO0, TO2, vouchers.")
token_app = typer.Typer(no_args_is_help=True, help="Admin API tokens.")
vouchers_app = typer.Typer(no_args_is_help=True, help="Vouchers held by the owner (over the admin API).")
to0_app = typer.Typer(no_args_is_help=True, help="TO0 registrations.")
app.add_typer(token_app, name="token")
app.add_typer(vouchers_app, name="vouchers")
app.add_typer(to0_app, name="to0")
app.add_typer(db_app("owner"), name="db")
app.add_typer(sessions_app("owner"), name="sessions")
for _name, _sub in ADMIN_APPS:
    app.add_typer(_sub, name=_name)
app.add_typer(rollouts_app, name="rollouts")
app.command("status")(status)

UrlOpt = Annotated[str, typer.Option("--url", envvar="FDO_OWNER_URL", help="Owner service base URL.")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="FDO_OWNER_TOKEN", help="Admin API bearer token.")]


def _load_settings() -> Any:
    """Settings from FDO_OWNER_* and FDO_OWNER_CONFIG (exit 2 if bad)."""
    from fdo_server.config import ConfigError, load_settings
    from owner.settings import OwnerSettings

    try:
        return load_settings(OwnerSettings)
    except ConfigError as exc:
        raise die(str(exc), 2) from None


def _config() -> Any:
    from owner.settings import SettingsError, load_config

    try:
        return load_config(_load_settings())
    except SettingsError as exc:
        raise die(str(exc), 2) from None


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default: FDO_OWNER_HOST, 0.0.0.0).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (default: FDO_OWNER_PORT, 8043).")
    ] = None,
    admin_host: Annotated[
        str | None,
        typer.Option(
            "--admin-host", help="Admin listener address (default: FDO_OWNER_ADMIN_HOST, 127.0.0.1)."
        ),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(
            "--admin-port",
            min=1,
            max=65535,
            help="Serve the admin API, /ui, /docs and /metrics on this port only (default: "
            "FDO_OWNER_ADMIN_PORT; unset: they share the device port).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert", envvar="FDO_OWNER_TLS_CERT", help="Serve HTTPS with this PEM certificate (chain)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", envvar="FDO_OWNER_TLS_KEY", help="Private key (PEM) of --tls-cert."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="FDO_OWNER_CONFIG",
            help="TOML settings file (environment variables override it).",
        ),
    ] = None,
) -> None:
    """Serve TO2 and the admin API, and run the TO0 scheduler (settings from FDO_OWNER_... and --config)."""
    from fdo_cli.serve import start

    start(
        "owner",
        check=lambda: _config().settings,
        host=host,
        port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        workers=workers,
        tls_cert=tls_cert,
        tls_key=tls_key,
        config=config,
    )


@app.command()
def init(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the owner keys.")],
) -> None:
    """Generate one owner key per kind and print the FDO_OWNER_ settings that use them."""
    directory.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    for kind in KEY_KINDS:
        path = directory / f"owner-{kind}.pem"
        if path.exists():
            raise die(f"{path} exists; not overwriting owner keys")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, private_key_to_pem(generate_key(kind)))
        finally:
            os.close(fd)
        keys[kind] = str(path.resolve())
    typer.echo(f"FDO_OWNER_KEYS='{json.dumps(keys)}'")
    typer.echo(f"FDO_OWNER_DATABASE_URL=sqlite:///{(directory / 'owner.db').resolve()}")
    typer.echo("FDO_OWNER_TO2_URLS='[\"http://owner.example:8043\"]'")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who the token is for.")],
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")] = "viewer",
) -> None:
    """Create an admin API token in the local database and print it (once)."""
    from fdo_server.auth import Role, create_token
    from fdo_server.db import unit_of_work

    try:
        wanted = Role(role)
    except ValueError:
        raise die(f"unknown role {role!r} (admin, operator or viewer)") from None
    with local_engine("owner", _load_settings().database_url) as engine, unit_of_work(engine) as db:
        token = create_token(db, name, wanted)
    typer.echo(token)


def _request(method: str, url: str, token: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = httpx.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0, **kwargs
        )
    except httpx.HTTPError as exc:
        raise die(f"{url}: {exc}") from None
    if response.status_code in (401, 403, 404):
        raise die(f"{url}: HTTP {response.status_code}: {response.text}")
    try:
        return response.status_code, response.json()
    except ValueError:
        raise die(f"{url}: HTTP {response.status_code}: not JSON") from None


@vouchers_app.command("import")
def vouchers_import(
    files: Annotated[list[Path], typer.Argument(help="PEM files (several vouchers per file allowed).")],
    url: UrlOpt,
    token: TokenOpt,
) -> None:
    """Import vouchers; prints one line per voucher; exit 1 if any was refused."""
    refused = 0
    for path in files:
        status, body = _request("POST", url.rstrip("/") + "/api/v1/vouchers", token, content=read_bytes(path))
        for result in body.get("results", []):
            guid = result.get("guid") or "-"
            if result.get("status") == "imported":
                typer.echo(f"{path}[{result['index']}] {guid}: imported")
            else:
                refused += 1
                typer.echo(f"{path}[{result['index']}] {guid}: refused: {result.get('reason')}")
        if status not in (200, 422):
            raise die(f"{path}: HTTP {status}")
    if refused:
        raise typer.Exit(1)


VOUCHER_COLUMNS = (
    col("GUID", "guid"),
    col("STATE", "state"),
    col("DEVICE INFO", "device_info"),
    col("ENTRIES", "entries", "right"),
    Column("TO0", lambda v: (v.get("to0") or {}).get("registered_until") or "not registered"),
    Column("TO0 ERROR", lambda v: (v.get("to0") or {}).get("last_error")),
    col("IMPORTED", "imported_at"),
)


@vouchers_app.command("list")
def vouchers_list(
    url: UrlOpt,
    token: TokenOpt,
    state: Annotated[str | None, typer.Option(help="Only this state (active, handed_on, ...).")] = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the vouchers the owner holds, with their TO0 status (oldest first)."""
    filters = {"state": state} if state else {}
    list_page(
        url,
        token,
        "/vouchers",
        VOUCHER_COLUMNS,
        "vouchers",
        filters=filters,
        limit=limit,
        offset=offset,
        every=every,
        output=output,
        as_json=as_json,
    )


@vouchers_app.command("show")
def vouchers_show(
    guid: Annotated[str, typer.Argument(help="Voucher GUID.")],
    url: UrlOpt,
    token: TokenOpt,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one voucher: state, entries, final owner key fingerprint, TO0 status."""
    show_object(call("GET", url, token, f"/vouchers/{guid}"), chosen(output, as_json))


@vouchers_app.command("extend")
def vouchers_extend(
    guids: Annotated[list[str], typer.Argument(help="GUIDs of active vouchers to hand on.")],
    owner_key: Annotated[
        Path,
        typer.Option(
            "--owner-key",
            help="The next owner's public key (PEM or DER key, or a certificate), of the vouchers' key kind.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="New PEM file for the extended vouchers (- for stdout).")
    ],
    url: UrlOpt,
    token: TokenOpt,
) -> None:
    """Hand devices on (resale): extend vouchers to the next owner's key.

    Each voucher gets an entry signed with this owner's key to the next owner's key and
    is marked handed_on: this owner runs no more TO0 or TO2 for it. All vouchers go into
    one PEM file, which the next owner imports (fdo owner vouchers import, or go-fdo).
    All or nothing: any voucher that cannot be handed on (not active, key of the wrong
    kind) fails the whole command. Lost the file? GET /api/v1/vouchers/GUID/pem gives it again.
    """
    key_pem = public_key_to_pem(read_public_key(owner_key)).decode()
    to_stdout = str(out) == "-"
    fd = None
    if not to_stdout:
        # Created before the request: a hand-on cannot be undone, so its output must have a place.
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise die(f"{out} exists; not overwriting") from None
        except OSError as exc:
            raise die(f"cannot create {out}: {exc.strerror}") from None
    try:
        body = call("POST", url, token, "/vouchers/extend", json={"guids": guids, "owner_key_pem": key_pem})
    except BaseException:
        if fd is not None:
            os.close(fd)
            out.unlink(missing_ok=True)
        raise
    if fd is None:
        typer.echo(body["pem"], nl=False)
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(body["pem"])
    for item in body["vouchers"]:
        typer.echo(f"{item['guid']}: handed on to {item['owner_key_fingerprint'][:16]}", err=to_stdout)
    if not to_stdout:
        typer.echo(f"{len(body['vouchers'])} voucher(s) written to {out}")


@to0_app.command("run-once")
def to0_run_once() -> None:
    """Run the TO0 scheduler once against the local database."""
    from fdo_server.sql import Database
    from owner.app import worker_name
    from owner.to0 import run_due

    config = _config()
    url = config.settings.database_url
    with local_engine("owner", url):  # the schema checked first
        database = Database(url)
        try:
            count = run_due(database, config, worker_id=worker_name())
        finally:
            database.dispose()
    typer.echo(f"{count} voucher(s) processed")
