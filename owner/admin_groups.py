"""Admin API for devices, groups, revisions, labels, tokens and the audit log (``/api/v1``).

Roles (:mod:`fdo_server.auth`): viewer reads; operator changes groups, revisions and
labels; admin also manages tokens. Every change writes an :class:`AuditEntry` in the
same transaction. Secrets (registry ``auth.json``, secret files) are accepted when a
revision is published and never returned: responses say ``has_registry_auth`` and list
secret file paths only.

* ``GET /devices`` (``?group=``, ``?status=``), ``GET /devices/{guid}`` (any GUID the
  device has had), ``PUT /devices/{guid}/labels``
* ``POST /groups``, ``GET /groups``, ``GET /groups/{name}``, ``DELETE /groups/{name}``
* ``POST /groups/{name}/revisions``, ``GET /groups/{name}/revisions[/{number}]`` —
  there is no way to change a published revision
* ``POST /tokens``, ``GET /tokens``, ``DELETE /tokens/{id}`` (admin)
* ``GET /audit``
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from fdo.errors import FdoError
from fdo.types import Guid
from fdo_server.api_docs import errors, json_body
from fdo_server.auth import AdminToken, Role
from fdo_server.clock import utc
from fdo_server.db import unit_of_work
from fdo_server.params import Limit, Offset, RowNumber
from owner import admin_ops
from owner.api_schemas import (
    AuditPage,
    DeletedOut,
    DeviceDetail,
    DeviceOut,
    DevicePage,
    GroupDetail,
    GroupList,
    GroupOut,
    NewTokenOut,
    PublishedOut,
    RevisionList,
    RevisionOut,
    TokenList,
    TokenOut,
)
from owner.audit import audit
from owner.checkin import checkin_json
from owner.deps import Admin, Operator, SessionDep, Viewer, engine_of, now_of, wake_rollouts
from owner.groups import has_selectors
from owner.groups_schemas import GroupIn, LabelsIn, RevisionIn, TokenIn, parse
from owner.groups_tables import AuditEntry, Device, DeviceEvent, Group, Revision
from owner.inventory import current_revision, device_guids, find_device
from owner.rollouts_views import device_rollouts
from owner.states import STATUSES


def _iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()


def _guid(text: str) -> Guid:
    try:
        return Guid.parse(text)
    except (FdoError, ValueError):
        raise HTTPException(400, "not a GUID") from None


# ---------------------------------------------------------------------------- JSON views


def revision_json(row: Revision, group: Group | None = None) -> dict[str, Any]:
    """A revision as the API shows it: secrets only as flags and paths."""
    return {
        "group": None if group is None else group.name,
        "number": row.number,
        "image": row.image,
        "transport": row.transport,
        "apply_mode": row.apply_mode,
        "config": row.config,
        "has_registry_auth": row.has_registry_auth,
        "secret_files": row.secret_paths,
        "published_at": _iso(row.published_at),
        "published_by": row.published_by,
    }


def group_json(row: Group, db: Session) -> dict[str, Any]:
    revision = current_revision(db, row)
    devices = db.exec(select(func.count()).select_from(Device).where(Device.group_id == row.id)).one()
    return {
        "name": row.name,
        "description": row.description,
        "priority": row.priority,
        "model": row.model,
        "serial_pattern": row.serial_pattern,
        "labels": row.labels,
        "members": row.members,
        "is_default": row.is_default,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "current_revision": None if revision is None else revision.number,
        "rollout_policy": row.rollout_policy,
        "devices": devices,
    }


def overdue_after(request: Request) -> timedelta:
    """How long without a check-in makes a device ``overdue`` (settings)."""
    settings = request.app.state.settings
    return timedelta(seconds=settings.checkin_interval_seconds * settings.checkin_overdue_intervals)


def device_json(
    row: Device,
    db: Session,
    *,
    events: bool = False,
    now: datetime | None = None,
    overdue_after: timedelta | None = None,
) -> dict[str, Any]:
    group = None if row.group_id is None else db.get(Group, row.group_id)

    def number(revision_id: int | None) -> int | None:
        found = None if revision_id is None else db.get(Revision, revision_id)
        return None if found is None else found.number

    out: dict[str, Any] = {
        "guid": str(Guid(row.guid)),
        "guids": [str(Guid(g)) for g in device_guids(db, row)],
        "serial": row.serial,
        "model": row.model,
        "labels": row.labels,
        "group": None if group is None else group.name,
        "assigned_revision": number(row.assigned_revision_id),
        "revision": number(row.revision_id),
        "status": row.status,
        "delivery": row.delivery,
        **checkin_json(row, number, now=now, overdue_after=overdue_after),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }
    if events:
        out["devmod"] = row.devmod
        rows = db.exec(
            select(DeviceEvent).where(DeviceEvent.device_id == row.id).order_by(col(DeviceEvent.id))
        ).all()
        out["events"] = [{"at": _iso(e.at), "kind": e.kind, "detail": e.detail} for e in rows]
        out["rollouts"] = device_rollouts(db, row.id)
    return out


def token_json(row: AdminToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "created_at": _iso(row.created_at),
        "revoked_at": _iso(row.revoked_at),
    }


def find_live_group(db: Session, name: str) -> Group | None:
    """The group called ``name`` unless it was deleted."""
    return db.exec(select(Group).where(Group.name == name, col(Group.deleted_at).is_(None))).first()


def _live_group(db: Session, name: str) -> Group:
    row = find_live_group(db, name)
    if row is None:
        raise HTTPException(404, f"no group {name!r}")
    return row


# ---------------------------------------------------------------------------- routes


def groups_router() -> APIRouter:
    """The router; mount it under ``/api/v1``."""
    router = APIRouter()
    router.include_router(_devices())
    router.include_router(_groups())
    router.include_router(_tokens())

    @router.get("/audit", tags=["audit"], response_model=AuditPage, responses=errors(422))
    def list_audit(
        db: SessionDep,
        _: Viewer,
        offset: Offset = 0,
        limit: Limit = 100,
        action: str | None = None,
        who: str | None = None,
    ) -> dict[str, Any]:
        """Audit entries, newest first (``?action=``, ``?who=``)."""
        query = select(AuditEntry)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if who is not None:
            query = query.where(AuditEntry.who == who)
        total = db.exec(select(func.count()).select_from(query.subquery())).one()
        rows = db.exec(query.order_by(col(AuditEntry.id).desc()).offset(offset).limit(limit)).all()
        items = [
            {"at": _iso(r.at), "who": r.who, "action": r.action, "target": r.target, "detail": r.detail}
            for r in rows
        ]
        return {"total": total, "offset": offset, "items": items}

    return router


def _devices() -> APIRouter:
    router = APIRouter(tags=["devices"])

    @router.get("/devices", response_model=DevicePage, responses=errors(404, 422))
    def list_devices(
        request: Request,
        db: SessionDep,
        _: Viewer,
        offset: Offset = 0,
        limit: Limit = 100,
        group: str | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Device records (one per device, across GUID changes), oldest first
        (``?group=``, 404 if there is no such group; ``?status=``)."""
        query = select(Device)
        if group is not None:
            query = query.where(Device.group_id == _live_group(db, group).id)
        if status is not None:
            if status not in STATUSES:
                raise HTTPException(422, f"unknown status {status!r}; one of {', '.join(STATUSES)}")
            query = query.where(Device.status == status)
        count = select(func.count()).select_from(query.subquery())
        rows = db.exec(query.order_by(col(Device.id)).offset(offset).limit(limit)).all()
        now, after = now_of(request), overdue_after(request)
        return {
            "total": db.exec(count).one(),
            "offset": offset,
            "items": [device_json(r, db, now=now, overdue_after=after) for r in rows],
        }

    @router.get("/devices/{guid}", response_model=DeviceDetail, responses=errors(400, 404))
    def show_device(guid: str, request: Request, db: SessionDep, _: Viewer) -> dict[str, Any]:
        """A device by any GUID it has had, with its devmod facts and timeline."""
        row = find_device(db, _guid(guid))
        if row is None:
            raise HTTPException(404, "no such device")
        return device_json(row, db, events=True, now=now_of(request), overdue_after=overdue_after(request))

    @router.put("/devices/{guid}/labels", response_model=DeviceOut, responses=errors(400, 404, 422))
    def set_labels(guid: str, body: LabelsIn, request: Request, who: Operator) -> dict[str, Any]:
        """Replace a device's labels; a device known only by its voucher gets a record."""
        wanted = _guid(guid)
        admin_ops.set_labels(engine_of(request), wanted, dict(body.labels), who=who.name, now=now_of(request))
        wake_rollouts(request)  # a hold label may hold or release a device of a running rollout
        with Session(engine_of(request)) as db:
            row = find_device(db, wanted)
            assert row is not None  # noqa: S101 - set_labels made it
            return device_json(row, db)

    return router


