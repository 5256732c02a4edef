"""What the owner's device routes do and answer, without a web framework, pydantic or an ORM.

The database work of ``POST /device/v1/checkin`` and ``/device/v1/report`` (and the
deprecated ``/api/v1/report``): :func:`answer_checkin` and :func:`answer_report` run
:class:`fdo_server.sql.Sql` statements in one :func:`fdo_server.sql.message_scope` on
the service's :class:`~fdo_server.sql.Database`, and raise nothing HTTP-specific: a
refused credential is None; database errors are the driver's own.
:class:`owner.checkin_endpoint.DeviceEndpoint` serves them in front of the app (and is
all a worker that serves only devices has, validating bodies with
:mod:`owner.device_body`); the FastAPI routes of :mod:`owner.report_api` declare them
for the API documentation with the pydantic models of :mod:`owner.device_schemas`; both
call these.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fdo_server.sql import message_scope
from owner import checkin
from owner.assign import device_for_token, record_report
from owner.desired import assignment_of
from owner.device_body import ReportBody
from owner.lifecycle import confirm_guid

if TYPE_CHECKING:
    from fdo_server.sql import Database


@dataclass(frozen=True, slots=True)
class Desired:
    """The revision a check-in answer hands the device (``DesiredOut``)."""

    revision: int
    generation: int
    image: str
    #: The bootc assignment (``fdo.serviceinfo.bootc.Assignment.encode``), base64.
    assignment: str


@dataclass(frozen=True, slots=True)
class CheckinAnswer:
    """A check-in's answer (``CheckinOut``)."""

    action: str  # "none" or "apply"
    interval: int
    next_secret: str
    desired: Desired | None = None

    def content(self) -> dict[str, Any]:
        """The answer's JSON object, as ``CheckinOut`` serialises it without its None
        fields (``desired`` when there is nothing to apply)."""
        out: dict[str, Any] = {
            "action": self.action,
            "interval": self.interval,
            "next_secret": self.next_secret,
        }
        if self.desired is not None:
            desired = self.desired
            out["desired"] = {
                "revision": desired.revision,
                "generation": desired.generation,
                "image": desired.image,
                "assignment": desired.assignment,
            }
        return out


def answer_checkin(
    database: Database,
    token: str,
    body: checkin.Observation,
    *,
    now: datetime,
    interval: int,
    wake: Callable[[], None] | None = None,
) -> CheckinAnswer | None:
    """Record a check-in and build its answer; None when the credential is refused
    (nothing recorded). ``wake`` (the rollout runner's) is called after the commit when
    the device newly says it applied or failed a revision: a rollout may move on now."""
    with message_scope(database):
        outcome = checkin.record(token, body, now=now)
        if outcome is None:
            return None
        desired = None
        if outcome.desired_revision_id is not None:
            revision, assignment = assignment_of(outcome.desired_revision_id)
            desired = Desired(
                revision=revision.number,
                generation=outcome.desired_generation,
                image=revision.image,
                assignment=base64.b64encode(assignment.encode()).decode(),
            )
    if outcome.settled and wake is not None:
        wake()
    return CheckinAnswer(
        action="none" if desired is None else "apply",
        interval=interval,
        next_secret=outcome.next_secret,
        desired=desired,
    )


def answer_report(database: Database, token: str, body: ReportBody, *, now: datetime) -> str | None:
    """Record a device's report after its reboot; the status it now has (``ReportOut``'s),
    or None when the credential is refused (nothing recorded). ``token`` is the device's
    check-in secret or, for a device onboarded before check-in, its report token."""
    with message_scope(database):
        row = checkin.authenticate(token)
        device = None if row is None else {"id": row["id"], "guid": row["guid"]}
        if device is None and checkin.device_id_of(token) is None:
            device = device_for_token(token)  # a report token from before check-in
        if device is None:
            return None
        # The secret came with the TO2 that gave the device its current GUID, so a
        # report proves the device holds that credential (owner.lifecycle).
        confirm_guid(bytes(device["guid"]), now=now)
        return record_report(
            device,
            booted_digest=body.booted_digest,
            revision=body.revision,
            healthy=body.healthy,
            detail=body.detail,
        )
