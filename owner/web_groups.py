"""Console pages of groups (:mod:`owner.web`; docs/console.md).

* ``GET /ui/groups``: groups with their rules, current revision and devices
* ``GET /ui/groups/{name}``: rules, rollout policy, revisions (image, apply mode, config
  summary), the publish form and the start-rollout form (operators)
* ``POST /ui/groups/{name}/revisions``: publish (``image``: digest-pinned, ``transport``,
  ``apply_mode``, ``config``: JSON), validated as the API validates ``RevisionIn``
* ``POST /ui/groups/{name}/rollouts``: start a rollout (``revision``, ``batch_size``,
  ``canary``, ``success_threshold``, ``report_timeout``)
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from fdo_server.auth import Role
from owner import admin_ops
from owner.admin_groups import find_live_group, group_json, revision_json
from owner.deps import engine_of, now_of, wake_rollouts
from owner.groups_schemas import RevisionIn
from owner.groups_tables import Group, Revision
from owner.rollouts_api import _kick
from owner.rollouts_schemas import StartIn
from owner.rollouts_tables import Rollout
from owner.rollouts_views import rollout_view
from owner.web import authorized_form, done, message, render, signed_in
from owner.web_session import Visitor

OK = {"published": "Revision published.", "started": "Rollout started."}


def errors_of(exc: ValidationError) -> str:
    """A validation error as one readable line per field."""
    lines = []
    for e in exc.errors(include_input=False):
        where = ".".join(str(p) for p in e["loc"]) or "form"
        lines.append(f"{where}: {e['msg']}")
    return "\n".join(lines)


def config_summary(config: dict[str, Any]) -> str:
    """What a revision's config sets, in a few words."""
    parts = []
    for key, value in sorted(config.items()):
        if value in (None, [], {}, ""):
            continue
        count = len(value) if isinstance(value, list | dict) else None
        parts.append(f"{key} ({count})" if count is not None else key)
    return ", ".join(parts) or "no config"


def _group_page(db: Session, name: str) -> dict[str, Any] | None:
    group = find_live_group(db, name)
    if group is None:
        return None
    revisions = db.exec(
        select(Revision).where(Revision.group_id == group.id).order_by(col(Revision.number).desc())
    ).all()
    rollouts = db.exec(
        select(Rollout).where(Rollout.group_id == group.id).order_by(col(Rollout.id).desc()).limit(20)
    ).all()
    return {
        "g": group_json(group, db),
        "revisions": [revision_json(r, group) | {"summary": config_summary(r.config)} for r in revisions],
        "rollouts": [rollout_view(db, r, devices=False) for r in rollouts],
        "title": f"Group {group.name}",
    }


def _parse_revision(form: dict[str, str]) -> RevisionIn | str:
    text = form.get("config", "").strip() or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"config: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    body = {
        "image": form.get("image", "").strip(),
        "transport": form.get("transport") or "registry",
        "apply_mode": form.get("apply_mode") or "switch-reboot",
        "config": config,
    }
    try:
        return RevisionIn.model_validate(body)
    except ValidationError as exc:
        return errors_of(exc)


def _parse_start(form: dict[str, str]) -> StartIn | str:
    body: dict[str, Any] = {"revision": form.get("revision", "")}
    for field in ("batch_size", "canary", "success_threshold", "report_timeout"):
        value = form.get(field, "").strip()
        if value:
            body[field] = value
    try:
        return StartIn.model_validate(body)
    except ValidationError as exc:
        return errors_of(exc)


def groups_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/groups")
    def groups(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        with Session(engine_of(request)) as db:
            rows = db.exec(
                select(Group)
                .where(col(Group.deleted_at).is_(None))
                .order_by(col(Group.priority), col(Group.name))
            ).all()
            items = [group_json(g, db) for g in rows]
        return render(request, "groups.html", who, title="Groups", groups=items)

    def page(request: Request, who: Visitor, name: str, **extra: Any) -> Response:
        with Session(engine_of(request)) as db:
            context = _group_page(db, name)
        if context is None:
            return message(request, who, "No such group", f"No group {name[:64]!r}.", 404)
        status = extra.pop("status", 200)
        return render(
            request, "group.html", who, status=status, form=extra.pop("form", {}), **context, **extra
        )

    @router.get("/ui/groups/{name}")
    def group(name: str, request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        return page(request, who, name, ok=OK.get(request.query_params.get("ok", "")))

    @router.post("/ui/groups/{name}/revisions")
    async def publish(name: str, request: Request) -> Response:
        got = await authorized_form(request, Role.OPERATOR, request.app.state.settings.max_revision_body)
        if isinstance(got, Response):
            return got
        who, form = got
        body = _parse_revision(form)
        if isinstance(body, str):
            return await run_in_threadpool(
                lambda: page(request, who, name, error=body, status=422, form=form, failed="publish")
            )
        try:
            await run_in_threadpool(
                lambda: admin_ops.publish_revision(
                    engine_of(request), name, body, who=who.name, now=now_of(request), view=revision_json
                )
            )
            wake_rollouts(request)
        except HTTPException as exc:
            detail, code = str(exc.detail), exc.status_code
            return await run_in_threadpool(
                lambda: page(request, who, name, error=detail, status=code, form=form)
            )
        return done(f"/ui/groups/{name}?ok=published")

    @router.post("/ui/groups/{name}/rollouts")
    async def start(name: str, request: Request) -> Response:
        got = await authorized_form(request, Role.OPERATOR)
        if isinstance(got, Response):
            return got
        who, form = got
        body = _parse_start(form)
        if isinstance(body, str):
            return await run_in_threadpool(
                lambda: page(request, who, name, error=body, status=422, form=form)
            )
        try:
            rollout_id = await run_in_threadpool(
                lambda: admin_ops.start_rollout(
                    engine_of(request), name, body, who=who.name, now=now_of(request)
                )
            )
        except HTTPException as exc:
            detail, code = str(exc.detail), exc.status_code
            return await run_in_threadpool(
                lambda: page(request, who, name, error=detail, status=code, form=form)
            )
        await run_in_threadpool(_kick, request, rollout_id)
        return done(f"/ui/rollouts/{rollout_id}?ok=started")

    return router
