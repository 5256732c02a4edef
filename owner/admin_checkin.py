"""Admin routes about a device's check-in and desired state (under ``/api/v1``).

* ``POST /devices/{guid}/revoke-checkin`` (operator): the device's check-in secret
  (and legacy report token) stop working at once; a new TO2 issues a new one.
* ``POST /devices/{guid}/redeliver`` (operator), body ``{"revision": N}`` or empty:
  re-send the device its desired revision (or revision N of its group) at its next
  check-in (:func:`owner.inventory.set_desired`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from fdo.types import Guid
from fdo_server.api_docs import errors
from fdo_server.db import unit_of_work
from owner import admin_ops, checkin
from owner.admin_groups import _guid, device_json
from owner.api_schemas import DeviceOut
from owner.audit import audit
from owner.deps import Operator, engine_of, now_of
from owner.inventory import find_device


class RedeliverIn(BaseModel):
    """Which revision to send again: ``revision`` N of the device's group, or (null, or no
    body) its desired revision."""

    model_config = ConfigDict(extra="forbid")

    revision: int | None = Field(default=None, ge=1, le=2**31 - 1)


def checkin_admin_router() -> APIRouter:
    router = APIRouter(tags=["devices"])

    @router.post("/devices/{guid}/revoke-checkin", response_model=DeviceOut, responses=errors(400, 404))
    def revoke_checkin(guid: str, request: Request, who: Operator) -> dict[str, Any]:
        """Refuse every further check-in and report of this device."""
        now = now_of(request)
        with unit_of_work(engine_of(request)) as db:
            row = find_device(db, _guid(guid))
            if row is None or row.id is None:
                raise HTTPException(404, "no such device")
            checkin.revoke(row.id, now=now)
            db.expire(row)
            audit(db, who.name, "device.revoke-checkin", str(Guid(row.guid)), {}, now=now)
            db.flush()
            return device_json(row, db)

    @router.post("/devices/{guid}/redeliver", response_model=DeviceOut, responses=errors(400, 404, 409, 422))
    def redeliver(
        guid: str,
        request: Request,
        who: Operator,
        body: Annotated[RedeliverIn | None, Body()] = None,
    ) -> dict[str, Any]:
        """Send the device its desired revision (or revision N) again at its next check-in."""
        number = None if body is None else body.revision
        wanted = _guid(guid)
        admin_ops.redeliver(engine_of(request), wanted, number, who=who.name, now=now_of(request))
        with Session(engine_of(request)) as db:
            row = find_device(db, wanted)
            assert row is not None  # noqa: S101 - redeliver found it
            return device_json(row, db)

    return router
