"""The owner's admin JSON API (``/api/v1``), bearer tokens with roles.

* ``POST /vouchers`` (operator): body is PEM text with one or more vouchers (or one
  raw CBOR voucher); answers a result per voucher, 200 when all were imported, else
  422 with the same body.
* ``GET /vouchers`` (viewer): paged list with state (``active``, ``replaced``,
  ``handed_on``), final owner key fingerprint and TO0 status; ``GET /vouchers/{guid}``.
* ``POST /vouchers/extend``, ``POST /vouchers/{guid}/extend`` (operator), ``GET
  /vouchers/{guid}/pem`` (viewer): handing vouchers on to a next owner
  (:mod:`owner.handon`).
* ``GET /summary`` (viewer): devices by status, vouchers by state, TO0 registrations
  pending, expiring (within a day) and failing; what ``/ui`` and ``fdo owner status`` show.
* ``GET /onboardings`` (viewer): completed TO2s, oldest first, with the GUID the device
  came with, the one it left with, its devmod facts and the module results; ``?guid=``
  finds those of one GUID (old or new). The devices themselves are
  ``GET /devices`` (:mod:`owner.admin_groups`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from fdo.errors import FdoError
from fdo.types import Guid
from fdo_server.api_docs import errors
from fdo_server.body_limit import too_large_detail
from fdo_server.clock import utc
from fdo_server.db import lent
from fdo_server.params import Limit, Offset
from fdo_server.vouchers import fingerprint
from owner import admin_ops
from owner.api_schemas import ImportOut, OnboardingPage, SummaryOut, VoucherOut, VoucherPage
from owner.config import OwnerConfig
from owner.deps import Operator, SessionDep, Viewer, engine_of, now_of
from owner.groups_tables import Device
from owner.handon import handon_router
from owner.importer import IMPORTED
from owner.states import STATES, STATUSES
from owner.tables import DeviceOnboarding, OwnerVoucher, To0Work
from owner.to0 import EXPIRING_WINDOW, to0_counts


def _iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()


def _guid_text(raw: bytes | None) -> str | None:
    return None if raw is None else str(Guid(raw))


def voucher_json(row: OwnerVoucher, work: To0Work | None, db: Session) -> dict[str, Any]:
    def guid_of(voucher_id: int | None) -> str | None:
        other = db.get(OwnerVoucher, voucher_id) if voucher_id is not None else None
        return None if other is None else _guid_text(other.guid)

    to0: dict[str, Any] | None = None
    if work is not None:
        to0 = {
            "registered_until": _iso(work.registered_until),
            "next_attempt_at": _iso(work.next_attempt_at),
            "attempts": work.attempts,
            "last_error": work.last_error,
        }
    return {
        "guid": _guid_text(row.guid),
        "device_info": row.device_info,
        "state": row.state,
        "entries": row.num_entries,
        "owner_key_fingerprint": fingerprint(row.owner_key_spki),
        "imported_at": _iso(row.imported_at),
        "replaces": guid_of(row.replaces_id),
        "replaced_by": guid_of(row.replaced_by_id),
        "to0": to0,
    }


def status_summary(db: Session, now: datetime) -> dict[str, Any]:
    """Counts of devices by status, vouchers by state and TO0 registrations (all keys present)."""
    devices = dict(db.exec(select(Device.status, func.count()).group_by(Device.status)).all())
    vouchers = dict(db.exec(select(OwnerVoucher.state, func.count()).group_by(OwnerVoucher.state)).all())
    to0 = to0_counts(lent(db.connection()), now)
    return {
        "devices": {s: devices.get(s, 0) for s in STATUSES},
        "vouchers": {s: vouchers.get(s, 0) for s in STATES},
        "to0": {
            "pending": to0.pending,
            "expiring": to0.expiring,
            "failing": to0.failing,
            "expiring_within_seconds": int(EXPIRING_WINDOW.total_seconds()),
        },
    }


def _parse_guid(text: str) -> Guid:
    try:
        return Guid.parse(text)
    except (FdoError, ValueError):
        raise HTTPException(400, f"not a GUID: {text!r}") from None


#: ``POST /vouchers``: the body it reads itself (its size limit is a setting).
IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One or more ownership vouchers as PEM text (``-----BEGIN OWNERSHIP "
        "VOUCHER-----`` blocks, as the manufacturer exports them), or one voucher as raw CBOR. "
        "The Content-Type is not checked.",
        "content": {
            "application/x-pem-file": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def admin_router() -> APIRouter:
    router = APIRouter(tags=["vouchers"])
    router.include_router(handon_router())

    @router.post(
        "/vouchers",
        response_model=ImportOut,
        responses=errors(413)
        | {422: {"model": ImportOut, "description": "A voucher was refused (see results)."}},
        openapi_extra=IMPORT_BODY,
    )
    async def import_vouchers(request: Request, token: Operator) -> JSONResponse:
        """Import vouchers this owner's keys own; each is then registered with the rendezvous (TO0)."""
        body = await request.body()
        limit = request.app.state.settings.max_voucher_import_body  # also BodyLimit's
        if len(body) > limit:
            raise HTTPException(413, too_large_detail(limit))
        config: OwnerConfig = request.app.state.config
        now = now_of(request)

        def work() -> list[dict[str, object]]:
            keys = list(config.keys.values())
            return admin_ops.import_vouchers(engine_of(request), body, keys, who=token.name, now=now)

        results = await run_in_threadpool(work)
        ok = all(r["status"] == IMPORTED for r in results)
        return JSONResponse({"results": results}, status_code=200 if ok else 422)

    @router.get("/vouchers", response_model=VoucherPage, responses=errors(422))
    def list_vouchers(
        db: SessionDep,
        _: Viewer,
        offset: Offset = 0,
        limit: Limit = 100,
        state: str | None = None,
    ) -> dict[str, Any]:
        """Vouchers in import order, with state, owner key fingerprint and TO0 status (``?state=``)."""
        query = select(OwnerVoucher, To0Work).join(
            To0Work, col(To0Work.voucher_id) == col(OwnerVoucher.id), isouter=True
        )
        count = select(func.count()).select_from(OwnerVoucher)
        if state is not None:
            query = query.where(OwnerVoucher.state == state)
            count = count.where(OwnerVoucher.state == state)
        rows = db.exec(query.order_by(col(OwnerVoucher.id)).offset(offset).limit(limit)).all()
        return {
            "total": db.exec(count).one(),
            "offset": offset,
            "items": [voucher_json(v, w, db) for v, w in rows],
        }

    @router.get("/vouchers/{guid}", response_model=VoucherOut, responses=errors(400, 404))
    def get_voucher(guid: str, db: SessionDep, _: Viewer) -> dict[str, Any]:
        """One voucher by its GUID."""
        wanted = _parse_guid(guid)
        row = db.exec(select(OwnerVoucher).where(OwnerVoucher.guid == wanted.value)).first()
        if row is None:
            raise HTTPException(404, f"no voucher for GUID {wanted}")
        work = db.exec(select(To0Work).where(To0Work.voucher_id == row.id)).first()
        return voucher_json(row, work, db)

    @router.get("/summary", response_model=SummaryOut, tags=["status"])
    def summary(request: Request, db: SessionDep, _: Viewer) -> dict[str, Any]:
        """Devices by status, vouchers by state, TO0 registrations pending, expiring and failing."""
        return status_summary(db, now_of(request))

    @router.get("/onboardings", response_model=OnboardingPage, tags=["devices"], responses=errors(400, 422))
    def list_onboardings(
        db: SessionDep,
        _: Viewer,
        offset: Offset = 0,
        limit: Limit = 100,
        guid: str | None = None,
    ) -> dict[str, Any]:
        """Completed TO2s, oldest first, with devmod facts and module results (``?guid=``: either GUID)."""
        query = select(DeviceOnboarding)
        if guid is not None:
            wanted = _parse_guid(guid).value
            query = query.where((DeviceOnboarding.guid == wanted) | (DeviceOnboarding.new_guid == wanted))
        count = select(func.count()).select_from(query.subquery())
        rows = db.exec(query.order_by(col(DeviceOnboarding.id)).offset(offset).limit(limit)).all()
        return {
            "total": db.exec(count).one(),
            "offset": offset,
            "items": [
                {
                    "guid": _guid_text(r.guid),
                    "new_guid": _guid_text(r.new_guid),
                    "devmod": r.devmod,
                    "modules": r.modules,
                    "completed_at": _iso(r.completed_at),
                }
                for r in rows
            ],
        }

    return router
