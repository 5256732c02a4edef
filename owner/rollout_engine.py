"""Rollouts in the database (docs/rollouts.md): start, advance, pause, resume, abort,
roll back, and the background runner each owner process has.

Decisions are :mod:`owner.rollouts` (pure). Every change of a rollout is guarded by a
compare-and-set on ``owner_rollout.version`` made *before* any other write of the same
transaction: of two owner replicas advancing one rollout at once, the second one's
``UPDATE ... WHERE version = :seen`` matches no row (on PostgreSQL it waits for the
first to commit, then re-checks), so it rolls back and re-reads; no transition is ever
applied twice. Batches are computed once, at start, and all device rows inserted in
the start transaction, so no device is in two batches or skipped however many replicas
run. One active rollout per group is the unique ``active_group_id``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from fdo.types import Guid
from fdo_server.clock import utc
from fdo_server.db import unit_of_work
from owner.audit import audit
from owner.desired import set_desired
from owner.groups_tables import Device, Group, Revision
from owner.inventory import current_revision
from owner.rollouts import (
    FINISHED,
    HELD,
    PENDING,
    SUCCEEDED,
    DeviceRow,
    Member,
    Observed,
    Policy,
    holds,
    next_due,
    plan_batches,
    step,
)
from owner.rollouts_tables import Rollout, RolloutDevice
from owner.states import ABORTED, ACTIVE_STATES, PAUSED, RUNNING

log = logging.getLogger("owner.rollouts")
_ROLLOUTS: Table = Rollout.__table__  # type: ignore[attr-defined]


class RolloutError(Exception):
    """The request cannot be done (``status`` is the HTTP status the API answers)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class _Lost(Exception):
    """Another transaction changed the rollout first (the compare-and-set matched nothing)."""


def digest_of(image: str) -> str:
    return image.rpartition("@")[2]


def _cas(db: Session, rollout: Rollout, **values: Any) -> None:
    """Bump the rollout's version if it is still the one read, with ``values``."""
    state = values.get("state", rollout.state)
    values["active_group_id"] = rollout.group_id if state in ACTIVE_STATES else None
    result = db.connection().execute(
        update(_ROLLOUTS)
        .where(_ROLLOUTS.c.id == rollout.id, _ROLLOUTS.c.version == rollout.version)
        .values(version=rollout.version + 1, **values)
    )
    if result.rowcount != 1:
        raise _Lost
    db.expire(rollout)


def _retrying(engine: Engine, action: Callable[[Session], Any], attempts: int = 8) -> Any:
    for _ in range(attempts):
        try:
            with unit_of_work(engine) as db:
                return action(db)
        except _Lost:
            continue
    raise RolloutError("the rollout kept changing under this request; retry", 503)


def active_rollout(db: Session, group_id: int) -> Rollout | None:
    return db.exec(select(Rollout).where(Rollout.active_group_id == group_id)).first()


def target_revision(db: Session, group: Group) -> Revision | None:
    """The group's target (what onboarding hands out; the newest when none is set)."""
    return current_revision(db, group)


# ---------------------------------------------------------------------------- start


