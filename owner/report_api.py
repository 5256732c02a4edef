"""The device-facing JSON routes: ``POST /device/v1/checkin`` and ``/device/v1/report``.

Both sit on the device plane (the same address as TO2, docs/deploy.md) and are
authenticated by the per-device check-in secret the device received in TO2
(:mod:`owner.checkin`), sent as ``Authorization: Bearer``; an admin token is never
accepted (it is not a check-in secret). Every refusal is 401 and records nothing.

* **Check-in** (``fdo device check-in``, ``fdo device agent``): the device says what
  it runs; the owner stores it, rotates the secret (``next_secret``), and answers the
  desired revision with its assignment when it differs from what the device holds,
  otherwise ``"action": "none"`` with the interval.
* **Report** (``fdo device report``, after the reboot): the booted digest, the revision
  and a health result; a digest other than the assigned one, or an unhealthy report,
  marks the device failed, never done. ``POST /api/v1/report`` is kept as a deprecated
  alias for devices onboarded before the move (their report tokens still work).

Both confirm the device's current credential (:func:`owner.lifecycle.confirm_guid`).

The routes here are declared for the API documentation and serve where the endpoint is
not mounted; in the owner app, :class:`owner.checkin_endpoint.DeviceEndpoint` serves
all three in front of the app's middleware and routing, with the same answers. The
database work of each is one function both call (:func:`answer_checkin`,
:func:`answer_report`), which raises nothing HTTP-specific.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from fdo_server.api_docs import errors
from fdo_server.db import current_session, message_scope, unit_of_work
from owner import checkin
from owner.assign import device_for_token, record_report
from owner.desired import assignment_of
from owner.groups_tables import Device
from owner.lifecycle import confirm_guid

_DIGEST = r"^sha256:[0-9a-f]{64}$"
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
#: The device's check-in secret as OpenAPI declares it; the routes check it themselves.
DEVICE_CREDENTIAL = HTTPBearer(
    scheme_name="DeviceCredential",
    bearerFormat="fdc1.<device id>.<secret>",
    description="The check-in secret the device received in TO2 (docs/checkin.md); never an admin token.",
    auto_error=False,
)
#: What every device route declares: its credential, and the answers to a refused one.
_DEVICE_ROUTE: dict[str, Any] = {
    "dependencies": [Security(DEVICE_CREDENTIAL)],
    "responses": errors(401, 422),
}


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


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing device credential", headers=_UNAUTHORIZED)
    return token.strip()


def _refused() -> HTTPException:
    return HTTPException(401, "device credential refused", headers=_UNAUTHORIZED)


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
    with message_scope(engine) as conn:
        outcome = checkin.record(conn, token, obs, now=now)
        if outcome is None:
            return None
        desired = None
        if outcome.desired_revision_id is not None:
            revision, assignment = assignment_of(current_session(), outcome.desired_revision_id)
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
        row = checkin.authenticate(db.connection(), token)
        device = db.get(Device, row["id"]) if row is not None else None
        if device is None and checkin.device_id_of(token) is None:
            device = device_for_token(db, token)  # a report token from before check-in
        if device is None:
            return None
        # The secret came with the TO2 that gave the device its current GUID, so a
        # report proves the device holds that credential (owner.lifecycle).
        confirm_guid(db.connection(), device.guid, now=now)
        status = record_report(
            db,
            device,
            booted_digest=body.booted_digest,
            revision=body.revision,
            healthy=body.healthy,
            detail=body.detail,
        )
    return ReportOut(status=status)


def _report(body: ReportIn, request: Request) -> ReportOut:
    state = request.app.state
    answer = answer_report(state.engine, _bearer(request), body, now=state.clock())
    if answer is None:
        raise _refused()
    return answer


def device_router() -> APIRouter:
    """The routes under ``/device/v1``."""
    router = APIRouter(tags=["device"], **_DEVICE_ROUTE)

    @router.post("/checkin", response_model=CheckinOut, response_model_exclude_none=True)
    def checkin_route(body: CheckinIn, request: Request) -> CheckinOut:
        """A device says what it runs and learns what it should run.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint` in front of the app's
        routing; this route documents it (and serves it where the endpoint is not mounted).
        """
        state = request.app.state
        answer = answer_checkin(
            state.engine,
            _bearer(request),
            body,
            now=state.clock(),
            interval=int(state.settings.checkin_interval_seconds),
            wake=state.rollouts.wake if getattr(state, "rollouts", None) else None,
        )
        if answer is None:
            raise _refused()
        return answer

    @router.post("/report", response_model=ReportOut)
    def report(body: ReportIn, request: Request) -> ReportOut:
        """The device's report after its reboot.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint` in front of the app's
        routing; this route documents it (and serves it where the endpoint is not mounted).
        """
        return _report(body, request)

    return router


def report_router() -> APIRouter:
    """``POST /api/v1/report``: the deprecated alias of ``/device/v1/report``."""
    router = APIRouter(tags=["device"], **_DEVICE_ROUTE)

    @router.post("/report", response_model=ReportOut, deprecated=True)
    def report(body: ReportIn, request: Request) -> ReportOut:
        """Deprecated: use ``POST /device/v1/report``.

        Served by :class:`owner.checkin_endpoint.DeviceEndpoint`, as that route is.
        """
        return _report(body, request)

    return router


__all__: list[Any] = [
    "CheckinIn",
    "CheckinOut",
    "ReportIn",
    "ReportOut",
    "answer_checkin",
    "answer_report",
    "device_router",
    "report_router",
]
