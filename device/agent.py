"""Checking in with the owner (``fdo device check-in``, ``fdo device agent``).

State lives in the apply state folder (:data:`device.apply.DEFAULT_STATE_DIR`):
``assignment.cbor`` (what TO2 or a check-in delivered, with the ``report`` item TO2
gave), ``checkin.json`` (URL, current secret, last sequence number; 0600), and
``last-error.json`` (the failing step and text of the last apply of the stored
assignment). A lock file serialises check-ins of one device. The sequence number is
saved *before* the request is sent, so a crash never reuses one; the next secret is
saved as soon as the answer arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from device.apply import ApplyError, RealExecutor, apply, load_assignment, plan, save_assignment
from device.checkin import (
    Answer,
    CheckinProtocolError,
    CheckinState,
    HostStatus,
    build_request,
    dumps_state,
    health_of,
    host_status,
    next_delay,
    parse_answer,
    state_for,
)
from device.modules import atomic_write, run_command
from fdo.serviceinfo.bootc import Assignment
from transport.client import tls_verify

STATE_FILE = "checkin.json"
ERROR_FILE = "last-error.json"
LOCK_FILE = "checkin.lock"
PROGRESS_FILE = "progress.json"
#: greenboot's boot status (written by greenboot-status on RHEL image mode / Fedora IoT).
GREENBOOT_STATUS = Path("/run/motd.d/boot-status")


class CheckinError(Exception):
    """A check-in could not be made or was refused (the message says why, no secrets)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """How to reach this host's tools, and where to apply."""

    root: Path = Path("/")
    bootc: str = "bootc"
    systemctl: str = "systemctl"
    health_file: Path = GREENBOOT_STATUS


@dataclass(frozen=True, slots=True)
class Outcome:
    """One check-in: what was sent, the answer, and what applying it did."""

    state: str
    interval: int
    desired: int | None
    applied: str | None  # None, "ok", or the failing step


