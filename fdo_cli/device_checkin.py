"""``fdo device check-in`` and ``fdo device agent``: the device checks in with its owner
(``docs/checkin.md``); the work is in :mod:`device.agent`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fdo_cli.common import die
from fdo_cli.device_common import (
    APPLY_ROOT,
    DEFAULT_STATE_DIR,
    BootcOpt,
    CaBundleOpt,
    StateDirOpt,
    SystemctlOpt,
    device_env,
    tls_verify,
)

GREENBOOT_STATUS = Path("/run/motd.d/boot-status")
HealthFileOpt = Annotated[
    Path,
    typer.Option(
        "--health-file",
        envvar=device_env("health-file"),
        help="greenboot's boot status file (health is unknown without it).",
    ),
]
ApplyRootOpt = Annotated[
    Path,
    typer.Option(
        "--apply-root", envvar=device_env("apply-root"), help="Root folder new revisions are applied under."
    ),
]


def check_in_cmd(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    apply_root: ApplyRootOpt = APPLY_ROOT,
    bootc: BootcOpt = "bootc",
    systemctl: SystemctlOpt = "systemctl",
    health_file: HealthFileOpt = GREENBOOT_STATUS,
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Check in with the owner once; apply a new desired revision it sends, then check in again."""
    from device.agent import CheckinError, Host, check_in, describe

    host = Host(root=apply_root, bootc=bootc, systemctl=systemctl, health_file=health_file)
    try:
        outcome = check_in(state_dir, host, verify=tls_verify(ca_bundle))
    except CheckinError as exc:
        raise die(str(exc)) from None
    typer.echo(describe(outcome))
    if outcome.applied not in (None, "ok"):
        raise typer.Exit(1)


def agent_cmd(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    apply_root: ApplyRootOpt = APPLY_ROOT,
    bootc: BootcOpt = "bootc",
    systemctl: SystemctlOpt = "systemctl",
    health_file: HealthFileOpt = GREENBOOT_STATUS,
    ca_bundle: CaBundleOpt = None,
    interval: Annotated[
        int | None,
        typer.Option(
            "--interval",
            min=1,
            envvar=device_env("checkin-interval"),
            help="Seconds between check-ins (default: the owner's).",
        ),
    ] = None,
) -> None:
    """Check in with the owner until stopped (SIGTERM/SIGINT), applying new desired revisions."""
    import signal
    import threading

    from device.agent import Host, run_agent

    verify = tls_verify(ca_bundle)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        typer.echo(f"stopping on {signal.Signals(signum).name}", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = Host(root=apply_root, bootc=bootc, systemctl=systemctl, health_file=health_file)
    run_agent(
        state_dir,
        host,
        verify=verify,
        stop=stop,
        log=lambda line: typer.echo(line, err=True),
        interval=interval,
    )
