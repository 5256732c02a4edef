"""The pydantic models of the owner's device routes, for the FastAPI routes and the API
documentation (:mod:`owner.report_api`).

The device endpoint (:mod:`owner.checkin_endpoint`) does not use them: it validates
bodies with :mod:`owner.device_body`, which accepts what these accept and words its
errors as pydantic does (``tests/owner/test_device_body.py`` compares them), so a
worker that serves only devices never loads pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from owner.device_body import DIGEST_PATTERN


class ReportIn(BaseModel):
    """What the device reports after its reboot."""

    model_config = ConfigDict(extra="forbid")

    booted_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
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
    booted_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    staged_image: str | None = Field(default=None, max_length=1024)
    staged_digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
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
