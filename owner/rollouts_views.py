"""Rollouts as the API, the CLI and the status page show them (docs/rollouts.md)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlmodel import Session, col, select

from fdo.types import Guid
from fdo_server.clock import utc
from owner.groups_tables import Device, Group, Revision
from owner.rollouts import DEVICE_STATES, FAILED, ROLLED_BACK
from owner.rollouts_schemas import BatchOut, ErrorOut, RolloutDeviceOut, RolloutOut
from owner.rollouts_tables import Rollout, RolloutDevice


def _iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()


def _number(db: Session, revision_id: int | None) -> int | None:
    found = None if revision_id is None else db.get(Revision, revision_id)
    return None if found is None else found.number


def rollout_view(db: Session, rollout: Rollout, *, devices: bool = True) -> RolloutOut:
    """A rollout as the API, the CLI and the status page show it."""
    group = db.get(Group, rollout.group_id)
    pairs = db.exec(
        select(RolloutDevice, Device)
        .join(Device, col(Device.id) == col(RolloutDevice.device_id))
        .where(RolloutDevice.rollout_id == rollout.id)
        .order_by(col(RolloutDevice.batch), col(RolloutDevice.device_id))
    ).all()
    counts = Counter(r.state for r, _ in pairs)
    by_batch: dict[int, Counter[str]] = {}
    for r, _ in pairs:
        by_batch.setdefault(r.batch, Counter())[r.state] += 1
    numbers: dict[int | None, int | None] = {}

    def number(revision_id: int | None) -> int | None:
        if revision_id not in numbers:
            numbers[revision_id] = _number(db, revision_id)
        return numbers[revision_id]

    rows = None
    if devices:
        rows = [
            RolloutDeviceOut(
                guid=str(Guid(d.guid)),
                serial=d.serial,
                batch=r.batch,
                state=r.state,
                from_revision=number(r.from_revision_id),
                started_at=_iso(r.started_at),
                finished_at=_iso(r.finished_at),
                error=None
                if r.error is None and r.error_step is None
                else ErrorOut(step=r.error_step, text=r.error),
            )
            for r, d in pairs
        ]
    assert rollout.id is not None  # noqa: S101 - a stored row
    return RolloutOut(
        id=rollout.id,
        group=group.name if group is not None else "?",
        revision=number(rollout.revision_id) or 0,
        from_revision=number(rollout.from_revision_id),
        state=rollout.state,
        reason=rollout.reason,
        batch=rollout.batch,
        batches=rollout.batches,
        options=dict(rollout.options),
        rollback_of=rollout.rollback_of,
        created_by=rollout.created_by,
        created_at=_iso(rollout.created_at) or "",
        updated_at=_iso(rollout.updated_at) or "",
        counts={s: counts[s] for s in DEVICE_STATES if counts[s]},
        batch_counts=[
            BatchOut(batch=b, devices=sum(c.values()), counts={s: c[s] for s in DEVICE_STATES if c[s]})
            for b, c in sorted(by_batch.items())
        ],
        devices=rows,
    )


def device_rollouts(db: Session, device_id: int | None) -> list[dict[str, object]]:
    """The device's rollout memberships, newest first (device views)."""
    pairs = db.exec(
        select(RolloutDevice, Rollout)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(RolloutDevice.device_id == device_id)
        .order_by(col(Rollout.id).desc())
        .limit(20)
    ).all()
    return [
        {
            "rollout": ro.id,
            "revision": _number(db, ro.revision_id),
            "rollout_state": ro.state,
            "batch": r.batch,
            "state": r.state,
            "error": None
            if r.state not in (FAILED, ROLLED_BACK) or (r.error is None and r.error_step is None)
            else {"step": r.error_step, "text": r.error},
        }
        for r, ro in pairs
    ]
