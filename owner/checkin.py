"""Device check-in: the credential, the observation a device sends, its desired state.

The credential (docs/checkin.md) is a per-device random secret the owner hands the
device in TO2 inside the encrypted ServiceInfo channel (the bootc module's ``report``
item). Its form is ``fdc1.<device id>.<43 url-safe characters>``: the id finds the
record by primary key, the random part authenticates; only SHA-256 of the whole secret
is stored (``owner_device.checkin_hash``), and hashes are compared in constant time.

Every check-in carries a sequence number higher than the last one accepted
(``checkin_seq``), so a replayed or older request is refused (401) and records nothing.
Every accepted check-in rotates the secret: the answer carries a next secret whose hash
is kept in ``checkin_next_hash``; the current secret stays valid until the next one is
first used (then the next one becomes current), so a lost answer does not lock the
device out — the same idea as the voucher replacement in :mod:`owner.lifecycle`.
Revoking (:func:`revoke`) clears both hashes: every check-in is then 401 until a new
TO2 hands out a new secret.

A check-in with nothing to change costs one read (the device row with its desired
revision's number and image, by primary key) and one small conditional UPDATE of that
row (guarded by the sequence number and the hash the read saw, so two concurrent
requests cannot both pass); in a :func:`fdo_server.sql.message_scope` on PostgreSQL
that is two round trips, the update committing on its own. Status changes (``applied``,
``failed``) add a timeline event; the device's first check-in with a credential
confirms its voucher (:func:`owner.lifecycle.confirm_guid`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fdo_server.clock import utc
from fdo_server.sql import Conn, Sql, last_write
from owner.lifecycle import confirm_guid
from owner.states import APPLIED, FAILED, ONBOARDED

if TYPE_CHECKING:  # the admin plane's records; the device plane reads rows
    from owner.groups_tables import Device

SECRET_PREFIX = "fdc1"  # noqa: S105 - the form of a secret, not one
_SECRET = re.compile(r"^fdc1\.([1-9][0-9]{0,18})\.[A-Za-z0-9_-]{43}$")

#: Apply states a device reports (device.checkin.APPLY_STATES).
APPLY_STATES = ("none", "applying", "staged", "applied", "failed", "rolled-back")
HEALTH = ("healthy", "unhealthy", "unknown")

_READ = Sql(
    "SELECT d.id, d.guid, d.status, d.checkin_hash, d.checkin_next_hash, d.checkin_seq, "
    "d.desired_revision_id, d.desired_generation, d.apply_state, d.held_revision, d.held_generation, "
    "r.number AS desired_number, r.image AS desired_image "
    "FROM owner_device d LEFT JOIN owner_revision r ON r.id = d.desired_revision_id WHERE d.id = :d"
)
# What a check-in records, guarded by the sequence number and the hash the read saw.
_OBSERVED = (
    "checkin_hash = :new_hash, checkin_next_hash = :next_hash, checkin_seq = :seq, last_checkin_at = :at, "
    "booted_image = :booted_image, booted_digest = :booted_digest, staged_image = :staged_image, "
    "staged_digest = :staged_digest, applied_revision = :applied_revision, apply_state = :apply_state, "
    "health = :health, last_error_step = :error_step, last_error = :error, rolled_back = :rolled_back, "
    "held_revision = :revision, held_generation = :generation, utc_offset = :utc_offset"
)
_GUARD = "WHERE id = :d AND checkin_seq < :seq AND checkin_hash = :old_hash"
_WRITE = Sql(f"UPDATE owner_device SET {_OBSERVED} {_GUARD}")  # noqa: S608 - our own text
_WRITE_STATUS = Sql(
    f"UPDATE owner_device SET status = :status, updated_at = :at, {_OBSERVED} {_GUARD}"  # noqa: S608
)
# ``detail`` as its JSON text (json.dumps).
_EVENT = Sql(
    "INSERT INTO owner_device_event (device_id, at, kind, detail) VALUES (:device_id, :at, :kind, :detail)"
)
_ISSUE = Sql(
    "UPDATE owner_device SET checkin_hash = :hash, checkin_next_hash = NULL, checkin_seq = 0, "
    "checkin_revoked_at = NULL WHERE id = :d"
)
_REVOKE = Sql(
    "UPDATE owner_device SET checkin_hash = NULL, checkin_next_hash = NULL, checkin_revoked_at = :at "
    "WHERE id = :d"
)
_DROP_REPORT_TOKEN = Sql("DELETE FROM owner_report_token WHERE device_id = :d")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(device_id: int) -> str:
    return f"{SECRET_PREFIX}.{device_id}.{secrets.token_urlsafe(32)}"


def device_id_of(secret: str) -> int | None:
    """The device id a well-formed check-in secret names, else None."""
    found = _SECRET.match(secret)
    return None if found is None else int(found.group(1))


def issue_secret(device_id: int, conn: Conn | None = None) -> str:
    """A fresh check-in secret for the device (TO2): replaces any earlier one, resets the
    sequence, lifts a revocation, and retires the device's legacy report token. (Here
    ``conn`` is where the statements run, by default the unit of work's connection:
    :func:`fdo_server.sql.current`.)"""
    secret = new_secret(device_id)
    _ISSUE.rowcount({"d": device_id, "hash": secret_hash(secret)}, conn)
    _DROP_REPORT_TOKEN.rowcount({"d": device_id}, conn)
    return secret


def revoke(device_id: int, *, now: datetime, conn: Conn | None = None) -> None:
    """Every check-in (and report) of the device is refused from now on."""
    _REVOKE.rowcount({"d": device_id, "at": now}, conn)
    _DROP_REPORT_TOKEN.rowcount({"d": device_id}, conn)


def _matches(stored: str | None, presented: str) -> bool:
    return stored is not None and hmac.compare_digest(stored, presented)


def authenticate(secret: str, conn: Conn | None = None) -> dict[str, Any] | None:
    """The device row (:data:`_READ`) if ``secret`` is its current or next secret."""
    device_id = device_id_of(secret)
    if device_id is None:
        return None
    row = _READ.mapping({"d": device_id}, conn)
    if row is None:
        return None
    presented = secret_hash(secret)
    current = _matches(row["checkin_hash"], presented)
    if not current and not _matches(row["checkin_next_hash"], presented):
        return None
    row["uses_next"] = not current
    return row


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What the device says at a check-in (validated by the route's model)."""

    seq: int
    booted_image: str | None = None
    booted_digest: str | None = None
    staged_image: str | None = None
    staged_digest: str | None = None
    revision: int | None = None
    generation: int = 0
    applied_revision: int | None = None
    state: str = "none"
    health: str = "unknown"
    error_step: str | None = None
    error: str | None = None
    rolled_back: bool = False
    #: The device's UTC offset in seconds (update windows in device-local time).
    utc_offset: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """An accepted check-in: the device, the secret to use next, and whether its
    desired revision differs from the one it holds (``desired_revision_id`` set)."""

    device_id: int
    guid: bytes
    next_secret: str
    desired_revision_id: int | None
    desired_number: int | None
    desired_generation: int
    #: The device newly says it applied or failed a revision: a rollout may move on.
    settled: bool = False


