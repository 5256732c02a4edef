"""Console pages: the dashboard, the device list and a device (:mod:`owner.web`).

* ``GET /ui``: devices by status, rollouts in progress, TO0 problems, overdue devices
* ``GET /ui/devices``: search (``q``: a GUID, or part of a serial, model or label),
  filters (``group``, ``status``, ``revision``: the applied revision), ``sort``,
  ``page`` (:data:`PAGE` a page, with totals)
* ``GET /ui/devices/{guid}`` (any GUID the device has had); ``POST`` its ``labels``
  (operator) and ``redeliver`` (operator)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import String, cast, or_
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from fdo.errors import FdoError
from fdo.types import Guid
from fdo_server.auth import Role
from owner import admin_ops
from owner.admin_api import status_summary
from owner.admin_groups import device_json, find_live_group, overdue_after
from owner.deps import engine_of, now_of, wake_rollouts
from owner.groups_schemas import LabelsIn
from owner.groups_tables import Device, Group, Revision
from owner.inventory import find_device
from owner.rollouts_tables import Rollout
from owner.rollouts_views import rollout_view
from owner.states import ACTIVE_STATES, STATUSES, USABLE
from owner.tables import OwnerVoucher, To0Work
from owner.web import authorized_form, done, message, parse_int, render, signed_in

#: Devices per page of ``/ui/devices``.
PAGE = 50
SORTS = {
    "updated": col(Device.updated_at).desc(),
    "serial": col(Device.serial).asc(),
    "model": col(Device.model).asc(),
    "status": col(Device.status).asc(),
    "checkin": col(Device.last_checkin_at).desc(),
}
OK = {
    "labels": "Labels saved.",
    "redeliver": "The device gets its desired revision again at its next check-in.",
}


def _dashboard(db: Session, now: datetime, after: timedelta) -> dict[str, Any]:
    counts = status_summary(db, now)
    active = db.exec(
        select(Rollout)
        .where(col(Rollout.state).in_(ACTIVE_STATES))
        .order_by(col(Rollout.id).desc())
        .limit(20)
    ).all()
    failing = db.exec(
        select(OwnerVoucher, To0Work)
        .join(To0Work, col(To0Work.voucher_id) == col(OwnerVoucher.id))
        .where(col(OwnerVoucher.state).in_(USABLE), col(To0Work.last_error).is_not(None))
        .order_by(col(To0Work.attempts).desc(), col(OwnerVoucher.id))
        .limit(20)
    ).all()
    since = now - after
    late = (
        select(Device)
        .where(
            col(Device.checkin_hash).is_not(None),
            func.coalesce(col(Device.last_checkin_at), col(Device.updated_at)) < since,
        )
        .order_by(func.coalesce(col(Device.last_checkin_at), col(Device.updated_at)))
    )
    return {
        "counts": counts,
        "statuses": STATUSES,
        "rollouts": [rollout_view(db, r, devices=False) for r in active],
        "to0_failing": [{"guid": str(Guid(v.guid)), "work": w} for v, w in failing],
        "overdue_total": db.exec(select(func.count()).select_from(late.subquery())).one(),
        "overdue": [device_json(d, db) for d in db.exec(late.limit(20)).all()],
    }


def _query(db: Session, args: dict[str, str]) -> tuple[Any, str | None]:
    """The device query the list's arguments ask for, or an error to show."""
    query = select(Device)
    q = args.get("q", "").strip()[:256]
    if q:
        try:
            found = find_device(db, Guid.parse(q))
            query = query.where(Device.id == (found.id if found is not None else -1))
        except (FdoError, ValueError):
            like = f"%{q.replace('%', '').replace('_', '')}%"
            query = query.where(
                or_(
                    col(Device.serial).ilike(like),
                    col(Device.model).ilike(like),
                    cast(col(Device.labels), String).ilike(like),
                )
            )
    status = args.get("status", "")
    if status:
        if status not in STATUSES:
            return query, f"No status {status[:32]!r}; one of {', '.join(STATUSES)}."
        query = query.where(Device.status == status)
    group = args.get("group", "")
    if group:
        found_group = find_live_group(db, group)
        if found_group is None:
            return query, f"No group {group[:64]!r}."
        query = query.where(Device.group_id == found_group.id)
    revision = args.get("revision", "")
    if revision:
        number = parse_int(revision, 0)
        if not number:
            return query, "A revision is a number from 1."
        query = query.where(Device.applied_revision == number)
    return query, None


