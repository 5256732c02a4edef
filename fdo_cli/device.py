"""``fdo device``: the device client (DI, onboarding, showing the credential).

The onboarding driver and the HTTP client are imported inside the commands that need
them, so ``fdo device show`` (and every other group) loads no HTTP stack. ``onboard``'s
work is :func:`fdo_cli.device_onboard.run_onboard`, which :func:`fdo_cli.main.main` also
runs without typer when the arguments are plain.

The options' types and environment variables (``FDO_DEVICE_<OPTION>``) are in
:mod:`fdo_cli.device_common`, ``di`` in :mod:`fdo_cli.device_di`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from device.credfile import CredentialFileError, read_credential_with_format
from fdo.credential import DeviceCredential
from fdo.crypto import key_kind
from fdo.errors import FdoError
from fdo.rvinfo import RendezvousDirective
from fdo_cli.common import die
from fdo_cli.device_checkin import agent_cmd, check_in_cmd
from fdo_cli.device_common import (
    APPLY_ROOT,
    DEFAULT_ROOT,
    DEFAULT_STATE_DIR,
    BootcOpt,
    CaBundleOpt,
    CredentialOpt,
    JsonOpt,
    StateDirOpt,
    SystemctlOpt,
    device_env,
)
from fdo_cli.device_di import di
from fdo_cli.device_onboard import CipherName, KexName, apply_assignment, run_onboard
from fdo_cli.output import Format, OutputOpt, chosen, emit_data

app = typer.Typer(no_args_is_help=True, help="Device client: DI, onboarding (TO1/TO2), credential.")
app.command()(di)
app.command("check-in")(check_in_cmd)
app.command("agent")(agent_cmd)


@app.command()
def onboard(
    credential: CredentialOpt,
    kex: Annotated[
        KexName | None, typer.Option("--kex", help="Key exchange suite (default: by device key).")
    ] = None,
    cipher: Annotated[CipherName, typer.Option("--cipher", help="Cipher suite.")] = CipherName.A128GCM,
    ca_bundle: CaBundleOpt = None,
    root: Annotated[
        Path,
        typer.Option(
            "--root",
            envvar=device_env("files-root"),
            help="Folder fdo.download writes to and fdo.upload reads from.",
        ),
    ] = DEFAULT_ROOT,
    no_command: Annotated[bool, typer.Option("--no-command", help="Do not offer fdo.command.")] = False,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            min=0,
            envvar=device_env("max-attempts"),
            help="Rounds over the directives (0: no limit).",
        ),
    ] = 5,
    deadline: Annotated[
        float | None, typer.Option("--deadline", min=0, help="Give up after this many seconds.")
    ] = None,
    as_json: JsonOpt = False,
    dry_run: Annotated[
        Path | None,
        typer.Option(
            "--dry-run",
            help="Onboard for real (TO2 replaces the credential; the owner sees the device onboarded) "
            "and store the assignment in --state-dir, but write the apply plan to this JSON file "
            "instead of applying it; fdo device apply applies it later.",
        ),
    ] = None,
    apply_root: Annotated[
        Path,
        typer.Option(
            "--apply-root",
            envvar=device_env("apply-root"),
            help="Root folder the bootc assignment is applied under.",
        ),
    ] = APPLY_ROOT,
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    bootc: BootcOpt = "bootc",
    systemctl: SystemctlOpt = "systemctl",
    no_bootc: Annotated[bool, typer.Option("--no-bootc", help="Do not offer the bootc module.")] = False,
    serial: Annotated[
        str | None,
        typer.Option(
            "--serial",
            envvar=device_env("serial"),
            help="Serial number to send as devmod sn and keep in the credential "
            "(default: the one kept at DI; for credentials written before it was kept, or by other tools).",
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--modules",
            help="Offer only these ServiceInfo modules, comma-separated (fdo.command, fdo.download, "
            "fdo.upload, com.fdo-bootc.bootc; empty: none), e.g. to see what a stock client gets.",
        ),
    ] = None,
    onboarded_file: Annotated[
        Path | None,
        typer.Option(
            "--onboarded-file",
            envvar=device_env("onboarded-file"),
            help="Create this file once onboarding (and applying, unless a dry run) succeeded: "
            "the first-boot unit's stamp.",
        ),
    ] = None,
) -> None:
    """Find the owner (TO1), onboard (TO2), write the credential, then apply the bootc assignment.

    A dry run (--dry-run PLAN.json) onboards too: the credential is replaced and the
    assignment stored; only applying it is left to fdo device apply.
    """
    # fdo_cli.main runs plain invocations without typer; the options are also in
    # fdo_cli.device_onboard.OPTIONS (a test keeps the two the same).
    run_onboard(
        credential=credential,
        kex=kex,
        cipher=cipher,
        ca_bundle=ca_bundle,
        root=root,
        no_command=no_command,
        max_attempts=max_attempts,
        deadline=deadline,
        as_json=as_json,
        dry_run=dry_run,
        apply_root=apply_root,
        state_dir=state_dir,
        bootc=bootc,
        systemctl=systemctl,
        no_bootc=no_bootc,
        serial=serial,
        only=only,
        onboarded_file=onboarded_file,
    )


# ---------------------------------------------------------------------------- apply


@app.command("apply")
def apply_cmd(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    root: Annotated[
        Path, typer.Option("--root", envvar=device_env("apply-root"), help="Root folder to apply under.")
    ] = APPLY_ROOT,
    dry_run: Annotated[
        Path | None, typer.Option("--dry-run", help="Write the plan to this JSON file instead.")
    ] = None,
    bootc: BootcOpt = "bootc",
    systemctl: SystemctlOpt = "systemctl",
) -> None:
    """Apply (or resume applying) the bootc assignment stored by the last onboarding."""
    from device.apply import load_assignment

    assignment = load_assignment(state_dir)
    if assignment is None:
        raise die(f"no assignment stored in {state_dir}")
    apply_assignment(assignment, dry_run, root, state_dir, bootc, systemctl)


@app.command("report")
def report_cmd(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    bootc: BootcOpt = "bootc",
    unhealthy: Annotated[bool, typer.Option("--unhealthy", help="Report a failed health check.")] = False,
    detail: Annotated[str, typer.Option("--detail", help="Free text for the owner (no secrets).")] = "",
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Report the booted image digest and health to the owner (run after the reboot)."""
    import httpx

    from device.agent import report_secret
    from device.apply import load_assignment, read_bootc_status

    assignment = load_assignment(state_dir)
    if assignment is None or assignment.report is None:
        raise die(f"no assignment with a status URL stored in {state_dir}")
    try:
        status = read_bootc_status(bootc)
    except Exception as exc:  # noqa: BLE001 - a missing or broken bootc is reported as unhealthy
        status, unhealthy, detail = None, True, detail or f"bootc status failed: {type(exc).__name__}"
    image = assignment.image
    body = {
        "booted_digest": None if status is None else status.digest,
        "revision": image.revision if image is not None and isinstance(image.revision, int) else None,
        "healthy": not unhealthy,
        "detail": detail,
    }
    try:
        resp = httpx.post(
            assignment.report.url,
            json=body,
            headers={"Authorization": f"Bearer {report_secret(state_dir, assignment)}"},
            verify=str(ca_bundle) if ca_bundle else True,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise die(f"cannot reach the owner: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise die(f"the owner refused the report: HTTP {resp.status_code}")
    typer.echo(f"reported: {resp.json().get('status')}")


# ---------------------------------------------------------------------------- show


def _directive_obj(directive: RendezvousDirective) -> dict[str, object]:
    try:
        protocol = directive.protocol
        obj: dict[str, object] = {
            "urls": directive.urls(),
            "dns": directive.dns,
            "ip": directive.ip,
            "dev_port": directive.dev_port,
            "owner_port": directive.owner_port,
            "protocol": protocol.name.lower() if protocol is not None else None,
            "delay": directive.delay,
            "bypass": directive.bypass,
            "dev_only": directive.dev_only,
            "owner_only": directive.owner_only,
        }
    except FdoError as exc:
        return {"error": exc.message}
    return obj


def credential_summary(cred: DeviceCredential, fmt: str) -> dict[str, object]:
    """What ``show`` prints: never the HMAC secret or the private key."""
    return {
        "format": fmt,
        "guid": str(cred.guid),
        "active": cred.active,
        "protocol_version": cred.prot_ver,
        "device_info": cred.device_info,
        "serial": cred.serial,
        "key_type": key_kind(cred.private_key),
        "owner_pubkey_hash": {"alg": cred.pubkey_hash.alg.name, "value": cred.pubkey_hash.value.hex()},
        "rendezvous": [_directive_obj(d) for d in cred.rv_info.directives],
    }


@app.command()
def show(credential: CredentialOpt, output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Show the credential: GUID, device info, rendezvous directives (no secrets)."""
    shown = chosen(output, as_json)
    try:
        cred, fmt = read_credential_with_format(credential)
    except CredentialFileError as exc:
        raise die(str(exc)) from None
    summary = credential_summary(cred, fmt.value)
    if shown is not Format.TABLE:
        emit_data(summary, shown)
        return
    typer.echo(f"GUID         {summary['guid']}")
    typer.echo(f"active       {'yes' if cred.active else 'no'}")
    typer.echo(f"protocol     {cred.prot_ver}")
    typer.echo(f"device info  {cred.device_info}")
    typer.echo(f"serial       {cred.serial or '- (not kept; onboard --serial sets it)'}")
    typer.echo(f"device key   {summary['key_type']}")
    typer.echo(f"owner key    {cred.pubkey_hash.alg.name} {cred.pubkey_hash.value.hex()}")
    typer.echo(f"file format  {fmt.value}")
    typer.echo("rendezvous:")
    for i, directive in enumerate(cred.rv_info.directives):
        obj = _directive_obj(directive)
        if "error" in obj:
            typer.echo(f"  [{i}] unreadable: {obj['error']}")
            continue
        flags = [name for name in ("bypass", "dev_only", "owner_only") if obj[name]]
        urls = ", ".join(directive.urls()) or "(no http/https address)"
        extra = f" delay {obj['delay']}s" if obj["delay"] else ""
        extra += f" [{', '.join(flags)}]" if flags else ""
        typer.echo(f"  [{i}] {urls}{extra}")