def _groups() -> APIRouter:
    router = APIRouter(tags=["groups"])

    @router.post("/groups", status_code=201, response_model=GroupOut, responses=errors(409, 422))
    def create_group(body: GroupIn, request: Request, who: Operator) -> dict[str, Any]:
        """Create a group (409 if the name is taken or a default group exists)."""
        if body.is_default and (has_selectors(_as_group(body)) or body.members):
            raise HTTPException(422, "the default group has no selectors or members")
        now = now_of(request)
        try:
            with unit_of_work(engine_of(request)) as db:
                live = select(Group).where(col(Group.deleted_at).is_(None))
                if db.exec(live.where(Group.name == body.name)).first() is not None:
                    raise HTTPException(409, f"group {body.name!r} exists")
                if body.is_default and db.exec(live.where(col(Group.is_default))).first() is not None:
                    raise HTTPException(409, "there is a default group already")
                row = _as_group(body)
                row.rollout_policy = (
                    None if body.rollout_policy is None else body.rollout_policy.policy().to_json()
                )
                row.created_at, row.created_by = now, who.name
                db.add(row)
                audit(db, who.name, "group.create", body.name, body.model_dump(), now=now)
                db.flush()
                return group_json(row, db)
        except IntegrityError:
            raise HTTPException(409, "conflicting group (name or default)") from None

    @router.get("/groups", response_model=GroupList)
    def list_groups(db: SessionDep, _: Viewer) -> dict[str, Any]:
        """The groups (deleted ones left out), oldest first."""
        rows = db.exec(select(Group).where(col(Group.deleted_at).is_(None)).order_by(col(Group.id))).all()
        return {"items": [group_json(r, db) for r in rows]}

    @router.get("/groups/{name}", response_model=GroupDetail, responses=errors(404))
    def show_group(name: str, db: SessionDep, _: Viewer) -> dict[str, Any]:
        """A group with its current revision."""
        row = _live_group(db, name)
        out = group_json(row, db)
        revision = current_revision(db, row)
        out["revision"] = None if revision is None else revision_json(revision, row)
        return out

    @router.delete("/groups/{name}", response_model=DeletedOut, responses=errors(404))
    def delete_group(name: str, request: Request, who: Operator) -> dict[str, Any]:
        """Delete a group: it stops matching; its revisions stay for the devices' records."""
        now = now_of(request)
        with unit_of_work(engine_of(request)) as db:
            row = _live_group(db, name)
            row.deleted_at = now
            db.add(row)
            audit(db, who.name, "group.delete", name, now=now)
        return {"deleted": name}

    @router.post(
        "/groups/{name}/revisions",
        status_code=201,
        response_model=PublishedOut,
        responses=errors(404, 409, 413, 422),
        openapi_extra=json_body(RevisionIn, "The revision (secrets are write-only)."),
    )
    def publish_revision(
        name: str,
        request: Request,
        who: Operator,
        # Validated by parse(), whose 422 never echoes the input (secrets); OpenAPI shows
        # it as RevisionIn (openapi_extra above).
        payload: Annotated[Any, Body()],
    ) -> dict[str, Any]:
        """Publish the group's next revision (a ``RevisionIn`` body; it can never be
        changed). Its target moves, a rollout starts, or the answer says how many
        onboarded devices stay behind (docs/rollouts.md)."""
        body = parse(RevisionIn, payload)
        published = admin_ops.publish_revision(
            engine_of(request), name, body, who=who.name, now=now_of(request), view=revision_json
        )
        wake_rollouts(request)  # the group's rollout policy may have started a rollout
        return published

    @router.get("/groups/{name}/revisions", response_model=RevisionList, responses=errors(404))
    def list_revisions(name: str, db: SessionDep, _: Viewer) -> dict[str, Any]:
        """The group's revisions, oldest first (secrets only as flags and paths)."""
        group = _live_group(db, name)
        rows = db.exec(
            select(Revision).where(Revision.group_id == group.id).order_by(col(Revision.number))
        ).all()
        return {"items": [revision_json(r, group) for r in rows]}

    @router.get("/groups/{name}/revisions/{number}", response_model=RevisionOut, responses=errors(404, 422))
    def show_revision(name: str, number: RowNumber, db: SessionDep, _: Viewer) -> dict[str, Any]:
        """One revision of the group."""
        group = _live_group(db, name)
        row = db.exec(
            select(Revision).where(Revision.group_id == group.id, Revision.number == number)
        ).first()
        if row is None:
            raise HTTPException(404, f"group {name!r} has no revision {number}")
        return revision_json(row, group)

    return router


