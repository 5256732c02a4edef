"""Advancing running rollouts, and the background runner each owner process has
(docs/rollouts.md), on the driver (:mod:`fdo_server.sql`): a worker that serves only
devices runs the runner without loading SQLAlchemy or SQLModel.

Decisions are :mod:`owner.rollouts` (pure). Every change of a rollout is guarded by a
compare-and-set on ``owner_rollout.version`` (:func:`compare_and_set`) made *before* any
other write of the same transaction: of two owner replicas advancing one rollout at
once, the second one's ``UPDATE ... WHERE version = :seen`` matches no row (on
PostgreSQL it waits for the first to commit, then re-checks), so it rolls back and
re-reads (:class:`Lost`, up to 8 times); no transition is ever applied twice. The
operator's changes (:mod:`owner.rollout_engine`: start, pause, resume, abort, roll back)
run the same compare-and-set in their ORM sessions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fdo.types import Guid
from fdo_server.clock import utc
from fdo_server.sql import Conn, Database, Sql, message_scope
from owner.desired import set_desired
from owner.rollouts import FINISHED, DeviceRow, Observed, Policy, next_due, step
from owner.states import ABORTED, ACTIVE_STATES, RUNNING

log = logging.getLogger("owner.rollouts")

#: Attempts of one transaction that keeps losing its compare-and-set.
ATTEMPTS = 8


class Lost(Exception):
    """Another transaction changed the rollout first (the compare-and-set matched nothing)."""


def digest_of(image: str) -> str:
    return image.rpartition("@")[2]


_CAS = Sql(
    "UPDATE owner_rollout SET version = :next, state = :state, batch = :batch, reason = :reason, "
    "updated_at = :at, active_group_id = :active WHERE id = :id AND version = :seen"
)


def compare_and_set(
    rollout_id: int,
    seen: int,
    group_id: int,
    *,
    state: str,
    batch: int,
    reason: str | None,
    now: datetime,
    conn: Conn | None = None,
) -> None:
    """Move rollout ``rollout_id`` to ``state``, ``batch`` and ``reason`` and bump its
    version, if the version is still ``seen`` (else :class:`Lost`); the group stays its
    ``active_group_id`` while the state is active. The first write of its transaction."""
    changed = _CAS.rowcount(
        {
            "id": rollout_id,
            "seen": seen,
            "next": seen + 1,
            "state": state,
            "batch": batch,
            "reason": reason,
            "at": now,
            "active": group_id if state in ACTIVE_STATES else None,
        },
        conn,
    )
    if changed != 1:
        raise Lost


# ---------------------------------------------------------------------------- advance

_ROLLOUT = Sql(
    "SELECT o.group_id, o.revision_id, o.from_revision_id, o.state, o.options, o.batch, o.batches, "
    "o.reason, o.version, r.number, r.image "
    "FROM owner_rollout o JOIN owner_revision r ON r.id = o.revision_id WHERE o.id = :id",
    jsons=("options",),
)
# Each device of the rollout with what its check-ins recorded, and the number of the
# revision it had when the rollout started (what a rollback sends it back to).
_MEMBERS = Sql(
    "SELECT m.id, m.device_id, m.batch, m.state, m.generation, m.started_at, m.error_step, m.error, "
    "f.number AS from_number, d.guid, d.serial, d.labels, d.utc_offset, d.group_id, "
    "d.desired_revision_id, d.desired_generation, d.held_revision, d.held_generation, d.apply_state, "
    "d.booted_digest, d.last_error_step, d.last_error "
    "FROM owner_rollout_device m JOIN owner_device d ON d.id = m.device_id "
    "LEFT JOIN owner_revision f ON f.id = m.from_revision_id "
    "WHERE m.rollout_id = :id ORDER BY m.id",
    jsons=("labels",),
    datetimes=("started_at",),
)
_SET_MEMBER = Sql(
    "UPDATE owner_rollout_device SET state = :state, error_step = :error_step, error = :error, "
    "started_at = :started_at, finished_at = :finished_at, generation = :generation WHERE id = :id"
)
_SET_TARGET = Sql("UPDATE owner_group SET target_revision_id = :revision WHERE id = :g")
_RUNNING = Sql("SELECT id FROM owner_rollout WHERE state = :running")


def _generation(sent: int | None, device: Mapping[str, Any], revision_id: int) -> int | None:
    """The generation a device's check-in must hold for the rollout to count it.

    The one the rollout sent, unless the device has onboarded again since (a new TO2
    hands out the group's target, the rollout's revision, and counts generations from 0
    again): then what that TO2 gave it, so it is not failed on the report timeout.
    """
    if sent is not None and device["desired_revision_id"] == revision_id:
        return min(sent, int(device["desired_generation"]))
    return sent


def _name(device: Mapping[str, Any]) -> str:
    return str(device["serial"] or Guid(bytes(device["guid"])))


def _row(member: Mapping[str, Any], group_id: int, revision_id: int) -> DeviceRow:
    """The device as :func:`owner.rollouts.step` sees it."""
    return DeviceRow(
        device_id=member["device_id"],
        batch=member["batch"],
        state=member["state"],
        labels=member["labels"],
        utc_offset=member["utc_offset"],
        started_at=None if member["started_at"] is None else utc(member["started_at"]),
        generation=_generation(member["generation"], member, revision_id),
        error_step=member["error_step"],
        error=member["error"],
        observed=Observed(
            held_revision=member["held_revision"],
            held_generation=member["held_generation"],
            apply_state=member["apply_state"],
            booted_digest=member["booted_digest"],
            error_step=member["last_error_step"],
            error=member["last_error"],
        ),
        name=_name(member),
        excluded=member["group_id"] != group_id,
    )


def _advance_once(rollout_id: int, now: datetime) -> tuple[bool, datetime | None]:
    """Advance one rollout in the open unit of work (:func:`fdo_server.sql.current`):
    whether something changed, and when time alone would change something next
    (:func:`owner.rollouts.next_due`; None when it is not running or only an event can
    move it). :class:`Lost` when another transaction changed the rollout first."""
    found = _ROLLOUT.first({"id": rollout_id})
    if found is None or found[3] != RUNNING:
        return False, None
    group_id, revision_id, from_revision_id, state, options, batch, batches, reason, version = found[:9]
    number, image = found[9], found[10]
    policy = Policy.from_json(options)
    members = _MEMBERS.mappings({"id": rollout_id})
    rows = [_row(member, group_id, revision_id) for member in members]
    result = step(
        policy,
        rows,
        state=state,
        batch=batch,
        batches=batches,
        reason=reason,
        revision=number,
        digest=digest_of(image),
        now=now,
    )
    after = {row.device_id: row for row in rows} | result.devices
    due = None
    if result.state == RUNNING:
        due = next_due(policy, list(after.values()), batch=result.batch, now=now)
    if not result.changes(state, batch, reason):
        return False, due
    compare_and_set(
        rollout_id, version, group_id, state=result.state, batch=result.batch, reason=result.reason, now=now
    )
    by_device = {member["device_id"]: member for member in members}
    who = f"rollout {rollout_id}"
    for device_id, row in result.devices.items():
        member = by_device[device_id]
        generation = member["generation"]
        if device_id in result.start:
            generation = set_desired(device_id, number, now=now, who=who).generation
        if device_id in result.revert and member["from_number"] is not None:
            set_desired(device_id, member["from_number"], now=now, who=who)
        _SET_MEMBER.rowcount(
            {
                "id": member["id"],
                "state": row.state,
                "error_step": row.error_step,
                "error": row.error,
                "started_at": row.started_at,
                "finished_at": now if row.state in FINISHED else None,
                "generation": generation,
            }
        )
    if result.state == ABORTED:  # rolled back by itself: the target goes back too
        _SET_TARGET.rowcount({"g": group_id, "revision": from_revision_id})
    if result.state != RUNNING or result.batch != batch:
        log.info("rollout %s: %s, batch %s%s", rollout_id, result.state, result.batch,
                 f" ({result.reason})" if result.reason else "")  # fmt: skip
    return True, due


def _advance(database: Database, rollout_id: int, now: datetime) -> tuple[bool, datetime | None]:
    for _ in range(ATTEMPTS):
        try:
            with message_scope(database):
                return _advance_once(rollout_id, now)
        except Lost:
            continue
    return False, None


def advance(database: Database, rollout_id: int, now: datetime) -> bool:
    """Advance one rollout as far as it goes now; True when something changed. Safe to
    call from any number of processes at once (compare-and-set, retried on a loss)."""
    return _advance(database, rollout_id, now)[0]


def running_ids(database: Database) -> list[int]:
    with message_scope(database):
        return [int(i) for (i,) in _RUNNING.all({"running": RUNNING}) if i]


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass over the running rollouts found: how many still run, and the
    earliest time one of them is due again (None: none is, time alone moves none)."""

    running: int
    due: datetime | None