def _digest(image: str | None) -> str | None:
    return None if image is None else image.rpartition("@")[2]


def _status(row: Mapping[str, Any], obs: Observation) -> str:
    """The device status the observation implies (unchanged unless it settles)."""
    if row["status"] not in (ONBOARDED, APPLIED, FAILED):
        return str(row["status"])
    if obs.state in ("failed", "rolled-back") or obs.rolled_back:
        return FAILED
    want = _digest(row["desired_image"])
    if obs.state == "applied" and (want is None or obs.booted_digest == want):
        return FAILED if obs.health == "unhealthy" else APPLIED
    return str(row["status"])


def record(secret: str, obs: Observation, *, now: datetime, conn: Conn | None = None) -> Outcome | None:
    """Authenticate and record a check-in; None (nothing recorded) when refused: unknown,
    revoked or wrong secret, or a sequence number not above the last accepted one."""
    row = authenticate(secret, conn)
    if row is None or obs.seq <= int(row["checkin_seq"]):
        return None
    device_id = int(row["id"])
    following = new_secret(device_id)
    current_hash = row["checkin_next_hash"] if row["uses_next"] else row["checkin_hash"]
    status = _status(row, obs)
    params: dict[str, Any] = {
        "d": device_id,
        "seq": obs.seq,
        "old_hash": row["checkin_hash"],
        "new_hash": current_hash,
        "next_hash": secret_hash(following),
        "at": now,
        "booted_image": obs.booted_image,
        "booted_digest": obs.booted_digest,
        "staged_image": obs.staged_image,
        "staged_digest": obs.staged_digest,
        "applied_revision": obs.applied_revision,
        "apply_state": obs.state,
        "health": obs.health,
        "error_step": obs.error_step,
        "error": obs.error,
        "rolled_back": obs.rolled_back,
        "revision": obs.revision,
        "generation": obs.generation,
        "utc_offset": obs.utc_offset,
    }
    changed = status != row["status"]
    if changed:
        params["status"] = status
    first = int(row["checkin_seq"]) == 0
    # With nothing else to write, the update is the scope's only write: on PostgreSQL it
    # then runs on its own, without BEGIN and COMMIT round trips (fdo_server.db.last_write).
    with nullcontext() if changed or first else last_write():
        if (_WRITE_STATUS if changed else _WRITE).rowcount(params, conn) != 1:
            return None  # a concurrent check-in with this credential won
    if changed:
        detail = {
            "via": "check-in",
            "state": obs.state,
            "revision": obs.revision,
            "booted_digest": obs.booted_digest,
            "health": obs.health,
        }
        if obs.error_step or obs.error:
            detail |= {"error_step": obs.error_step, "error": obs.error}
        if obs.rolled_back:
            detail["rolled_back"] = True
        event = {"device_id": device_id, "at": now, "kind": status, "detail": json.dumps(detail)}
        _EVENT.rowcount(event, conn)
    if first:
        # The first use of the secret TO2 gave proves the device holds its new credential.
        confirm_guid(row["guid"], now=now, conn=conn)
    number = row["desired_number"]
    generation = int(row["desired_generation"])
    differs = row["desired_revision_id"] is not None and (
        obs.revision != number or obs.generation < generation
    )
    return Outcome(
        device_id=device_id,
        guid=bytes(row["guid"]),
        next_secret=following,
        desired_revision_id=row["desired_revision_id"] if differs else None,
        desired_number=number,
        desired_generation=generation,
        settled=obs.state in ("applied", "failed", "rolled-back")
        and (obs.state, obs.revision, obs.generation)
        != (row["apply_state"], row["held_revision"], row["held_generation"]),
    )


