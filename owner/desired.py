"""The revision a device should run (``owner_device.desired_revision_id``), on the driver.

Onboarding sets it to the revision TO2 handed out (:func:`owner.groups.record_onboarding`);
:func:`set_desired` is the one place that changes it afterwards: a rollout batch
(:mod:`owner.rollout_runner`) on its unit of work's connection, an operator's redelivery
(``POST /api/v1/devices/{guid}/redeliver``) through :func:`owner.inventory.set_desired`
(the admin plane's ORM session lends its connection). Each call bumps
``desired_generation``, so re-sending the revision a device already holds (after fixing
what failed, say) reaches it at its next check-in too, and adds a ``desired`` event to
its timeline. :func:`assignment_of` builds what the check-in answer carries, as TO2 does
(:func:`owner.assign.to_bootc`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fdo.serviceinfo.bootc import Assignment as BootcAssignment
from fdo_server.sql import Conn, Sql
from owner import groups
from owner.assign import to_bootc
from owner.groups import RevisionRow


class DesiredError(Exception):
    """The desired revision cannot be set (the message says why)."""


@dataclass(frozen=True, slots=True)
class Desired:
    """The revision a device was told to run, and the generation that tells it."""

    revision_id: int
    number: int
    generation: int


_DEVICE = Sql("SELECT group_id, desired_revision_id FROM owner_device WHERE id = :d")
_BY_NUMBER = Sql("SELECT id, number FROM owner_revision WHERE group_id = :g AND number = :n")
_BY_ID = Sql("SELECT id, number FROM owner_revision WHERE id = :r")
_SET = Sql(
    "UPDATE owner_device SET desired_revision_id = :r, desired_generation = desired_generation + 1, "
    "updated_at = :at WHERE id = :d RETURNING desired_generation"
)


def set_desired(
    device_id: int,
    number: int | None = None,
    *,
    revision_id: int | None = None,
    now: datetime,
    who: str = "",
    conn: Conn | None = None,
) -> Desired:
    """Make revision ``number`` of the device's group (else revision ``revision_id``, else
    the device's desired revision again, else the group's current one: its target, else
    its newest) the desired revision of device ``device_id``;
    on ``conn``, by default the unit of work's (:func:`fdo_server.sql.current`).
    :class:`DesiredError` when the device has no group or there is no such revision."""
    device = _DEVICE.first({"d": device_id}, conn)
    if device is None or device[0] is None:
        raise DesiredError("the device has no group")
    group_id, desired_revision_id = device
    if number is not None:
        found = _BY_NUMBER.first({"g": group_id, "n": number}, conn)
    else:
        wanted = revision_id if revision_id is not None else desired_revision_id
        if wanted is None:
            wanted = groups.current_revision_id(group_id, conn)
        found = None if wanted is None else _BY_ID.first({"r": wanted}, conn)
    if found is None:
        raise DesiredError("no such revision in the device's group")
    revision, revision_number = int(found[0]), int(found[1])
    row = _SET.first({"d": device_id, "r": revision, "at": now}, conn)
    assert row is not None  # noqa: S101 - read above, in this transaction
    generation = int(row[0])
    detail = {"revision": revision_number, "generation": generation, "by": who}
    groups.add_event_row(device_id, "desired", detail, at=now, conn=conn)
    return Desired(revision, revision_number, generation)


def assignment_of(revision_id: int, conn: Conn | None = None) -> tuple[RevisionRow, BootcAssignment]:
    """The revision and what a device gets to apply it (secrets included, no report
    item: the device keeps its own check-in state), read on ``conn`` (by default the
    unit of work's)."""
    assignment = groups.revision_assignment(revision_id, conn)
    if assignment is None:
        raise DesiredError("the desired revision is gone")
    return assignment.revision, to_bootc(assignment, None)
