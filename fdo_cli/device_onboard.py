"""``fdo device onboard``'s work, and running it without typer when the arguments are plain.

A device runs ``fdo device onboard`` at every boot until it is onboarded, on hardware
that may be small: typer (with click, and the pydantic it builds each option's
converter with) costs about 13 MB and 0.1 s of CPU before any FDO is done. So
:func:`fdo_cli.main.main` hands the arguments of ``fdo device onboard`` to
:func:`fast_onboard` first. :func:`parse` takes only the plain cases: every argument a
known ``--option value``, ``--option=value`` or flag, each value well-formed (paths and
strings not empty and not starting with ``-``, whole numbers of digits, a known suite
name), the options not given read from their ``FDO_DEVICE_*`` variables as typer reads
them (an empty variable counts as unset). Anything else (``--help``, an unknown or
malformed option, a missing ``--credential``) returns None and typer parses the
arguments as before, so help, usage errors and their exit codes are typer's own. Either
way the work is :func:`run_onboard`, which prints with :func:`fdo_cli.device_plain.echo`
and exits with :func:`fdo_cli.device_plain.die`, as the typer command did.

The table :data:`OPTIONS` must say what the typer command in :mod:`fdo_cli.device`
declares; a test compares the two option by option.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdo_cli.device_plain import (
    APPLY_ROOT,
    DEFAULT_ROOT,
    DEFAULT_STATE_DIR,
    device_env,
    die,
    echo,
    load_credential,
    save_credential,
    tls_verify,
)

if TYPE_CHECKING:
    from fdo.serviceinfo import DeviceModule
    from fdo.serviceinfo.bootc import Assignment, BootcDevice, BootcStatus


class KexName(StrEnum):
    ECDH256 = "ECDH256"
    ECDH384 = "ECDH384"
    DHKEXid14 = "DHKEXid14"
    DHKEXid15 = "DHKEXid15"
    ASYMKEX2048 = "ASYMKEX2048"
    ASYMKEX3072 = "ASYMKEX3072"


class CipherName(StrEnum):
    A128GCM = "A128GCM"
    A192GCM = "A192GCM"
    A256GCM = "A256GCM"
    COSEAES128CBC = "COSEAES128CBC"
    COSEAES128CTR = "COSEAES128CTR"
    COSEAES256CBC = "COSEAES256CBC"
    COSEAES256CTR = "COSEAES256CTR"


#: The ServiceInfo modules ``fdo device onboard`` can offer.
DEVICE_MODULES = ("fdo.command", "fdo.download", "fdo.upload", "com.fdo-bootc.bootc")


# ---------------------------------------------------------------------------- the work


def run_onboard(
    *,
    credential: Path,
    kex: KexName | None = None,
    cipher: CipherName = CipherName.A128GCM,
    ca_bundle: Path | None = None,
    root: Path = DEFAULT_ROOT,
    no_command: bool = False,
    max_attempts: int = 5,
    deadline: float | None = None,
    as_json: bool = False,
    dry_run: Path | None = None,
    apply_root: Path = APPLY_ROOT,
    state_dir: Path = DEFAULT_STATE_DIR,
    bootc: str = "bootc",
    systemctl: str = "systemctl",
    no_bootc: bool = False,
    serial: str | None = None,
    only: str | None = None,
    onboarded_file: Path | None = None,
) -> None:
    """TO1, TO2, write the credential, then apply (or plan) the bootc assignment; see
    ``fdo device onboard --help`` for each option."""
    from device.modules import run_command, standard_modules
    from device.onboard import OnboardError, onboard
    from fdo.cipher import CipherSuite
    from fdo.errors import FdoError
    from fdo.kex import KexSuite
    from fdo.serviceinfo.bootc import BOOTC, BootcDevice

    if serial is not None and not (0 < len(serial) <= 255 and "\x00" not in serial):
        raise die("--serial must be 1 to 255 characters, without NUL (as DI accepts)")
    wanted = None if only is None else _module_names(only)
    cred = load_credential(credential)
    if serial:
        cred = dataclasses.replace(cred, serial=serial)
    verify = tls_verify(ca_bundle)
    run = None if no_command or (wanted is not None and "fdo.command" not in wanted) else run_command
    made: list[BootcDevice] = []

    def bootc_status() -> BootcStatus:
        # device.apply (what applies an assignment) is loaded only when the owner asks.
        from device.apply import read_bootc_status

        return read_bootc_status(bootc)

    def modules() -> list[DeviceModule]:
        mods = standard_modules(root, run=run)
        if not no_bootc and (wanted is None or BOOTC in wanted):
            made.append(BootcDevice(bootc_status))  # as device.apply.bootc_device(bootc)
            mods.append(made[-1])
        return [m for m in mods if wanted is None or m.name in wanted]

    try:
        result = onboard(
            cred,
            kex=KexSuite(kex.value) if kex is not None else None,
            cipher=CipherSuite[cipher.value],
            modules=modules,
            root=root,
            verify=verify,
            max_attempts=max_attempts or None,
            deadline=deadline,
            progress=lambda line: echo(line, err=True),
        )
    except OnboardError as exc:
        # Each failed attempt was printed as it happened: say only why it stopped.
        raise die(exc.reason if exc.attempts else str(exc)) from None
    except FdoError as exc:  # e.g. a devmod this machine cannot describe
        raise die(f"onboarding failed: {exc.message}") from None
    save_credential(credential, result.credential)
    assignment = made[-1].assignment if made else None
    applied = None
    if assignment is not None:
        if dry_run is not None:
            _store(assignment, state_dir)
        applied = apply_assignment(
            assignment, dry_run, apply_root, state_dir, bootc, systemctl, quiet=as_json
        )
    if onboarded_file is not None:
        _stamp(onboarded_file)
    if as_json:
        import json

        out = {
            "previous_guid": result.previous_guid,
            "guid": str(result.credential.guid),
            "reused": result.reused,
            "owner_url": result.owner_url,
            "rv_url": result.rv_url,
            "rounds": result.rounds,
            "active_modules": sorted(result.active_modules),
            "assignment": assignment is not None,
            "dry_run": dry_run is not None,
            "applied": applied,
            "attempts": [
                {"round": a.round, "phase": a.phase, "url": a.url, "error": a.error} for a in result.attempts
            ],
        }
        echo(json.dumps(out, indent=2))
        return
    via = "bypassing TO1" if result.rv_url is None else f"via {result.rv_url}"
    echo(f"onboarded by {result.owner_url} ({via}) in {result.rounds} round(s)")
    if result.reused:
        echo(f"credential reused: GUID {result.credential.guid}")
    else:
        echo(f"GUID {result.previous_guid} -> {result.credential.guid}; credential updated")
    if dry_run is not None:
        stored = f"assignment stored in {state_dir}" if assignment else "no bootc assignment received"
        echo(f"dry run: the device is onboarded (credential replaced), {stored}, nothing applied")
        if assignment is not None:
            echo(f"apply it with: fdo device apply --state-dir {state_dir}")


def _store(assignment: Assignment, state_dir: Path) -> None:
    from device.apply import save_assignment

    try:
        save_assignment(assignment, state_dir)
    except OSError as exc:
        raise die(f"cannot store the assignment in {state_dir}: {exc.strerror or exc}") from None


def _stamp(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        raise die(f"onboarded, but cannot create {path}: {exc.strerror or exc}") from None


def _module_names(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(DEVICE_MODULES))
    if unknown:
        raise die(f"unknown module {unknown[0]!r} in --modules; known: {', '.join(DEVICE_MODULES)}")
    return names


def apply_assignment(
    assignment: Assignment,
    dry_run: Path | None,
    root: Path,
    state_dir: Path,
    bootc: str,
    systemctl: str,
    *,
    quiet: bool = False,
) -> list[str]:
    """Apply (or, with ``dry_run``, plan) the assignment; return the action ids performed."""
    from device.apply import ApplyError, RealExecutor, RecordingExecutor, apply, plan

    if dry_run is not None:
        recorder = RecordingExecutor()
        for action in plan(assignment):
            recorder.run(action)
        recorder.write(dry_run)
        if not quiet:
            echo(f"plan of {len(recorder.actions)} action(s) written to {dry_run}")
        return [a.id for a in recorder.actions]
    try:
        done = apply(assignment, RealExecutor(root, bootc=bootc, systemctl=systemctl), state_dir)
    except (ApplyError, OSError) as exc:
        raise die(f"applying the assignment failed (rerun fdo device apply to resume): {exc}") from None
    if not quiet:
        echo(f"assignment applied: {len(done.performed)} action(s), {len(done.skipped)} already done")
    return done.performed


# ---------------------------------------------------------------------------- without typer

#: Marks an option with no default (typer: required).
REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class Option:
    """One option of ``fdo device onboard`` as the typer command declares it."""

    dest: str  # run_onboard's parameter
    kind: str  # "path", "str", "int", "float", "flag", "kex" or "cipher"
    default: Any
    envvar: str | None = None


#: Every option of ``fdo device onboard`` (the typer command in :mod:`fdo_cli.device`).
OPTIONS: dict[str, Option] = {
    "--credential": Option("credential", "path", REQUIRED, device_env("credential")),
    "--kex": Option("kex", "kex", None),
    "--cipher": Option("cipher", "cipher", CipherName.A128GCM),
    "--ca-bundle": Option("ca_bundle", "path", None, device_env("ca-bundle")),
    "--root": Option("root", "path", DEFAULT_ROOT, device_env("files-root")),
    "--no-command": Option("no_command", "flag", False),
    "--max-attempts": Option("max_attempts", "int", 5, device_env("max-attempts")),
    "--deadline": Option("deadline", "float", None),
    "--json": Option("as_json", "flag", False),
    "--dry-run": Option("dry_run", "path", None),
    "--apply-root": Option("apply_root", "path", APPLY_ROOT, device_env("apply-root")),
    "--state-dir": Option("state_dir", "path", DEFAULT_STATE_DIR, device_env("state-dir")),
    "--bootc": Option("bootc", "str", "bootc", device_env("bootc")),
    "--systemctl": Option("systemctl", "str", "systemctl", device_env("systemctl")),
    "--no-bootc": Option("no_bootc", "flag", False),
    "--serial": Option("serial", "str", None, device_env("serial")),
    "--modules": Option("only", "str", None),
    "--onboarded-file": Option("onboarded_file", "path", None, device_env("onboarded-file")),
}

_NOT_PLAIN = object()
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def _convert(kind: str, raw: str) -> Any:
    """``raw`` as the option's value, or _NOT_PLAIN for anything typer should judge."""
    if raw == "" or raw.startswith("-"):
        return _NOT_PLAIN
    if kind == "path":
        return Path(raw)
    if kind == "str":
        return raw
    if kind == "int":
        return int(raw) if raw.isascii() and raw.isdigit() else _NOT_PLAIN  # min 0: no sign
    if kind == "float":
        return float(raw) if _DECIMAL.fullmatch(raw) else _NOT_PLAIN
    names = KexName if kind == "kex" else CipherName
    return names(raw) if raw in names.__members__.values() else _NOT_PLAIN