def _device_list(db: Session, args: dict[str, str], now: datetime, after: timedelta) -> dict[str, Any]:
    query, error = _query(db, args)
    page = parse_int(args.get("page"), 1) or 0
    if not page:
        error, page = "Pages count from 1.", 1
    sort = args.get("sort") or "updated"
    sort = sort if sort in SORTS else "updated"
    total = 0 if error else db.exec(select(func.count()).select_from(query.subquery())).one()
    rows: list[Device] = []
    if error is None:
        ordered = query.order_by(SORTS[sort], col(Device.id).desc()).offset((page - 1) * PAGE).limit(PAGE)
        rows = list(db.exec(ordered).all())
    groups = db.exec(
        select(Group.name).where(col(Group.deleted_at).is_(None)).order_by(col(Group.name))
    ).all()
    keep = {k: v for k, v in args.items() if k in ("q", "status", "group", "revision", "sort") and v}
    return {
        "error": error,
        "devices": [device_json(d, db, now=now, overdue_after=after) for d in rows],
        "total": total,
        "first": (page - 1) * PAGE + 1,
        "page": page,
        "pages": max(1, -(-total // PAGE)),
        "args": keep,
        "sort": sort,
        "sorts": list(SORTS),
        "statuses": STATUSES,
        "groups": groups,
    }


def _device_page(db: Session, row: Device, now: datetime, after: timedelta) -> dict[str, Any]:
    view = device_json(row, db, events=True, now=now, overdue_after=after)
    revisions = {}
    for key, rid in (
        ("desired", row.desired_revision_id),
        ("assigned", row.assigned_revision_id),
        ("onboarded", row.revision_id),
    ):
        found = None if rid is None else db.get(Revision, rid)
        revisions[key] = found
    facts = sorted((view.get("devmod") or {}).items())
    return {
        "d": view,
        "revisions": revisions,
        "facts": facts,
        "title": f"Device {view['serial'] or view['guid']}",
    }


def _labels(text: str) -> dict[str, str] | str:
    """``key=value`` lines as labels, or why they are not."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            return f"Line {number}: write each label as key=value."
        out[key.strip()] = value.strip()
    try:
        return dict(LabelsIn(labels=out).labels)
    except ValidationError as exc:
        return "; ".join(e["msg"] for e in exc.errors(include_input=False))


def devices_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui")
    def dashboard(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        with Session(engine_of(request)) as db:
            context = _dashboard(db, now_of(request), overdue_after(request))
        return render(request, "dashboard.html", who, title="Dashboard", refresh=30, **context)

    @router.get("/ui/devices")
    def devices(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        args = dict(request.query_params)
        with Session(engine_of(request)) as db:
            context = _device_list(db, args, now_of(request), overdue_after(request))
        status = 400 if context["error"] else 200
        return render(request, "devices.html", who, status=status, title="Devices", **context)

    def _find(db: Session, guid: str) -> Device | str:
        try:
            wanted = Guid.parse(guid)
        except (FdoError, ValueError):
            return f"Not a GUID: {guid[:64]}"
        row = find_device(db, wanted)
        return f"No device has had GUID {wanted}." if row is None else row

    @router.get("/ui/devices/{guid}")
    def device(guid: str, request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        with Session(engine_of(request)) as db:
            row = _find(db, guid)
            if isinstance(row, str):
                return message(request, who, "No such device", row, 404)
            context = _device_page(db, row, now_of(request), overdue_after(request))
        ok = OK.get(request.query_params.get("ok", ""))
        return render(request, "device.html", who, ok=ok, **context)

    async def _again(request: Request, guid: str, who: Any, error: str, status: int) -> Response:
        def load() -> Response:
            with Session(engine_of(request)) as db:
                row = _find(db, guid)
                if isinstance(row, str):
                    return message(request, who, "No such device", row, 404)
                context = _device_page(db, row, now_of(request), overdue_after(request))
            return render(request, "device.html", who, status=status, error=error, **context)

        return await run_in_threadpool(load)

    @router.post("/ui/devices/{guid}/labels")
    async def labels(guid: str, request: Request) -> Response:
        got = await authorized_form(request, Role.OPERATOR)
        if isinstance(got, Response):
            return got
        who, form = got
        parsed = _labels(form.get("labels", ""))
        if isinstance(parsed, str):
            return await _again(request, guid, who, parsed, 422)
        try:
            wanted = Guid.parse(guid)
            await run_in_threadpool(
                admin_ops.set_labels, engine_of(request), wanted, parsed, who=who.name, now=now_of(request)
            )
            wake_rollouts(request)
        except (FdoError, ValueError):
            return message(request, who, "No such device", f"Not a GUID: {guid[:64]}", 400)
        except HTTPException as exc:
            return await _again(request, guid, who, str(exc.detail), exc.status_code)
        return done(f"/ui/devices/{wanted}?ok=labels")

    @router.post("/ui/devices/{guid}/redeliver")
    async def redeliver(guid: str, request: Request) -> Response:
        got = await authorized_form(request, Role.OPERATOR)
        if isinstance(got, Response):
            return got
        who, _ = got
        try:
            wanted = Guid.parse(guid)
            await run_in_threadpool(
                admin_ops.redeliver, engine_of(request), wanted, None, who=who.name, now=now_of(request)
            )
        except (FdoError, ValueError):
            return message(request, who, "No such device", f"Not a GUID: {guid[:64]}", 400)
        except HTTPException as exc:
            return await _again(request, guid, who, str(exc.detail), exc.status_code)
        return done(f"/ui/devices/{guid}?ok=redeliver")

    return router
