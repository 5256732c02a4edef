"""What the owner's device routes take, answer and do, without a web framework.

The models of ``POST /device/v1/checkin`` and ``/device/v1/report`` (and the deprecated
``/api/v1/report``), and the database work of each (:func:`answer_checkin`,
:func:`answer_report`), which raises nothing HTTP-specific: a refused credential is
None. :class:`owner.checkin_endpoint.DeviceEndpoint` serves them in front of the app
(and is all a worker that serves only devices has), the FastAPI routes of
:mod:`owner.report_api` declare them for the API documentation; both call these.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from fdo_server.db import message_scope, unit_of_work
from owner import checkin
from owner.assign import device_for_token, record_report
from owner.desired import assignment_of
from owner.groups_tables import Device
from owner.lifecycle import confirm_guid

_DIGEST = r"^sha256:[0-9a-f]{64}$"


class ReportIn(BaseModel):
    """What the device reports after its reboot."""

    model_config = ConfigDict(extra="forbid")

    booted_digest: str | None = Field(default=None, pattern=_DIGEST)
    revision: int | None = Field(default=None, ge=0)
    healthy: bool = True
    detail: str = Field(default="", max_length=4000)


class ReportOut(BaseModel):
    status: str


class CheckinIn(BaseModel):
    """What the device sends at a check-in (``device.checkin.build_request``).

    Fields a newer device adds are ignored, so devices can be updated before owners.
    """

    model_config = ConfigDict(extra="ignore")

    seq: int = Field(ge=1, le=2**62)
    booted_image: str | None = Field(default=None, max_length=1024)
    booted_digest: str | None = Field(default=None, pattern=_DIGEST)
    staged_image: str | None = Field(default=None, max_length=1024)
    staged_digest: str | None = Field(default=None, pattern=_DIGEST)
    revision: int | None = Field(default=None, ge=0, le=2**31 - 1)
    generation: int = Field(default=0, ge=0, le=2**31 - 1)
    applied_revision: int | None = Field(default=None, ge=0, le=2**31 - 1)
    state: Literal["none", "applying", "staged", "applied", "failed", "rolled-back"] = "none"
    health: Literal["healthy", "unhealthy", "unknown"] = "unknown"
    error_step: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, max_length=2000)
    rolled_back: bool = False
    #: Seconds east of UTC (update windows in device-local time, docs/rollouts.md).
    utc_offset: int | None = Field(default=None, ge=-14 * 3600, le=14 * 3600)


class DesiredOut(BaseModel):
    revision: int
    generation: int
    image: str
    #: The bootc assignment (``fdo.serviceinfo.bootc.Assignment.encode``), base64.
    assignment: str


class CheckinOut(BaseModel):
    action: Literal["none", "apply"]
    interval: int
    next_secret: str
    desired: DesiredOut | None = None


def answer_checkin(
    engine: Engine,
    token: str,
    body: CheckinIn,
    *,
    now: datetime,
    interval: int,
    wake: Callable[[], None] | None = None,
) -> CheckinOut | None:
    """Record a check-in and build its answer; None when the credential is refused
    (nothing recorded). ``wake`` (the rollout runner's) is called after the commit when
    the device newly says it applied or failed a revision: a rollout may move on now."""
    obs = checkin.Observation(**body.model_dump())
    with message_scope(engine):
        outcome = checkin.record(token, obs, now=now)
        if outcome is None:
            return None
        desired = None
        if outcome.desired_revision_id is not None:
            revision, assignment = assignment_of(outcome.desired_revision_id)
            desired = DesiredOut(
                revision=revision.number,
                generation=outcome.desired_generation,
                image=revision.image,
                assignment=base64.b64encode(assignment.encode()).decode(),
            )
    if outcome.settled and wake is not None:
        wake()
    return CheckinOut(
        action="none" if desired is None else "apply",
        interval=interval,
        next_secret=outcome.next_secret,
        desired=desired,
    )


def answer_report(engine: Engine, token: str, body: ReportIn, *, now: datetime) -> ReportOut | None:
    """Record a device's report after its reboot; None when the credential is refused
    (nothing recorded). ``token`` is the device's check-in secret or, for a device
    onboarded before check-in, its report token."""
    with unit_of_work(engine) as db:
        row = checkin.authenticate(token)
        device = db.get(Device, row["id"]) if row is not None else None
        if device is None and checkin.device_id_of(token) is None:
            device = device_for_token(db, token)  # a report token from before check-in
        if device is None:
            return None
        # The secret came with the TO2 that gave the device its current GUID, so a
        # report proves the device holds that credential (owner.lifecycle).
        confirm_guid(device.guid, now=now)
        status = record_report(
            db,
            device,
            booted_digest=body.booted_digest,
            revision=body.revision,
            healthy=body.healthy,
            detail=body.detail,
        )
    return ReportOut(status=status)