def parse(args: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """``run_onboard``'s arguments from plain ``args`` and the environment, else None."""
    given: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        option = OPTIONS.get(name)
        if option is None:  # --help, -h, --, a positional or an unknown option: typer's
            return None
        i += 1
        if option.kind == "flag":
            if eq:
                return None
            given[option.dest] = True
            continue
        if not eq:
            if i == len(args):
                return None
            value = args[i]
            i += 1
        given[option.dest] = value
    out: dict[str, Any] = {}
    for option in OPTIONS.values():
        raw = given.get(option.dest)
        if raw is None and option.envvar is not None:
            raw = environ.get(option.envvar) or None  # empty: unset
        if raw is None:
            if option.default is REQUIRED:
                return None
            out[option.dest] = option.default
        elif isinstance(raw, bool):
            out[option.dest] = raw
        else:
            value = _convert(option.kind, raw)
            if value is _NOT_PLAIN:
                return None
            out[option.dest] = value
    return out


def fast_onboard(args: Sequence[str], environ: Mapping[str, str]) -> None:
    """Run ``fdo device onboard args`` without typer and exit; return (having done
    nothing) when the arguments are not plain, for typer to parse them."""
    kwargs = parse(args, environ)
    if kwargs is None:
        return
    try:
        run_onboard(**kwargs)
    except KeyboardInterrupt:
        echo("\nAborted!", err=True)  # as click says it
        sys.exit(1)
    sys.exit(0)
