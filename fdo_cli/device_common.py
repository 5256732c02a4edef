"""What every ``fdo device`` command shares: option types, their environment variables, and
reading and writing the credential.

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

from device.credfile import CredentialFileError, read_credential_with_format, write_credential
from fdo.credential import DeviceCredential
from fdo_cli.common import die

DEFAULT_ROOT = Path("/var/lib/fdo/files")

#: Prefix of the environment variables that give the device commands' options defaults.
ENV_PREFIX = "FDO_DEVICE_"


def device_env(name: str) -> str:
    """The variable an option reads when it is not given: ``ca-bundle`` -> ``FDO_DEVICE_CA_BUNDLE``.

    Shared by every ``fdo device`` command, so one env file serves them all; an option
    whose name is ambiguous across commands passes a clearer ``name`` (``files-root``
    for ``onboard --root``, ``manufacturer-url`` for ``di --url``).
    """
    return ENV_PREFIX + name.strip("-").upper().replace("-", "_")


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
APPLY_ROOT = Path("/")
DEFAULT_STATE_DIR = Path("/var/lib/fdo/apply")


def load_credential(path: Path) -> DeviceCredential:
    try:
        return read_credential_with_format(path)[0]
    except CredentialFileError as exc:
        raise die(str(exc)) from None


def save_credential(path: Path, credential: DeviceCredential) -> None:
    try:
        write_credential(path, credential)
    except CredentialFileError as exc:
        raise die(str(exc)) from None


def check_writable(path: Path) -> None:
    """Exit with one line unless a credential can be written to ``path`` (its folder
    exists and takes a new file), checked before anything is asked of a server."""
    import tempfile

    folder = path.parent
    if path.is_dir():
        raise die(f"{path} is a folder, not a credential file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fdo-write-check-"):
            pass
    except OSError as exc:
        raise die(f"cannot write the credential to {path}: {exc.strerror or exc}") from None


def tls_verify(ca_bundle: Path | None) -> bool | str:
    if ca_bundle is None:
        return True
    if not ca_bundle.is_file():
        raise die(f"CA bundle {ca_bundle} is not a readable file")
    return str(ca_bundle)


# ---------------------------------------------------------------------------- di