def start(
    db: Session,
    group: Group,
    revision: Revision,
    policy: Policy,
    *,
    who: str,
    now: datetime,
    rollback_of: int | None = None,
) -> Rollout:
    """Start a rollout of ``revision`` to ``group``'s onboarded devices (in ``db``'s
    transaction): batches computed now, the group's target moved to ``revision``."""
    assert group.id is not None and revision.id is not None  # noqa: S101 - stored rows
    active = active_rollout(db, group.id)
    if active is not None:
        raise RolloutError(f"group {group.name!r} has an active rollout ({active.id}): abort it first")
    before = target_revision(db, group)
    devices = db.exec(
        select(Device)
        .where(Device.group_id == group.id, col(Device.desired_revision_id).is_not(None))
        .order_by(col(Device.id))
    ).all()
    batches = plan_batches(policy, [Member(d.id or 0, d.labels) for d in devices])
    rollout = Rollout(
        group_id=group.id,
        revision_id=revision.id,
        from_revision_id=None if before is None else before.id,
        active_group_id=group.id,
        state=RUNNING,
        options=policy.to_json(),
        batch=1,
        batches=len(batches),
        rollback_of=rollback_of,
        created_by=who,
        created_at=now,
        updated_at=now,
    )
    db.add(rollout)
    try:
        db.flush()
    except IntegrityError:
        raise RolloutError(f"group {group.name!r} has an active rollout") from None
    assert rollout.id is not None  # noqa: S101 - flushed
    by_id = {d.id: d for d in devices}
    digest = digest_of(revision.image)
    for number, ids in enumerate(batches, start=1):
        for device_id in ids:
            device = by_id[device_id]
            in_step = (
                device.desired_revision_id == revision.id
                and device.apply_state == "applied"
                and device.booted_digest == digest
            )
            state = SUCCEEDED if in_step else (HELD if holds(policy, device.labels) else PENDING)
            db.add(
                RolloutDevice(
                    rollout_id=rollout.id,
                    device_id=device_id,
                    batch=number,
                    state=state,
                    from_revision_id=device.desired_revision_id,
                    finished_at=now if in_step else None,
                )
            )
    group.target_revision_id = revision.id
    db.add(group)
    db.flush()
    return rollout


# ---------------------------------------------------------------------------- advance


def _generation(sent: int | None, device: Device, revision_id: int) -> int | None:
    """The generation a device's check-in must hold for the rollout to count it.

    The one the rollout sent, unless the device has onboarded again since (a new TO2
    hands out the group's target, the rollout's revision, and counts generations from 0
    again): then what that TO2 gave it, so it is not failed on the report timeout.
    """
    if sent is not None and device.desired_revision_id == revision_id:
        return min(sent, device.desired_generation)
    return sent


def _name(device: Device) -> str:
    return device.serial or str(Guid(device.guid))


def _advance_once(db: Session, rollout_id: int, now: datetime) -> tuple[bool, datetime | None]:
    """Advance one rollout in ``db``'s transaction: whether something changed, and when
    time alone would change something next (:func:`owner.rollouts.next_due`; None when
    it is not running or only an event can move it)."""
    rollout = db.get(Rollout, rollout_id)
    if rollout is None or rollout.state != RUNNING:
        return False, None
    revision = db.get(Revision, rollout.revision_id)
    assert revision is not None  # noqa: S101 - a foreign key
    policy = Policy.from_json(rollout.options)
    pairs = db.exec(
        select(RolloutDevice, Device)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(RolloutDevice.rollout_id == rollout_id)
    ).all()
    rows = [
        DeviceRow(
            device_id=d.id or 0,
            batch=r.batch,
            state=r.state,
            labels=d.labels,
            utc_offset=d.utc_offset,
            started_at=None if r.started_at is None else utc(r.started_at),
            generation=_generation(r.generation, d, rollout.revision_id),
            error_step=r.error_step,
            error=r.error,
            observed=Observed(
                held_revision=d.held_revision,
                held_generation=d.held_generation,
                apply_state=d.apply_state,
                booted_digest=d.booted_digest,
                error_step=d.last_error_step,
                error=d.last_error,
            ),
            name=_name(d),
            excluded=d.group_id != rollout.group_id,
        )
        for r, d in pairs
    ]
    result = step(
        policy,
        rows,
        state=rollout.state,
        batch=rollout.batch,
        batches=rollout.batches,
        reason=rollout.reason,
        revision=revision.number,
        digest=digest_of(revision.image),
        now=now,
    )
    after = {row.device_id: row for row in rows} | result.devices
    due = None
    if result.state == RUNNING:
        due = next_due(policy, list(after.values()), batch=result.batch, now=now)
    if not result.changes(rollout.state, rollout.batch, rollout.reason):
        return False, due
    group_id, from_revision_id, before = rollout.group_id, rollout.from_revision_id, rollout.batch
    _cas(db, rollout, state=result.state, batch=result.batch, reason=result.reason, updated_at=now)
    members = {d.id: (r, d) for r, d in pairs}
    who = f"rollout {rollout_id}"
    for device_id, row in result.devices.items():
        member, device = members[device_id]
        member.state, member.error_step, member.error = row.state, row.error_step, row.error
        member.started_at = row.started_at
        member.finished_at = now if row.state in FINISHED else None
        if device_id in result.start:
            set_desired(db, device, revision.number, now=now, who=who)
            member.generation = device.desired_generation
        if device_id in result.revert and member.from_revision_id is not None:
            back = db.get(Revision, member.from_revision_id)
            if back is not None:
                set_desired(db, device, back.number, now=now, who=who)
        db.add(member)
    if result.state == ABORTED:  # rolled back by itself: the target goes back too
        group = db.get(Group, group_id)
        if group is not None:
            group.target_revision_id = from_revision_id
            db.add(group)
    if result.state != RUNNING or result.batch != before:
        log.info("rollout %s: %s, batch %s%s", rollout_id, result.state, result.batch,
                 f" ({result.reason})" if result.reason else "")  # fmt: skip
    return True, due


