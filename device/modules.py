"""System access for the device's standard ServiceInfo modules (reference §7.5).

The core modules in :mod:`fdo.serviceinfo` are sans-I/O and take callables; this module
supplies the real ones:

* ``fdo.command`` runs ``argv`` with :func:`subprocess.run`, never through a shell;
* ``fdo.download`` writes each verified file under a root folder (:class:`FileRoot`),
  refusing names that would land outside it (``..``, symlinks pointing out);
* ``fdo.upload`` reads files under the same root.

Tests pass recording callables instead (see :func:`standard_modules`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from fdo.serviceinfo import CommandDevice, DeviceModule, Devmod, DownloadDevice, UploadDevice
from fdo.serviceinfo.command import Runner
from fdo.serviceinfo.download import Writer
from fdo.serviceinfo.upload import Reader

#: Longest a command from the owner may run (the TO2 session would expire anyway).
COMMAND_TIMEOUT = 300.0
#: Largest file fdo.upload sends.
MAX_UPLOAD_SIZE = 64 * 1024 * 1024


def run_command(argv: list[str], *, timeout: float = COMMAND_TIMEOUT) -> tuple[int, bytes, bytes]:
    """Run ``argv`` (no shell) and return ``(exitcode, stdout, stderr)``.

    A command that cannot start raises OSError (the module fails TO2); one that times
    out is reported as exit code 124, like coreutils ``timeout``.
    """
    try:
        done = subprocess.run(  # noqa: S603 - argv from the authenticated owner, no shell
            argv, capture_output=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        return 124, _as_bytes(exc.stdout), _as_bytes(exc.stderr)
    return done.returncode, done.stdout, done.stderr


def _as_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else data


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(target: Path, data: bytes, mode: int, *, uid: int = -1, gid: int = -1) -> None:
    """Write ``target`` through a temp file: fsync, chmod/chown, rename, fsync the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if uid != -1 or gid != -1:
            os.chown(tmp, uid, gid)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


class PathEscapeError(PermissionError):
    """A file name from the owner points outside the root folder."""


class FileRoot:
    """A folder the owner's files are confined to.

    Names are taken as relative to the root, a leading ``/`` included (``/etc/x`` is
    ``<root>/etc/x``). A name with a ``..`` component, or whose resolved location
    leaves the root through a symlink, raises :class:`PathEscapeError`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def resolve(self, name: str) -> Path:
        """The path for ``name`` inside the root (raises PathEscapeError)."""
        parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "")]
        if not parts or ".." in parts or "\x00" in name:
            raise PathEscapeError(f"file name {name[:128]!r} is not allowed")
        target = self.root.joinpath(*parts)
        base = self.root.resolve()
        resolved = target.resolve()
        if resolved != base and base not in resolved.parents:
            raise PathEscapeError(f"file name {name[:128]!r} leaves the root folder")
        return target

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` (temp file, fsync, rename; parents created, mode 0644)."""
        target = self.resolve(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.resolve(name)  # re-check: mkdir could have followed a new symlink
        atomic_write(target, data, 0o644)

    def read(self, name: str, *, max_size: int = MAX_UPLOAD_SIZE) -> bytes | None:
        """The contents of ``name``, or None if it is missing, unreadable, too large or outside."""
        try:
            path = self.resolve(name)
            with path.open("rb") as f:
                data = f.read(max_size + 1)
        except OSError:
            return None
        return None if len(data) > max_size else data


def standard_modules(
    root: Path | None,
    *,
    run: Runner | None = run_command,
    write: Writer | None = None,
    read: Reader | None = None,
) -> list[DeviceModule]:
    """``fdo.command`` (unless ``run`` is None), and ``fdo.download``/``fdo.upload`` under ``root``.

    ``write``/``read`` replace the file access (tests record instead); without a root
    and without them, the file modules are left out.
    """
    modules: list[DeviceModule] = []
    if run is not None:
        modules.append(CommandDevice(run))
    files = FileRoot(root) if root is not None else None
    writer = write or (files.write if files else None)
    reader = read or (files.read if files else None)
    if writer is not None:
        modules.append(DownloadDevice(writer))
    if reader is not None:
        modules.append(UploadDevice(reader))
    return modules


def _os_version() -> str:
    """PRETTY_NAME from os-release, else the kernel release."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("PRETTY_NAME="):
                    value = line.split("=", 1)[1].strip().strip("\"'")
                    if value:
                        return value
    return platform.release() or "unknown"


def default_devmod(
    model: str, *, serial: str | None = None, root: Path | None = None, modules: Sequence[str] = ()
) -> Devmod:
    """This machine's devmod: OS, architecture and version from the running system."""
    arch = platform.machine() or "unknown"
    return Devmod(
        os=platform.system() or "Linux",
        arch=arch,
        version=_os_version(),
        device=model or "unknown",
        sn=serial or None,
        pathsep=":",
        sep="/",
        nl="\n",
        tmp=tempfile.gettempdir(),
        dir=str(root) if root is not None else None,
        bin=arch,
        modules=tuple(modules),
    )


ModulesFactory = Callable[[], Sequence[DeviceModule]]
"""Builds fresh device modules for one TO2 attempt."""

__all__ = [
    "COMMAND_TIMEOUT",
    "FileRoot",
    "ModulesFactory",
    "PathEscapeError",
    "default_devmod",
    "run_command",
    "standard_modules",
]