def advance_running(database: Database, now: datetime) -> Pass:
    """Advance every running rollout (each in its own transaction)."""
    ids = running_ids(database)
    due: datetime | None = None
    for rollout_id in ids:
        try:
            _, at = _advance(database, rollout_id, now)
        except Exception:
            log.exception("rollout %s: advance failed", rollout_id)
            continue
        if at is not None and (due is None or at < due):
            due = at
    return Pass(len(running_ids(database)) if ids else 0, due)


# ---------------------------------------------------------------------------- runner


#: ``wait(event, timeout)``: block until ``event`` is set or ``timeout`` seconds pass
#: (None: no timeout); True when it was set (``threading.Event.wait``).
Waiter = Callable[[threading.Event, float | None], bool]

#: The runner looks at running rollouts at least every ``SAFETY_TICKS × tick`` seconds.
SAFETY_TICKS = 12


class RolloutRunner:
    """Advances running rollouts when something is due (docs/rollouts.md, "Several
    owner replicas").

    After each pass it sleeps until the earliest time one of the running rollouts is
    due (a report timeout, an update window opening: :func:`owner.rollouts.next_due`),
    and at most ``SAFETY_TICKS × tick`` seconds while any runs (how long a change made
    in another process waits at most: a label set there, a worker that advanced there
    and stopped). With no rollout running it sleeps with no timeout at all. :meth:`wake`
    (a start, resume or rollback in this process, a check-in here that settles a device,
    a label change or group move here) starts a pass at once.
    """

    def __init__(
        self,
        database: Database,
        *,
        tick: float,
        clock: Callable[[], datetime],
        wait: Waiter = threading.Event.wait,
    ) -> None:
        self.database, self.tick, self.clock = database, tick, clock
        self._wait = wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (again, after :meth:`stop`: an app's lifespan may be re-entered)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fdo-owner-rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def timeout(self, found: Pass, now: datetime) -> float | None:
        """How long to sleep after a pass that found ``found`` at ``now`` (None: until woken)."""
        if not found.running:
            return None
        safety = SAFETY_TICKS * self.tick
        if found.due is None:
            return safety
        seconds = (found.due - now).total_seconds()
        return min(safety, seconds if seconds > 0 else self.tick)

    def run_once(self) -> float | None:
        """One pass; returns how long to sleep after it (:meth:`timeout`)."""
        now = self.clock()
        try:
            found = advance_running(self.database, now)
        except Exception:
            log.exception("rollout pass failed")
            return SAFETY_TICKS * self.tick
        return self.timeout(found, now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._wait(self._wake, self.run_once())