def overdue(device: Device, *, now: datetime, after: timedelta) -> bool:
    """No check-in for ``after`` (interval × overdue intervals) by a device that holds a
    check-in secret; counted from its latest check-in, or its last change before one."""
    if device.checkin_hash is None:
        return False
    since = device.last_checkin_at or device.updated_at
    return utc(since) + after < utc(now)


def checkin_json(
    device: Device,
    revision_number: Callable[[int | None], int | None],
    *,
    now: datetime | None = None,
    overdue_after: timedelta | None = None,
) -> dict[str, Any]:
    """The check-in part of a device view (API, CLI, status page)."""
    return {
        "desired_revision": revision_number(device.desired_revision_id),
        "desired_generation": device.desired_generation,
        "applied_revision": device.applied_revision,
        "apply_state": device.apply_state,
        "booted_image": device.booted_image,
        "booted_digest": device.booted_digest,
        "staged_image": device.staged_image,
        "staged_digest": device.staged_digest,
        "health": device.health,
        "rolled_back": device.rolled_back,
        "last_checkin_at": None
        if device.last_checkin_at is None
        else utc(device.last_checkin_at).isoformat(),
        "last_error": None
        if device.last_error is None and device.last_error_step is None
        else {"step": device.last_error_step, "text": device.last_error},
        "checkin": "revoked"
        if device.checkin_revoked_at is not None
        else ("active" if device.checkin_hash is not None else "none"),
        "overdue": None
        if now is None or overdue_after is None
        else overdue(device, now=now, after=overdue_after),
    }
