"""What every ``fdo device`` command shares: option types, their environment variables, and
reading and writing the credential (those without typer are in :mod:`fdo_cli.device_plain`).

Every option that names a path, an address or an identity also reads an environment
variable, ``FDO_DEVICE_<OPTION>`` (:func:`device_env`; ``--help`` shows each), so the
units (``EnvironmentFile=-/etc/fdo/device.env``) and technicians need not repeat paths.
An option given on the command line wins over its variable; an empty variable counts
as unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fdo_cli.device_plain import (
    APPLY_ROOT,
    DEFAULT_ROOT,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    check_writable,
    device_env,
    load_credential,
    save_credential,
    tls_verify,
)

CredentialOpt = Annotated[
    Path, typer.Option("--credential", envvar=device_env("credential"), help="Device credential file.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar=device_env("state-dir"),
        help="Where the assignment and apply progress are kept (resumable).",
    ),
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option("--ca-bundle", envvar=device_env("ca-bundle"), help="CA bundle (PEM) for https."),
]
BootcOpt = Annotated[str, typer.Option("--bootc", envvar=device_env("bootc"), help="The bootc program.")]
SystemctlOpt = Annotated[
    str, typer.Option("--systemctl", envvar=device_env("systemctl"), help="The systemctl program.")
]

__all__ = [
    "APPLY_ROOT",
    "DEFAULT_ROOT",
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "BootcOpt",
    "CaBundleOpt",
    "CredentialOpt",
    "JsonOpt",
    "StateDirOpt",
    "SystemctlOpt",
    "check_writable",
    "device_env",
    "load_credential",
    "save_credential",
    "tls_verify",
]
