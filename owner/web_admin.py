"""Console pages of vouchers, the audit log and tokens (:mod:`owner.web`).

* ``GET /ui/vouchers`` (``?state=``, ``?page=``): vouchers with their TO0 state;
  ``POST /ui/vouchers`` (operator): import the PEM vouchers of an uploaded file
  (``multipart/form-data``, field ``file``), as ``POST /api/v1/vouchers`` does
* ``GET /ui/audit`` (``who``, ``action``, ``target``: part of it, ``since`` and
  ``until``: ISO dates or times, UTC unless they say), newest first
* ``GET /ui/tokens``, ``POST /ui/tokens`` (``name``, ``role``),
  ``POST /ui/tokens/{id}/revoke``: admin only; a new token's value is shown once
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from fdo_server.auth import AdminToken, Role
from owner import admin_ops
from owner.admin_api import voucher_json
from owner.admin_groups import token_json
from owner.config import OwnerConfig
from owner.deps import engine_of, now_of
from owner.groups_schemas import TokenIn
from owner.groups_tables import AuditEntry
from owner.states import STATES
from owner.tables import OwnerVoucher, To0Work
from owner.web import authorized_form, authorized_upload, done, message, parse_int, render, signed_in
from owner.web_groups import errors_of

PAGE = 50
OK = {"revoked": "Token revoked."}


def _when(text: str) -> datetime | None:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _vouchers(db: Session, state: str, page: int) -> dict[str, Any]:
    query = select(OwnerVoucher, To0Work).join(
        To0Work, col(To0Work.voucher_id) == col(OwnerVoucher.id), isouter=True
    )
    count = select(func.count()).select_from(OwnerVoucher)
    if state:
        query = query.where(OwnerVoucher.state == state)
        count = count.where(OwnerVoucher.state == state)
    rows = db.exec(query.order_by(col(OwnerVoucher.id).desc()).offset((page - 1) * PAGE).limit(PAGE)).all()
    total = db.exec(count).one()
    return {
        "vouchers": [voucher_json(v, w, db) for v, w in rows],
        "total": total,
        "page": page,
        "pages": max(1, -(-total // PAGE)),
        "state": state,
        "states": STATES,
    }


def _audit(db: Session, args: dict[str, str], page: int) -> dict[str, Any]:
    query = select(AuditEntry)
    error = None
    if args.get("who"):
        query = query.where(AuditEntry.who == args["who"])
    if args.get("action"):
        query = query.where(AuditEntry.action == args["action"])
    if args.get("target"):
        query = query.where(col(AuditEntry.target).contains(args["target"][:256]))
    for key, op in (("since", "ge"), ("until", "le")):
        if args.get(key):
            try:
                at = _when(args[key][:40])
            except ValueError:
                error = f"{key}: write a date or time like 2026-12-04 or 2026-12-04T17:00."
                continue
            column = col(AuditEntry.at)
            query = query.where(column >= at if op == "ge" else column <= at)
    total = db.exec(select(func.count()).select_from(query.subquery())).one()
    rows = db.exec(query.order_by(col(AuditEntry.id).desc()).offset((page - 1) * PAGE).limit(PAGE)).all()
    actions = db.exec(select(AuditEntry.action).distinct().order_by(col(AuditEntry.action))).all()
    people = db.exec(select(AuditEntry.who).distinct().order_by(col(AuditEntry.who))).all()
    keep = {k: v for k, v in args.items() if k in ("who", "action", "target", "since", "until") and v}
    return {
        "entries": rows,
        "total": total,
        "page": page,
        "pages": max(1, -(-total // PAGE)),
        "args": keep,
        "actions": actions,
        "people": people,
        "error": error,
    }


def admin_pages_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def vouchers_page(request: Request, who: Any, **extra: Any) -> Response:
        state = request.query_params.get("state", "")
        page = parse_int(request.query_params.get("page"), 1) or 1
        with Session(engine_of(request)) as db:
            context = _vouchers(db, state if state in STATES else "", page)
        return render(request, "vouchers.html", who, title="Vouchers", **context, **extra)

    @router.get("/ui/vouchers")
    def vouchers(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        return vouchers_page(request, who)

    @router.post("/ui/vouchers")
    async def import_vouchers(request: Request) -> Response:
        limit = request.app.state.settings.max_voucher_import_body
        got = await authorized_upload(request, Role.OPERATOR, limit)
        if isinstance(got, Response):
            return got
        who, _, files = got
        body = files.get("file", b"")
        if not body:
            return await run_in_threadpool(
                lambda: vouchers_page(request, who, error="Choose a voucher file.", status=422)
            )
        config: OwnerConfig = request.app.state.config
        results = await run_in_threadpool(
            lambda: admin_ops.import_vouchers(
                engine_of(request), body, list(config.keys.values()), who=who.name, now=now_of(request)
            )
        )
        bad = [r for r in results if r["status"] != "imported"]
        return await run_in_threadpool(
            lambda: vouchers_page(request, who, results=results, status=422 if bad or not results else 200)
        )

    @router.get("/ui/audit")
    def audit_log(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        page = parse_int(request.query_params.get("page"), 1) or 1
        with Session(engine_of(request)) as db:
            context = _audit(db, dict(request.query_params), page)
        status = 400 if context["error"] else 200
        return render(request, "audit.html", who, title="Audit log", status=status, **context)

    def tokens_page(request: Request, who: Any, **extra: Any) -> Response:
        with Session(engine_of(request)) as db:
            rows = db.exec(select(AdminToken).order_by(col(AdminToken.id))).all()
            items = [token_json(r) for r in rows]
        return render(request, "tokens.html", who, title="Tokens", tokens=items, **extra)

    @router.get("/ui/tokens")
    def tokens(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        if not who.allows(Role.ADMIN):
            return message(
                request, who, "Forbidden", f"Tokens need the admin role; you signed in as {who.role}.", 403
            )
        return tokens_page(request, who, ok=OK.get(request.query_params.get("ok", "")))

    @router.post("/ui/tokens")
    async def create(request: Request) -> Response:
        got = await authorized_form(request, Role.ADMIN)
        if isinstance(got, Response):
            return got
        who, form = got
        try:
            body = TokenIn.model_validate(
                {"name": form.get("name", "").strip(), "role": form.get("role", "viewer")}
            )
        except ValidationError as exc:
            error = errors_of(exc)
            return await run_in_threadpool(lambda: tokens_page(request, who, error=error, status=422))
        row, token = await run_in_threadpool(
            lambda: admin_ops.new_token(
                engine_of(request), body.name, Role(body.role), who=who.name, now=now_of(request)
            )
        )
        created = {"id": row.id, "name": row.name, "value": token}
        return await run_in_threadpool(lambda: tokens_page(request, who, created=created))

    @router.post("/ui/tokens/{token_id}/revoke")
    async def revoke(token_id: str, request: Request) -> Response:
        got = await authorized_form(request, Role.ADMIN)
        if isinstance(got, Response):
            return got
        who, _ = got
        number = parse_int(token_id, 0)
        try:
            if not number:
                raise HTTPException(404, "no such token")
            await run_in_threadpool(
                lambda: admin_ops.revoke_token(engine_of(request), number, who=who.name, now=now_of(request))
            )
        except HTTPException as exc:
            detail, code = str(exc.detail), exc.status_code
            return await run_in_threadpool(lambda: tokens_page(request, who, error=detail, status=code))
        return done("/ui/tokens?ok=revoked")

    return router
