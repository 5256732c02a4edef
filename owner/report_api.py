"""The device status report: ``POST /api/v1/report`` (``fdo device report``).

After rebooting into its assigned image the device reports the booted digest, the
revision it applied and a health result, authenticated by the per-device token it
received in ServiceInfo (not an admin token). A digest other than the assigned one,
or an unhealthy report, marks the device failed, never done. A report also confirms the
device's current credential (:func:`owner.lifecycle.confirm_guid`).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from fdo_server.db import unit_of_work
from owner.assign import device_for_token, record_report
from owner.lifecycle import confirm_guid


class ReportIn(BaseModel):
    """What the device reports after its reboot."""

    model_config = ConfigDict(extra="forbid")

    booted_digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    revision: int | None = Field(default=None, ge=0)
    healthy: bool = True
    detail: str = Field(default="", max_length=4000)


class ReportOut(BaseModel):
    status: str


def report_router() -> APIRouter:
    router = APIRouter(tags=["device report"])

    @router.post("/report", response_model=ReportOut)
    def report(body: ReportIn, request: Request) -> ReportOut:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing device token", headers={"WWW-Authenticate": "Bearer"})
        engine: Engine = request.app.state.engine
        with unit_of_work(engine) as db:
            device = device_for_token(db, token.strip())
            if device is None:
                raise HTTPException(401, "unknown device token", headers={"WWW-Authenticate": "Bearer"})
            # The token came with the TO2 that gave the device its current GUID, so a
            # report proves the device holds that credential (owner.lifecycle).
            confirm_guid(db.connection(), device.guid, now=request.app.state.clock())
            status = record_report(
                db,
                device,
                booted_digest=body.booted_digest,
                revision=body.revision,
                healthy=body.healthy,
                detail=body.detail,
            )
        return ReportOut(status=status)

    return router