def _advance(engine: Engine, rollout_id: int, now: datetime) -> tuple[bool, datetime | None]:
    for _ in range(8):
        try:
            with unit_of_work(engine) as db:
                return _advance_once(db, rollout_id, now)
        except _Lost:
            continue
    return False, None


def advance(engine: Engine, rollout_id: int, now: datetime) -> bool:
    """Advance one rollout as far as it goes now; True when something changed. Safe to
    call from any number of processes at once (compare-and-set, retried on a loss)."""
    return _advance(engine, rollout_id, now)[0]


def running_ids(engine: Engine) -> list[int]:
    with Session(engine) as db:
        return [int(i) for i in db.exec(select(Rollout.id).where(Rollout.state == RUNNING)).all() if i]


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass over the running rollouts found: how many still run, and the
    earliest time one of them is due again (None: none is, time alone moves none)."""

    running: int
    due: datetime | None


def advance_running(engine: Engine, now: datetime) -> Pass:
    """Advance every running rollout (each in its own transaction)."""
    ids = running_ids(engine)
    due: datetime | None = None
    for rollout_id in ids:
        try:
            _, at = _advance(engine, rollout_id, now)
        except Exception:
            log.exception("rollout %s: advance failed", rollout_id)
            continue
        if at is not None and (due is None or at < due):
            due = at
    return Pass(len(running_ids(engine)) if ids else 0, due)


# ---------------------------------------------------------------------------- operator


def _get(db: Session, rollout_id: int) -> Rollout:
    rollout = db.get(Rollout, rollout_id)
    if rollout is None:
        raise RolloutError(f"no rollout {rollout_id}", 404)
    return rollout


def pause(engine: Engine, rollout_id: int, *, who: str, now: datetime) -> None:
    def run(db: Session) -> None:
        rollout = _get(db, rollout_id)
        if rollout.state != RUNNING:
            raise RolloutError(f"rollout {rollout_id} is {rollout.state}, not running")
        _cas(db, rollout, state=PAUSED, reason=f"paused by {who}", updated_at=now)
        audit(db, who, "rollout.pause", f"rollout:{rollout_id}", {}, now=now)

    _retrying(engine, run)


def resume(engine: Engine, rollout_id: int, *, who: str, now: datetime) -> None:
    def run(db: Session) -> None:
        rollout = _get(db, rollout_id)
        if rollout.state != PAUSED:
            raise RolloutError(f"rollout {rollout_id} is {rollout.state}, not paused")
        _cas(db, rollout, state=RUNNING, reason=None, updated_at=now)
        audit(db, who, "rollout.resume", f"rollout:{rollout_id}", {}, now=now)

    _retrying(engine, run)


def _abort(db: Session, rollout: Rollout, reason: str, now: datetime) -> None:
    if rollout.state not in ACTIVE_STATES:
        raise RolloutError(f"rollout {rollout.id} is {rollout.state} already")
    group_id, from_revision_id = rollout.group_id, rollout.from_revision_id
    _cas(db, rollout, state=ABORTED, reason=reason, updated_at=now)
    group = db.get(Group, group_id)
    if group is not None:
        group.target_revision_id = from_revision_id
        db.add(group)
    db.flush()


def abort(engine: Engine, rollout_id: int, *, who: str, now: datetime) -> None:
    def run(db: Session) -> None:
        _abort(db, _get(db, rollout_id), f"aborted by {who}", now)
        audit(db, who, "rollout.abort", f"rollout:{rollout_id}", {}, now=now)

    _retrying(engine, run)


def rollback(engine: Engine, rollout_id: int, *, who: str, now: datetime) -> int:
    """Start a rollout of the rollout's from-revision with its options (aborting it
    first in the same transaction when it is still active); returns the new id."""

    def run(db: Session) -> int:
        rollout = _get(db, rollout_id)
        if rollout.from_revision_id is None:
            raise RolloutError(f"rollout {rollout_id} has no revision to go back to")
        group, back = db.get(Group, rollout.group_id), db.get(Revision, rollout.from_revision_id)
        if group is None or group.deleted_at is not None or back is None:
            raise RolloutError(f"the group of rollout {rollout_id} is gone")
        if rollout.state in ACTIVE_STATES:
            _abort(db, rollout, f"rolled back by {who}", now)
        policy = Policy.from_json(rollout.options)
        new = start(db, group, back, policy, who=who, now=now, rollback_of=rollout_id)
        assert new.id is not None  # noqa: S101 - flushed
        detail = {"rolls_back": rollout_id, "group": group.name, "revision": back.number}
        audit(db, who, "rollout.rollback", f"rollout:{new.id}", detail, now=now)
        return new.id

    result: int = _retrying(engine, run)
    return result


# ---------------------------------------------------------------------------- publish


def on_publish(db: Session, group: Group, revision: Revision, *, who: str, now: datetime) -> dict[str, Any]:
    """What publishing ``revision`` does beyond storing it (docs/rollouts.md): the
    publish answer's ``target_revision``, ``rollout`` and ``behind`` (with a hint)."""
    onboarded = db.exec(
        select(func.count())
        .select_from(Device)
        .where(Device.group_id == group.id, col(Device.desired_revision_id).is_not(None))
    ).one()
    out: dict[str, Any] = {"rollout": None, "behind": 0, "hint": None}
    if onboarded == 0:
        group.target_revision_id = revision.id
        db.add(group)
    elif group.rollout_policy is not None and group.id is not None and active_rollout(db, group.id) is None:
        rollout = start(db, group, revision, Policy.from_json(group.rollout_policy), who=who, now=now)
        out["rollout"] = rollout.id
    else:
        out["behind"] = onboarded
        busy = group.id is not None and active_rollout(db, group.id) is not None
        out["hint"] = (
            f"{onboarded} onboarded device(s) stay on their revision"
            + (" (a rollout is active: abort it first)" if busy else "")
            + f"; start a rollout: fdo owner rollouts start {group.name} --revision {revision.number}"
        )
    target = target_revision(db, group)
    out["target_revision"] = None if target is None else target.number
    return out


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
        engine: Engine,
        *,
        tick: float,
        clock: Callable[[], datetime],
        wait: Waiter = threading.Event.wait,
    ) -> None:
        self.engine, self.tick, self.clock = engine, tick, clock
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
            found = advance_running(self.engine, now)
        except Exception:
            log.exception("rollout pass failed")
            return SAFETY_TICKS * self.tick
        return self.timeout(found, now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._wait(self._wake, self.run_once())
