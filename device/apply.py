"""Applying a bootc assignment after TO2 (docs/serviceinfo.md, "Applying").

:func:`plan` turns an :class:`~fdo.serviceinfo.bootc.Assignment` into ordered
:class:`Action` s: registry credentials and signature policy, configuration files,
``systemctl enable`` for each unit, SSH authorized keys, then ``bootc switch`` and,
for ``switch-reboot``, a reboot. Pulling the image happens here, after TO2, so a slow
registry cannot time the encrypted session out.

An executor carries the actions out: :class:`RealExecutor` writes under a root folder
and runs ``bootc`` and ``systemctl``; :class:`RecordingExecutor` only records them
(``fdo device onboard --dry-run PLAN.json``).

:func:`apply` is idempotent and resumable. It stores the assignment and the ids of the
completed actions under a state folder (written atomically and fsynced), skips those
on the next start, and skips the switch when ``bootc status`` already shows the target
digest booted or staged. A power cut at any point therefore leads to the same end
state on the next run. The reboot is recorded *before* it runs, so it never loops;
a power cut just before it is itself the reboot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import hashlib
import json
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from device.modules import FileRoot, atomic_write, run_command
from fdo.errors import FdoError
from fdo.serviceinfo.bootc import (
    AUTH_PATH,
    NOT_BOOTC,
    POLICY_PATH,
    REGISTRIES_D,
    ApplyMode,
    Assignment,
    BootcDevice,
    BootcStatus,
    ImageRef,
    authorized_keys_path,
    parse_bootc_status,
    switch_commands,
)

DEFAULT_STATE_DIR = Path("/var/lib/fdo/apply")
ASSIGNMENT_FILE = "assignment.cbor"
PROGRESS_FILE = "progress.json"

Runner = Callable[[list[str]], tuple[int, bytes, bytes]]


class ApplyError(Exception):
    """An action failed; the run can be restarted once the cause is fixed."""


class ActionKind(StrEnum):
    WRITE_FILE = "write-file"
    ENABLE_UNIT = "enable-unit"
    BOOTC_SWITCH = "bootc-switch"
    REBOOT = "reboot"


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One step of a plan. ``id`` is unique and stable for a given assignment."""

    id: str
    kind: ActionKind
    path: str | None = None
    content: bytes | None = field(default=None, repr=False)
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    dir_mode: int | None = None  # the parent folder's mode, when it matters (~/.ssh)
    unit: str | None = None
    image: ImageRef | None = None

    def to_json(self) -> dict[str, object]:
        """The action for a plan file: metadata and a content hash, never the content."""
        out: dict[str, object] = {"id": self.id, "action": self.kind.value}
        if self.kind == ActionKind.WRITE_FILE:
            content = self.content or b""
            out |= {
                "path": self.path,
                "mode": f"{self.mode or 0:04o}",
                "owner": self.owner,
                "group": self.group or self.owner,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
            if self.dir_mode is not None:
                out["dir_mode"] = f"{self.dir_mode:04o}"
        elif self.kind == ActionKind.ENABLE_UNIT:
            out["unit"] = self.unit
        elif self.kind == ActionKind.BOOTC_SWITCH and self.image is not None:
            out |= {
                "image": self.image.ref,
                "digest": self.image.digest,
                "transport": self.image.transport,
                "revision": self.image.revision,
                "apply": self.image.apply.value,
            }
        return out


def plan(assignment: Assignment) -> list[Action]:
    """The ordered actions for ``assignment``."""
    steps: list[Action] = []

    def write(
        path: str,
        content: bytes,
        mode: int,
        owner: str = "root",
        group: str | None = None,
        dir_mode: int | None = None,
    ) -> None:
        steps.append(
            Action(
                id="",
                kind=ActionKind.WRITE_FILE,
                path=path,
                content=content,
                mode=mode,
                owner=owner,
                group=group,
                dir_mode=dir_mode,
            )
        )

    if assignment.auth_json is not None:
        write(AUTH_PATH, assignment.auth_json, 0o600)
    if assignment.policy_json is not None:
        write(POLICY_PATH, assignment.policy_json, 0o644)
    for name, content in assignment.registries_d:
        write(f"{REGISTRIES_D}/{name}", content, 0o644)
    for path, content in assignment.keys:
        write(path, content, 0o644)
    for f in assignment.files:
        write(f.path, f.content, f.mode, f.owner, group=f.group)
    for unit in assignment.units:
        steps.append(Action(id="", kind=ActionKind.ENABLE_UNIT, unit=unit))
    if assignment.ssh_keys is not None:
        user = assignment.ssh_keys.user
        content = "".join(k + "\n" for k in assignment.ssh_keys.keys).encode()
        write(authorized_keys_path(user), content, 0o600, user, group=user, dir_mode=0o700)
    if assignment.image is not None:
        steps.append(Action(id="", kind=ActionKind.BOOTC_SWITCH, image=assignment.image))
        if assignment.image.apply == ApplyMode.SWITCH_REBOOT:
            steps.append(Action(id="", kind=ActionKind.REBOOT))
    actions = []
    for i, step in enumerate(steps):
        subject = step.path or step.unit or (step.image.digest if step.image is not None else "")
        ident = f"{i:03d}-{step.kind.value}" + (f":{subject}" if subject else "")
        actions.append(dataclasses.replace(step, id=ident))
    return actions


# ---------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Carries out actions."""

    def run(self, action: Action) -> None:
        """Perform ``action``; raise :class:`ApplyError` (or OSError) on failure."""

    def bootc_status(self) -> BootcStatus | None:
        """The host's bootc status, or None when unknown (the switch then runs)."""


class RecordingExecutor:
    """Records the actions instead of performing them."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def run(self, action: Action) -> None:
        self.actions.append(action)

    def bootc_status(self) -> BootcStatus | None:
        return None

    def to_json(self) -> list[dict[str, object]]:
        return [a.to_json() for a in self.actions]

    def write(self, path: Path) -> None:
        """Write the plan as a JSON list."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def read_bootc_status(bootc: str = "bootc", *, run: Runner = run_command) -> BootcStatus:
    """This host's status from ``bootc status --json``; not a bootc host if that fails."""
    try:
        code, out, _ = run([bootc, "status", "--json"])
        if code != 0:
            return NOT_BOOTC
        return parse_bootc_status(json.loads(out))
    except (OSError, ValueError):
        return NOT_BOOTC


def bootc_device(bootc: str = "bootc", *, run: Runner = run_command) -> BootcDevice:
    """The bootc ServiceInfo module for this host, reporting ``bootc status``."""
    return BootcDevice(lambda: read_bootc_status(bootc, run=run))


class RealExecutor:
    """Writes files under ``root`` and runs ``bootc`` and ``systemctl``.

    With a root other than ``/``, ``systemctl`` gets ``--root=<root>``. Ownership is set
    only when running as root (names looked up in this host's user database).
    """

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        bootc: str = "bootc",
        systemctl: str = "systemctl",
        run: Runner = run_command,
    ) -> None:
        self.root = root
        self.files = FileRoot(root)
        self.bootc = bootc
        self.systemctl = systemctl
        self._run = run

    def bootc_status(self) -> BootcStatus | None:
        return read_bootc_status(self.bootc, run=self._run)

    def _command(self, argv: list[str]) -> None:
        try:
            code, _, err = self._run(argv)
        except OSError as exc:
            raise ApplyError(f"{argv[0]} could not be started: {exc.strerror}") from None
        if code != 0:
            tail = err.decode("utf-8", "replace").strip()[-300:]
            raise ApplyError(f"{' '.join(argv[:2])} failed with exit code {code}: {tail}")

    def run(self, action: Action) -> None:
        if action.kind == ActionKind.WRITE_FILE:
            self._write(action)
        elif action.kind == ActionKind.ENABLE_UNIT:
            extra = [] if self.root == Path("/") else [f"--root={self.root}"]
            self._command([self.systemctl, *extra, "enable", str(action.unit)])
        elif action.kind == ActionKind.BOOTC_SWITCH:
            if action.image is None:
                raise ApplyError("bootc switch without an image")
            self._command(switch_commands(action.image, bootc=self.bootc)[0])
        else:
            self._command([self.systemctl, "reboot"])

    def _write(self, action: Action) -> None:
        if action.path is None or action.content is None:
            raise ApplyError("write-file without a path or content")
        target = self.files.resolve(action.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.files.resolve(action.path)  # re-check: mkdir could have followed a new symlink
        uid = gid = -1
        if os.geteuid() == 0:
            try:
                uid = pwd.getpwnam(action.owner or "root").pw_uid
                gid = grp.getgrnam(action.group or action.owner or "root").gr_gid
            except KeyError:
                raise ApplyError(f"unknown user or group for {action.path}") from None
        if action.dir_mode is not None:
            os.chmod(target.parent, action.dir_mode)
            if uid != -1:
                os.chown(target.parent, uid, gid)
        atomic_write(
            target, action.content, action.mode if action.mode is not None else 0o644, uid=uid, gid=gid
        )


# ---------------------------------------------------------------------------- apply


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a run did: actions performed now, and actions skipped as already done."""

    performed: list[str]
    skipped: list[str]


def _key(assignment: Assignment) -> str:
    return hashlib.sha256(assignment.encode()).hexdigest()


def _load_progress(state_dir: Path, key: str) -> list[str]:
    try:
        data = json.loads((state_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("assignment") != key or not isinstance(data.get("done"), list):
        return []  # a different assignment: start over
    return [str(x) for x in data["done"]]


def _save_progress(state_dir: Path, key: str, done: list[str], complete: bool) -> None:
    body = {"assignment": key, "done": done, "complete": complete}
    atomic_write(state_dir / PROGRESS_FILE, json.dumps(body, indent=2).encode(), 0o600)


def save_assignment(assignment: Assignment, state_dir: Path) -> None:
    """Store the assignment so an interrupted apply can resume (``fdo device apply``)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / ASSIGNMENT_FILE
    data = assignment.encode()
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    atomic_write(path, data, 0o600)


def load_assignment(state_dir: Path) -> Assignment | None:
    """The stored assignment, or None if there is none (or it is unreadable)."""
    try:
        return Assignment.decode((state_dir / ASSIGNMENT_FILE).read_bytes())
    except (OSError, FdoError):
        return None


def apply(assignment: Assignment, executor: Executor, state_dir: Path) -> ApplyResult:
    """Carry out :func:`plan` through ``executor``, resuming from ``state_dir``."""
    save_assignment(assignment, state_dir)
    key = _key(assignment)
    done = _load_progress(state_dir, key)
    performed: list[str] = []
    skipped: list[str] = []
    actions = plan(assignment)
    for action in actions:
        if action.id in done:
            skipped.append(action.id)
            continue
        if action.kind == ActionKind.BOOTC_SWITCH and action.image is not None:
            status = executor.bootc_status()
            if status is not None and status.has(action.image.digest):
                done.append(action.id)
                _save_progress(state_dir, key, done, False)
                skipped.append(action.id)
                continue
        if action.kind == ActionKind.REBOOT:
            # Recorded first: after the reboot this run must not reboot again.
            done.append(action.id)
            _save_progress(state_dir, key, done, True)
            executor.run(action)
            performed.append(action.id)
            continue
        executor.run(action)
        done.append(action.id)
        _save_progress(state_dir, key, done, len(done) == len(actions))
        performed.append(action.id)
    if not actions:
        _save_progress(state_dir, key, done, True)
    return ApplyResult(performed, skipped)


__all__ = [
    "DEFAULT_STATE_DIR",
    "Action",
    "ActionKind",
    "ApplyError",
    "ApplyResult",
    "Executor",
    "RealExecutor",
    "RecordingExecutor",
    "apply",
    "atomic_write",
    "bootc_device",
    "load_assignment",
    "plan",
    "read_bootc_status",
    "save_assignment",
]
