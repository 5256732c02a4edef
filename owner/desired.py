"""The revision a device should run (``owner_device.desired_revision_id``).

Onboarding sets it to the revision TO2 handed out (:func:`owner.groups.record_onboarding`);
:func:`set_desired` changes it afterwards — an operator's redelivery
(``POST /api/v1/devices/{guid}/redeliver``) today, a rollout batch later. Each call
bumps ``desired_generation``, so re-sending the revision a device already holds (after
fixing what failed, say) reaches it at its next check-in too. :func:`assignment_of`
builds what the check-in answer carries, as TO2 does (:func:`owner.assign.to_bootc`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from fdo.serviceinfo.bootc import Assignment as BootcAssignment
from fdo_server.sql import Conn
from owner import groups
from owner.assign import to_bootc
from owner.groups import RevisionRow

if TYPE_CHECKING:  # the admin plane's records: the check-in (assignment_of) reads rows
    from sqlmodel import Session

    from owner.groups_tables import Device, Revision


class DesiredError(Exception):
    """The desired revision cannot be set (the message says why)."""


def set_desired(
    db: Session, device: Device, number: int | None = None, *, now: datetime, who: str = ""
) -> Revision:
    """Make revision ``number`` of the device's group (default: the one it should run
    now, else the group's newest) the device's desired revision; returns it. The change
    is :func:`owner.desired_rows.set_desired`'s, on ``db``'s connection."""
    from fdo_server.db import lent
    from owner import desired_rows, inventory
    from owner.groups_tables import Group, Revision

    if device.group_id is None:
        raise DesiredError("the device has no group")
    revision_id = None
    if number is None and device.desired_revision_id is None:
        group = db.get(Group, device.group_id)
        current = None if group is None else inventory.current_revision(db, group)
        if current is None or current.id is None:
            raise DesiredError("no such revision in the device's group")
        revision_id = current.id
    assert device.id is not None  # noqa: S101 - a stored device
    db.flush()  # the statements below read and write the rows directly
    try:
        desired = desired_rows.set_desired(
            device.id, number, revision_id=revision_id, now=now, who=who, conn=lent(db.connection())
        )
    except desired_rows.DesiredError as exc:
        raise DesiredError(str(exc)) from None
    db.expire(device)  # reloads the generation the statement set
    revision = db.get(Revision, desired.revision_id)
    assert revision is not None  # noqa: S101 - read in this transaction
    return revision


def assignment_of(revision_id: int, conn: Conn | None = None) -> tuple[RevisionRow, BootcAssignment]:
    """The revision and what a device gets to apply it (secrets included, no report
    item: the device keeps its own check-in state), read on ``conn`` (by default the
    unit of work's)."""
    assignment = groups.revision_assignment(revision_id, conn)
    if assignment is None:
        raise DesiredError("the desired revision is gone")
    return assignment.revision, to_bootc(assignment, None)
