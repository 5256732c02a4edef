"""``fdo manufacturer``: run the service, set it up, and manage vouchers over its admin API.

``serve``, ``init``, ``token create`` and ``db upgrade|current`` work locally (settings
from the environment);
``vouchers ...`` call the admin API over HTTP (``--url``/``FDO_MANUFACTURER_URL``,
``--token``/``FDO_MANUFACTURER_TOKEN``). Service modules (FastAPI, SQLModel, httpx) are
imported inside the commands so that loading the ``fdo`` command stays light.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fdo_cli.common import die, read_public_key
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
    fetch,
    show_page,
)
from fdo_cli.sessions import sessions_app

if TYPE_CHECKING:
    from manufacturer.client import AdminClient
    from manufacturer.settings import ManufacturerSettings

app = typer.Typer(no_args_is_help=True, help="Manufacturer service: DI server and voucher hand-off.")
token_app = typer.Typer(no_args_is_help=True, help="Admin API tokens (local database).")
vouchers_app = typer.Typer(no_args_is_help=True, help="Vouchers, through the admin API.")
app.add_typer(token_app, name="token")
app.add_typer(vouchers_app, name="vouchers")
app.add_typer(db_app("manufacturer"), name="db")
app.add_typer(sessions_app("manufacturer"), name="sessions")

UrlOpt = Annotated[str, typer.Option("--url", envvar="FDO_MANUFACTURER_URL", help="Manufacturer base URL.")]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="FDO_MANUFACTURER_TOKEN", help="Admin API bearer token.")
]
KINDS = ("ec256", "ec384", "rsa2048", "rsa3072")


def _load_settings() -> ManufacturerSettings:
    """Settings from FDO_MANUFACTURER_* and FDO_MANUFACTURER_CONFIG (exit 2 if bad)."""
    from fdo_server.config import ConfigError, load_settings
    from manufacturer.settings import ManufacturerSettings

    try:
        return load_settings(ManufacturerSettings)
    except ConfigError as exc:
        raise die(str(exc), 2) from None


def _settings_or_die() -> ManufacturerSettings:
    from manufacturer.settings import SettingsError, load_material

    settings = _load_settings()
    try:
        load_material(settings)
    except SettingsError as exc:
        raise die(str(exc), 2) from None
    return settings


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Listen address (default: FDO_MANUFACTURER_HOST, 0.0.0.0)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (default: FDO_MANUFACTURER_PORT, 8038).")
    ] = None,
    admin_host: Annotated[
        str | None,
        typer.Option(
            "--admin-host", help="Admin listener address (default: FDO_MANUFACTURER_ADMIN_HOST, 127.0.0.1)."
        ),
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(
            "--admin-port",
            min=1,
            max=65535,
            help="Serve the admin API, /ui, /docs and /metrics on this port only (default: "
            "FDO_MANUFACTURER_ADMIN_PORT; unset: they share the device port).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="FDO_MANUFACTURER_TLS_CERT",
            help="Serve HTTPS with this PEM certificate (chain).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", envvar="FDO_MANUFACTURER_TLS_KEY", help="Private key (PEM) of --tls-cert."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="FDO_MANUFACTURER_CONFIG",
            help="TOML settings file (environment variables override it).",
        ),
    ] = None,
) -> None:
    """Run the manufacturer service (settings from FDO_MANUFACTURER_* variables and --config)."""
    from fdo_cli.serve import start

    start(
        "manufacturer",
        check=_settings_or_die,
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
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the keys and the device CA.")],
    rendezvous: Annotated[
        list[str] | None, typer.Option("--rendezvous", help="Rendezvous URL (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Generate the four manufacturer keys and a device CA; print the settings to use."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from fdo.crypto import generate_key, make_ca, private_key_to_pem
    from fdo_cli.keys import write_new_file

    directory.mkdir(parents=True, exist_ok=True)
    files = {kind: directory / f"manufacturer-{kind}.key" for kind in KINDS}
    ca_key_path, ca_cert_path = directory / "device-ca.key", directory / "device-ca.pem"
    if not force:
        for path in [*files.values(), ca_key_path, ca_cert_path]:
            if path.exists():
                raise die(f"{path} exists; use --force to overwrite it")
    for kind, path in files.items():
        write_new_file(path, private_key_to_pem(generate_key(kind)), mode=0o600, force=force)
    ca_key = generate_key("ec384")
    ca_cert = make_ca(ca_key, "FDO device CA", datetime.now(UTC))
    write_new_file(ca_key_path, private_key_to_pem(ca_key), mode=0o600, force=force)
    write_new_file(ca_cert_path, ca_cert.public_bytes(Encoding.PEM), mode=0o644, force=force)
    urls = rendezvous or ["http://localhost:8041"]
    keys = json.dumps({kind: str(path.resolve()) for kind, path in files.items()})
    lines = [
        f"FDO_MANUFACTURER_KEYS='{keys}'",
        f"FDO_MANUFACTURER_DEVICE_CA_KEY={ca_key_path.resolve()}",
        f"FDO_MANUFACTURER_DEVICE_CA_CERT={ca_cert_path.resolve()}",
        f"FDO_MANUFACTURER_RENDEZVOUS={','.join(urls)}",
    ]
    env_file = directory / "manufacturer.env"
    write_new_file(env_file, ("\n".join(lines) + "\n").encode(), mode=0o644, force=True)
    typer.echo("\n".join(lines))
    typer.echo(f"# also written to {env_file}", err=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the token.")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin.")] = "operator",
) -> None:
    """Create an admin API token in the local database and print it (shown once)."""
    from fdo_server.auth import Role, create_token
    from fdo_server.db import unit_of_work

    try:
        wanted = Role(role)
    except ValueError:
        raise die(f"unknown role {role!r}; expected viewer, operator or admin") from None
    with local_engine("manufacturer", _load_settings().database_url) as engine, unit_of_work(engine) as db:
        token = create_token(db, name, wanted)
    typer.echo(token)


# ---------------------------------------------------------------------------- vouchers


def _client(url: str, token: str) -> AdminClient:
    from manufacturer import client

    return client.open_client(url, token)


VOUCHER_COLUMNS = (
    col("GUID", "guid"),
    col("SERIAL", "serial"),
    col("MODEL", "model"),
    col("KEY", "key_kind"),
    col("CREATED", "created_at"),
    Column("OWNER KEY", lambda v: (v.get("owner_key_fingerprint") or "")[:16] or None),
)


@vouchers_app.command("list")
def vouchers_list(
    url: UrlOpt,
    token: TokenOpt,
    serial: Annotated[str | None, typer.Option(help="Serial number (* wildcard).")] = None,
    model: Annotated[str | None, typer.Option(help="Model / device info (* wildcard).")] = None,
    guid: Annotated[str | None, typer.Option(help="GUID.")] = None,
    limit: LimitOpt = None,
    offset: OffsetOpt = 0,
    every: AllOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List vouchers, newest first."""
    from manufacturer.client import AdminAPIError

    fmt = chosen(output, as_json)
    client = _client(url, token)
    try:
        page = fetch(
            lambda params: client.list_vouchers(serial=serial, model=model, guid=guid, **params),
            limit=limit,
            offset=offset,
            every=every,
        )
    except AdminAPIError as exc:
        raise die(str(exc)) from None
    show_page(page, fmt, VOUCHER_COLUMNS, "vouchers")