def _key(assignment: Assignment) -> str:
    return hashlib.sha256(assignment.encode()).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (state_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_state(state_dir: Path, state: CheckinState) -> None:
    atomic_write(state_dir / STATE_FILE, dumps_state(state), 0o600)


def current_state(state_dir: Path, assignment: Assignment) -> CheckinState:
    """The check-in state for the stored assignment (fresh after a new TO2)."""
    if assignment.report is None:
        raise CheckinError(f"the assignment in {state_dir} has no check-in credential (onboard first)")
    saved = None
    raw = _read_json(state_dir / STATE_FILE)
    if raw is not None:
        with contextlib.suppress(CheckinProtocolError):
            saved = CheckinState.from_json(raw)
    return state_for(saved, assignment.report)


def _host(host: Host) -> HostStatus:
    try:
        code, out, _ = run_command([host.bootc, "status", "--json"])
        return host_status(json.loads(out)) if code == 0 else HostStatus()
    except (OSError, ValueError):
        return HostStatus()


def _health(host: Host) -> str:
    try:
        return health_of(host.health_file.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return health_of(None)


def _error(state_dir: Path, assignment: Assignment) -> tuple[str, str] | None:
    raw = _read_json(state_dir / ERROR_FILE)
    if isinstance(raw, dict) and raw.get("assignment") == _key(assignment):
        return str(raw.get("step")), str(raw.get("error"))
    return None


def _utc_offset() -> int:
    """This host's current UTC offset in seconds (its local time zone)."""
    return int(time.localtime().tm_gmtoff)


def _complete(state_dir: Path, assignment: Assignment) -> bool:
    raw = _read_json(state_dir / PROGRESS_FILE)
    return isinstance(raw, dict) and raw.get("assignment") == _key(assignment) and raw.get("complete") is True


class CredentialRefused(CheckinError):
    """The owner answered 401: the secret is revoked, replaced or replayed."""


def _post(url: str, secret: str, body: dict[str, Any], verify: bool | str) -> Answer:
    try:
        resp = httpx.post(  # the TLS context shared (tls_verify): loading CAs costs some 20 ms a time
            url,
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            verify=tls_verify(verify),
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise CheckinError(f"cannot reach the owner at {url}: {type(exc).__name__}") from None
    if resp.status_code == 401:
        raise CredentialRefused("the owner refused the check-in credential (revoked, replaced or replayed)")
    if resp.status_code != 200:
        raise CheckinError(f"the owner answered HTTP {resp.status_code}")
    try:
        return parse_answer(resp.json())
    except (ValueError, CheckinProtocolError) as exc:
        raise CheckinError(f"the owner's answer is invalid: {exc}") from None


def apply_desired(state_dir: Path, current: Assignment, new: Assignment, host: Host) -> str:
    """Store and apply ``new`` (keeping the stored report item); ``"ok"``, or the
    failing step (its text is kept in ``last-error.json``)."""
    assignment = dataclasses.replace(new, report=current.report)
    save_assignment(assignment, state_dir)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / ERROR_FILE).unlink()
    try:
        apply(assignment, RealExecutor(host.root, bootc=host.bootc, systemctl=host.systemctl), state_dir)
    except (ApplyError, OSError) as exc:
        done = _read_json(state_dir / PROGRESS_FILE) or {}
        finished = set(done.get("done", [])) if done.get("assignment") == _key(assignment) else set()
        step = next((a.id for a in plan(assignment) if a.id not in finished), "apply")
        text = str(exc) if isinstance(exc, ApplyError) else f"{exc.strerror or exc}"
        body = {"assignment": _key(assignment), "step": step, "error": text}
        atomic_write(state_dir / ERROR_FILE, json.dumps(body).encode(), 0o600)
        return step
    return "ok"


def check_in(state_dir: Path, host: Host, *, verify: bool | str = True) -> Outcome:
    """Check in once; apply a desired revision the answer carries, then check in again
    to say how that went."""
    with _locked(state_dir):
        first = _once(state_dir, host, verify)
        if first.desired is None:
            return first
        second = _once(state_dir, host, verify)
        return Outcome(second.state, second.interval, first.desired, first.applied)


def _once(state_dir: Path, host: Host, verify: bool | str) -> Outcome:
    assignment = load_assignment(state_dir)
    if assignment is None:
        raise CheckinError(f"no assignment stored in {state_dir} (onboard first)")
    state = current_state(state_dir, assignment)
    body, after = build_request(
        state,
        state.seq + 1,
        assignment,
        _host(host),
        complete=_complete(state_dir, assignment),
        error=_error(state_dir, assignment),
        health=_health(host),
        utc_offset=_utc_offset(),
    )
    _save_state(state_dir, after)  # never reuse a sequence number
    try:
        answer = _post(state.url, state.secret, body, verify)
        used = state.secret
    except CredentialRefused:
        if not state.previous or state.previous == state.secret:
            raise
        # The owner may have lost the commit that made this secret its current one (a
        # power cut before its commit reached the disk): the one before still works.
        after = dataclasses.replace(after, seq=after.seq + 1)
        body["seq"] = after.seq
        _save_state(state_dir, after)
        answer = _post(state.url, state.previous, body, verify)
        used = state.previous
    after = dataclasses.replace(after, secret=answer.next_secret, previous=used)
    _save_state(state_dir, after)
    if answer.desired is None:
        return Outcome(str(body["state"]), answer.interval, None, None)
    _save_state(state_dir, dataclasses.replace(after, generation=answer.desired.generation))
    applied = apply_desired(state_dir, assignment, answer.desired.assignment, host)
    return Outcome(str(body["state"]), answer.interval, answer.desired.revision, applied)


def report_secret(state_dir: Path, assignment: Assignment) -> str | None:
    """The secret a report should carry now (the check-in secret, rotated), if any."""
    if assignment.report is None:
        return None
    try:
        return current_state(state_dir, assignment).secret
    except CheckinError:
        return assignment.report.token


def describe(outcome: Outcome) -> str:
    """One log line for a check-in."""
    line = f"check-in ok: {outcome.state}"
    if outcome.desired is not None:
        result = "applied" if outcome.applied == "ok" else f"failed at {outcome.applied}"
        line += f"; revision {outcome.desired} received, {result}"
    return line + f"; next in {outcome.interval}s"


def run_agent(
    state_dir: Path,
    host: Host,
    *,
    verify: bool | str,
    stop: threading.Event,
    log: Callable[[str], None],
    interval: int | None = None,
    rand: Callable[[], float] = random.random,
) -> None:
    """Check in until ``stop`` is set: at the owner's interval (or ``interval``) with
    jitter, backing off while the owner cannot be reached; one log line per attempt."""
    failures = 0
    every: float = interval or 300
    while not stop.is_set():
        started = time.monotonic()
        try:
            outcome = check_in(state_dir, host, verify=verify)
        except CheckinError as exc:
            failures += 1
            delay = next_delay(every, failures, rand())
            log(f"check-in failed ({failures} in a row): {exc}; retrying in {delay:.0f}s")
        else:
            failures = 0
            every = interval or outcome.interval
            delay = next_delay(every, 0, rand())
            log(describe(outcome))
        stop.wait(max(0.0, delay - (time.monotonic() - started)))


__all__ = ["GREENBOOT_STATUS", "CheckinError", "Host", "Outcome", "check_in", "describe", "run_agent"]
