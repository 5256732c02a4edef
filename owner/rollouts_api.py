"""Admin API of rollouts (under ``/api/v1``; docs/rollouts.md).

Operators change, viewers read; every change writes an audit entry in its transaction.

* ``POST /groups/{name}/rollouts`` — start a rollout (409 while the group has an active one)
* ``PUT /groups/{name}/rollout-policy`` — the options a publish starts a rollout with
* ``GET /rollouts`` (``?group=``, ``?state=``), ``GET /rollouts/{id}``
* ``POST /rollouts/{id}/pause|resume|abort|rollback``

Starting and resuming advance the rollout at once in the request and wake this
process's runner (:class:`owner.rollout_runner.RolloutRunner`).
"""

from __future__ import annotations

import logging
import sqlite3
import sys

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from fdo_server.api_docs import errors
from fdo_server.db import unit_of_work
from fdo_server.params import Limit, Offset, RowNumber
from fdo_server.sql import PoolTimeout
from owner import admin_ops
from owner import rollout_engine as engine_ops
from owner.admin_groups import find_live_group
from owner.audit import audit
from owner.deps import Operator, SessionDep, Viewer, database_of, engine_of, now_of, wake_rollouts
from owner.rollout_engine import RolloutError
from owner.rollout_runner import advance
from owner.rollouts_schemas import PolicyIn, PolicyOut, RolloutListOut, RolloutOut, StartIn
from owner.rollouts_tables import Rollout
from owner.rollouts_views import rollout_view
from owner.states import ROLLOUT_STATES

log = logging.getLogger("owner.rollouts")


def _fail(exc: RolloutError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _show(request: Request, rollout_id: int) -> RolloutOut:
    with Session(engine_of(request)) as db:
        rollout = db.get(Rollout, rollout_id)
        if rollout is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return rollout_view(db, rollout)


def _database_errors() -> tuple[type[Exception], ...]:
    """What a statement on the driver raises when the database fails: the drivers' errors
    (psycopg's once it is loaded: on SQLite it never is), SQLAlchemy's (the connection
    may come from the engine's pool) and a pool with no connection free."""
    errors: list[type[Exception]] = [SQLAlchemyError, sqlite3.Error, PoolTimeout]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


def _kick(request: Request, rollout_id: int) -> None:
    """Advance now, in this request, and wake this process's runner (which retries
    what this attempt could not do: the change itself is committed already)."""
    try:
        advance(database_of(request), rollout_id, now_of(request))
    except _database_errors():
        log.warning("rollout %s: advancing in the request failed; the runner retries", rollout_id)
    wake_rollouts(request)


def rollouts_router() -> APIRouter:
    router = APIRouter(tags=["rollouts"])

    @router.post("/groups/{name}/rollouts", status_code=201, responses=errors(404, 409, 422))
    def start_rollout(name: str, body: StartIn, request: Request, who: Operator) -> RolloutOut:
        """Start a rollout of revision ``revision`` to the group's onboarded devices."""
        rollout_id = admin_ops.start_rollout(
            engine_of(request), name, body, who=who.name, now=now_of(request)
        )
        _kick(request, rollout_id)
        return _show(request, rollout_id)

    @router.put("/groups/{name}/rollout-policy", responses=errors(404, 422))
    def set_policy(name: str, body: PolicyIn, request: Request, who: Operator) -> PolicyOut:
        """The options a publish starts a rollout with (null: publishing starts none)."""
        now = now_of(request)
        with unit_of_work(engine_of(request)) as db:
            group = find_live_group(db, name)
            if group is None:
                raise HTTPException(404, f"no group {name!r}")
            policy = None if body.rollout_policy is None else body.rollout_policy.policy().to_json()
            group.rollout_policy = policy
            db.add(group)
            audit(db, who.name, "group.rollout-policy", name, {"rollout_policy": policy}, now=now)
            return PolicyOut(group=name, rollout_policy=policy)

    @router.get("/rollouts", responses=errors(404, 422))
    def list_rollouts(
        db: SessionDep,
        _: Viewer,
        offset: Offset = 0,
        limit: Limit = 100,
        group: str | None = None,
        state: str | None = None,
    ) -> RolloutListOut:
        """Rollouts, newest first, with counts by device state (no device rows)."""
        query = select(Rollout)
        if group is not None:
            found = find_live_group(db, group)
            if found is None:
                raise HTTPException(404, f"no group {group!r}")
            query = query.where(Rollout.group_id == found.id)
        if state is not None:
            if state not in ROLLOUT_STATES:
                raise HTTPException(422, f"unknown state {state!r}; one of {', '.join(ROLLOUT_STATES)}")
            query = query.where(Rollout.state == state)
        total = db.exec(select(func.count()).select_from(query.subquery())).one()
        rows = db.exec(query.order_by(col(Rollout.id).desc()).offset(offset).limit(limit)).all()
        return RolloutListOut(
            items=[rollout_view(db, r, devices=False) for r in rows], total=total, offset=offset
        )

    @router.get("/rollouts/{rollout_id}", responses=errors(404, 422))
    def show_rollout(rollout_id: RowNumber, request: Request, _: Viewer) -> RolloutOut:
        """A rollout: options, state, reason, batches with counts, and its devices."""
        return _show(request, rollout_id)

    @router.post("/rollouts/{rollout_id}/pause", responses=errors(404, 409, 422))
    def pause(rollout_id: RowNumber, request: Request, who: Operator) -> RolloutOut:
        """Pause a running rollout: no device starts until it is resumed."""
        try:
            engine_ops.pause(engine_of(request), rollout_id, who=who.name, now=now_of(request))
        except RolloutError as exc:
            raise _fail(exc) from None
        return _show(request, rollout_id)

    @router.post("/rollouts/{rollout_id}/resume", responses=errors(404, 409, 422))
    def resume(rollout_id: RowNumber, request: Request, who: Operator) -> RolloutOut:
        """Resume: the current batch is evaluated again (held devices no longer count)."""
        try:
            engine_ops.resume(engine_of(request), rollout_id, who=who.name, now=now_of(request))
        except RolloutError as exc:
            raise _fail(exc) from None
        _kick(request, rollout_id)
        return _show(request, rollout_id)

    @router.post("/rollouts/{rollout_id}/abort", responses=errors(404, 409, 422))
    def abort(rollout_id: RowNumber, request: Request, who: Operator) -> RolloutOut:
        """Abort: no device starts any more; the group's target returns to the
        revision the rollout started from."""
        try:
            engine_ops.abort(engine_of(request), rollout_id, who=who.name, now=now_of(request))
        except RolloutError as exc:
            raise _fail(exc) from None
        return _show(request, rollout_id)

    @router.post("/rollouts/{rollout_id}/rollback", status_code=201, responses=errors(404, 409, 422))
    def rollback(rollout_id: RowNumber, request: Request, who: Operator) -> RolloutOut:
        """Start a rollout of this rollout's from-revision with the same options."""
        try:
            new_id = engine_ops.rollback(engine_of(request), rollout_id, who=who.name, now=now_of(request))
        except RolloutError as exc:
            raise _fail(exc) from None
        _kick(request, new_id)
        return _show(request, new_id)

    return router
