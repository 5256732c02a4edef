"""``fdo device di``: DI at the factory, by a technician or by the first-boot DI unit."""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Annotated

import typer

from device import dmi
from fdo_cli.common import die
from fdo_cli.device_common import (
    CaBundleOpt,
    CredentialOpt,
    check_writable,
    device_env,
    save_credential,
    tls_verify,
)
from fdo_cli.keys import KeyType


def _identity(given: str | None, found: dmi.DmiValue, fallback: str, what: str) -> str:
    """``given``, else the DMI value, else ``fallback``; says on stderr where it came from."""
    if given:
        return given
    if found.value is not None:
        typer.echo(f"{what} {found.value!r} from {found.source}", err=True)
        return found.value
    typer.echo(f"{what} {fallback!r} (no usable {found.source}: {found.problem})", err=True)
    return fallback


def di(
    credential: CredentialOpt,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar=device_env("manufacturer-url"), help="Manufacturer base URL (http://host:port)."
        ),
    ] = None,
    key_type: Annotated[
        KeyType, typer.Option("--key-type", envvar=device_env("key-type"), help="Device key type.")
    ] = KeyType.EC256,
    serial: Annotated[
        str | None,
        typer.Option(
            "--serial",
            envvar=device_env("serial"),
            help="Serial number (default: DMI product_serial, else the hostname).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            envvar=device_env("model"),
            help="Model / device info (default: DMI product_name, else OS-architecture).",
        ),
    ] = None,
    ca_bundle: CaBundleOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing credential.")] = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Only when there is no credential yet, and only when a manufacturer URL is set "
            "(otherwise say so and exit 0): the first-boot DI unit.",
        ),
    ] = False,
    dmi_dir: Annotated[
        Path,
        typer.Option(
            "--dmi-dir",
            envvar=device_env("dmi-dir"),
            help="Folder holding the DMI product_serial and product_name files.",
        ),
    ] = dmi.DMI_DIR,
) -> None:
    """Generate the device key, run DI against the manufacturer and write the credential."""
    from device.onboard import DeviceClientError, default_client_factory, run_di

    if if_missing and force:
        raise die("--if-missing and --force contradict each other")
    if if_missing and credential.exists():
        typer.echo(f"{credential} exists: DI skipped")
        return
    if url is None:
        if if_missing:
            typer.echo(f"no manufacturer URL set (--url or {device_env('manufacturer-url')}): DI skipped")
            return
        raise die(f"a manufacturer URL is needed: --url or {device_env('manufacturer-url')}")
    if credential.exists() and not force:
        raise die(f"{credential} exists; use --force to replace it")
    check_writable(credential)  # before the manufacturer makes a voucher for a lost credential
    platform_model = f"{platform.system()}-{platform.machine()}".strip("-") or "device"
    try:
        cred = run_di(
            url,
            key_type=key_type.value,
            serial=_identity(serial, dmi.serial(dmi_dir), socket.gethostname() or "device", "serial"),
            model=_identity(model, dmi.model(dmi_dir), platform_model, "model"),
            http_client_factory=default_client_factory(verify=tls_verify(ca_bundle)),
        )
    except DeviceClientError as exc:
        raise die(str(exc)) from None
    save_credential(credential, cred)
    typer.echo(f"device credential written to {credential}")
    typer.echo(f"GUID {cred.guid}")


# ---------------------------------------------------------------------------- onboard
