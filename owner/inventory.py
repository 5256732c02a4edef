"""The device inventory and groups as ORM objects, for the admin plane.

The admin API, the status pages and the local admin commands work on
:mod:`owner.groups_tables`' SQLModel records in an ORM session; these are their lookups
and edits. The device plane (TO2, check-in) never imports this module: it reads and
writes the same tables with :mod:`owner.groups`' statements on the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlmodel import Session, col, select

from fdo.types import Guid
from fdo_server.db import lent
from owner import desired, groups
from owner.groups import DeviceFacts, ensure_row, now_or, raw_guid
from owner.groups_tables import Device, DeviceEvent, DeviceGuid, Group, Revision


def find_device(db: Session, guid: Guid | bytes) -> Device | None:
    """The device that has, or had, ``guid``."""
    row = db.exec(select(DeviceGuid).where(DeviceGuid.guid == raw_guid(guid))).first()
    return None if row is None else db.get(Device, row.device_id)


def device_guids(db: Session, device: Device) -> list[bytes]:
    """Every GUID of ``device``, oldest first."""
    rows = db.exec(
        select(DeviceGuid).where(DeviceGuid.device_id == device.id).order_by(col(DeviceGuid.id))
    ).all()
    return [r.guid for r in rows]


def add_event(
    db: Session, device: Device, kind: str, detail: Mapping[str, object] | None = None, *, now: datetime
) -> None:
    """Append to ``device``'s timeline."""
    assert device.id is not None  # noqa: S101 - flushed by ensure_device
    db.add(DeviceEvent(device_id=device.id, at=now, kind=kind, detail=dict(detail or {})))


def ensure_device(db: Session, guid: Guid | bytes, *, now: datetime | None = None) -> Device:
    """The device record for ``guid``, created (status ``new``) when missing."""
    db.flush()  # the lookup below reads the database directly
    row = ensure_row(lent(db.connection()), raw_guid(guid), now_or(now))
    device = db.get(Device, row["id"])
    assert device is not None  # noqa: S101 - found or made just now
    return device


def resolve_group(db: Session, facts: DeviceFacts) -> Group | None:
    """The group of a device with ``facts`` (:mod:`owner.groups`: the rule)."""
    db.flush()  # the rules are read from the database directly
    found = groups.resolve_group(lent(db.connection()), facts)
    return None if found is None or found.id is None else db.get(Group, found.id)


def current_revision(db: Session, group: Group) -> Revision | None:
    """``group``'s target revision (docs/rollouts.md), else its newest."""
    if group.target_revision_id is not None and (found := db.get(Revision, group.target_revision_id)):
        return found
    newest = select(Revision).where(Revision.group_id == group.id).order_by(col(Revision.number).desc())
    return db.exec(newest).first()


def record_status(
    db: Session,
    guid: Guid | bytes,
    status: str,
    detail: Mapping[str, object] | None = None,
    *,
    now: datetime | None = None,
) -> Device | None:
    """Set a device's status (``applied``, ``failed``) with a timeline event."""
    device = find_device(db, guid)
    if device is None:
        return None
    at = now_or(now)
    device.status = status
    device.updated_at = at
    db.add(device)
    add_event(db, device, status, detail, now=at)
    return device


def set_desired(
    db: Session, device: Device, number: int | None = None, *, now: datetime, who: str = ""
) -> Revision:
    """:func:`owner.desired.set_desired` for ``device`` on ``db``'s connection (revision
    ``number`` of its group; default: the one it should run now, else the group's
    current one); returns the revision. ``device`` reloads the generation it set."""
    assert device.id is not None  # noqa: S101 - a stored device
    db.flush()  # the statements read and write the rows directly
    chosen = desired.set_desired(device.id, number, now=now, who=who, conn=lent(db.connection()))
    db.expire(device)
    revision = db.get(Revision, chosen.revision_id)
    assert revision is not None  # noqa: S101 - read in this transaction
    return revision