def _as_group(body: GroupIn) -> Group:
    return Group(
        name=body.name,
        description=body.description,
        priority=body.priority,
        model=body.model,
        serial_pattern=body.serial_pattern,
        labels=dict(body.labels),
        members=list(body.members),
        is_default=body.is_default,
    )


def _tokens() -> APIRouter:
    router = APIRouter(tags=["tokens"])

    @router.post("/tokens", status_code=201, response_model=NewTokenOut, responses=errors(422))
    def create_admin_token(body: TokenIn, request: Request, who: Admin) -> dict[str, Any]:
        """Create a token; its plaintext is in this response only (stored hashed)."""
        row, token = admin_ops.new_token(
            engine_of(request), body.name, Role(body.role), who=who.name, now=now_of(request)
        )
        return {**token_json(row), "token": token}

    @router.get("/tokens", response_model=TokenList)
    def list_tokens(db: SessionDep, _: Admin) -> dict[str, Any]:
        """Every token, revoked ones too (never the tokens themselves)."""
        rows = db.exec(select(AdminToken).order_by(col(AdminToken.id))).all()
        return {"items": [token_json(r) for r in rows]}

    @router.delete("/tokens/{token_id}", response_model=TokenOut, responses=errors(404, 422))
    def revoke_token(token_id: RowNumber, request: Request, who: Admin) -> dict[str, Any]:
        """Revoke a token (at once; revoking it again changes nothing)."""
        return token_json(
            admin_ops.revoke_token(engine_of(request), token_id, who=who.name, now=now_of(request))
        )

    return router