@vouchers_app.command("export")
def vouchers_export(
    guid: Annotated[str, typer.Argument(help="Voucher GUID.")],
    url: UrlOpt,
    token: TokenOpt,
    out: Annotated[Path | None, typer.Option("--out", help="Write the PEM here (default: stdout).")] = None,
) -> None:
    """Download one voucher as PEM."""
    from manufacturer.client import AdminAPIError

    try:
        pem = _client(url, token).export(guid)
    except AdminAPIError as exc:
        raise die(str(exc)) from None
    _emit(pem, out)


@vouchers_app.command("extend")
def vouchers_extend(
    guids: Annotated[list[str], typer.Argument(help="Voucher GUIDs.")],
    owner_key: Annotated[Path, typer.Option("--owner-key", help="Owner public key (PEM, or a cert/key).")],
    url: UrlOpt,
    token: TokenOpt,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the PEM(s) here (default: stdout).")
    ] = None,
) -> None:
    """Extend vouchers to an owner's public key (records the hand-off) and print them."""
    from fdo.crypto import public_key_to_pem
    from manufacturer.client import AdminAPIError

    key_pem = public_key_to_pem(read_public_key(owner_key)).decode()
    try:
        result = _client(url, token).extend(list(guids), key_pem)
    except AdminAPIError as exc:
        raise die(str(exc)) from None
    _emit(result["pem"], out)
    typer.echo(f"# extended {len(result['vouchers'])} voucher(s)", err=True)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"# wrote {out}", err=True)
