"""Rollouts changed by an operator (docs/rollouts.md): start, pause, resume, abort, roll
back, and what publishing a revision does; the admin plane's ORM sessions.

Advancing running rollouts, and the runner each owner process has, are
:mod:`owner.rollout_runner` (on the driver, no SQLAlchemy). Both guard every change of a
rollout with its compare-and-set on ``owner_rollout.version``
(:func:`owner.rollout_runner.compare_and_set`) made *before* any other write of the same
transaction: of two transactions changing one rollout at once, the second one's
``UPDATE ... WHERE version = :seen`` matches no row (on PostgreSQL it waits for the
first to commit, then re-checks), so it rolls back and re-reads; no transition is ever
applied twice. Batches are computed once, at start, and all device rows inserted in
the start transaction, so no device is in two batches or skipped however many replicas
run. One active rollout per group is the unique ``active_group_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from fdo_server.db import lent, unit_of_work
from owner.audit import audit
from owner.groups_tables import Device, Group, Revision
from owner.inventory import current_revision
from owner.rollout_runner import ATTEMPTS, Lost, compare_and_set, digest_of
from owner.rollouts import HELD, PENDING, SUCCEEDED, Member, Policy, holds, plan_batches
from owner.rollouts_tables import Rollout, RolloutDevice
from owner.states import ABORTED, ACTIVE_STATES, PAUSED, RUNNING


class RolloutError(Exception):
    """The request cannot be done (``status`` is the HTTP status the API answers)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def _cas(db: Session, rollout: Rollout, *, state: str, reason: str | None, now: datetime) -> None:
    """Move ``rollout`` to ``state`` with ``reason`` if its version is still the one read
    (else :class:`owner.rollout_runner.Lost`), on ``db``'s connection."""
    assert rollout.id is not None  # noqa: S101 - a stored row
    compare_and_set(
        rollout.id,
        rollout.version,
        rollout.group_id,
        state=state,
        batch=rollout.batch,
        reason=reason,
        now=now,
        conn=lent(db.connection()),
    )
    db.expire(rollout)


def _retrying(engine: Engine, action: Callable[[Session], Any], attempts: int = ATTEMPTS) -> Any:
    for _ in range(attempts):
        try:
            with unit_of_work(engine) as db:
                return action(db)
        except Lost:
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
        _cas(db, rollout, state=PAUSED, reason=f"paused by {who}", now=now)
        audit(db, who, "rollout.pause", f"rollout:{rollout_id}", {}, now=now)

    _retrying(engine, run)


def resume(engine: Engine, rollout_id: int, *, who: str, now: datetime) -> None:
    def run(db: Session) -> None:
        rollout = _get(db, rollout_id)
        if rollout.state != PAUSED:
            raise RolloutError(f"rollout {rollout_id} is {rollout.state}, not paused")
        _cas(db, rollout, state=RUNNING, reason=None, now=now)
        audit(db, who, "rollout.resume", f"rollout:{rollout_id}", {}, now=now)

    _retrying(engine, run)


def _abort(db: Session, rollout: Rollout, reason: str, now: datetime) -> None:
    if rollout.state not in ACTIVE_STATES:
        raise RolloutError(f"rollout {rollout.id} is {rollout.state} already")
    group_id, from_revision_id = rollout.group_id, rollout.from_revision_id
    _cas(db, rollout, state=ABORTED, reason=reason, now=now)
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
