"""What the ``fdo device`` commands share that needs no typer: where options read their
environment variables, the default folders, printing, exiting with an error, and reading
and writing the credential.

``fdo device onboard`` runs without typer when its arguments are plain
(:mod:`fdo_cli.device_onboard`), so what it uses is here; :mod:`fdo_cli.device_common`
re-exports it beside the typer option types.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fdo.credential import DeviceCredential

DEFAULT_ROOT = Path("/var/lib/fdo/files")
APPLY_ROOT = Path("/")
DEFAULT_STATE_DIR = Path("/var/lib/fdo/apply")

#: Prefix of the environment variables that give the device commands' options defaults.
ENV_PREFIX = "FDO_DEVICE_"


def device_env(name: str) -> str:
    """The variable an option reads when it is not given: ``ca-bundle`` -> ``FDO_DEVICE_CA_BUNDLE``.

    Shared by every ``fdo device`` command, so one env file serves them all; an option
    whose name is ambiguous across commands passes a clearer ``name`` (``files-root``
    for ``onboard --root``, ``manufacturer-url`` for ``di --url``).
    """
    return ENV_PREFIX + name.strip("-").upper().replace("-", "_")


def echo(message: str, *, err: bool = False) -> None:
    """One line on stdout (or stderr), flushed, as ``typer.echo`` prints it."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def die(message: str, code: int = 1) -> SystemExit:
    """Print ``error: message`` on stderr and return the exit to raise (under typer too:
    a command that raises SystemExit exits with its code, as with ``typer.Exit``)."""
    echo(f"error: {message}", err=True)
    return SystemExit(code)


def load_credential(path: Path) -> DeviceCredential:
    from device.credfile import CredentialFileError, read_credential_with_format

    try:
        return read_credential_with_format(path)[0]
    except CredentialFileError as exc:
        raise die(str(exc)) from None


def save_credential(path: Path, credential: DeviceCredential) -> None:
    from device.credfile import CredentialFileError, write_credential

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
