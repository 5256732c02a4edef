"""Console pages of rollouts (:mod:`owner.web`; docs/rollouts.md); same data as the API.

* ``GET /ui/rollouts``: rollouts, newest first, with progress
* ``GET /ui/rollouts/{id}``: options, state and reason, progress by batch, failing
  devices with their step and error, every device of the rollout; the buttons pause,
  resume, abort and roll back (operators) as the state allows
* ``POST /ui/rollouts/{id}/pause|resume|abort|rollback`` (operator): the engine's
  functions (:mod:`owner.rollout_engine`), as ``POST /api/v1/rollouts/{id}/...`` calls them
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from fdo_server.auth import Role
from owner import rollout_engine as engine_ops
from owner.deps import engine_of, now_of
from owner.rollout_engine import RolloutError
from owner.rollouts import DEVICE_STATES, FAILED, ROLLED_BACK
from owner.rollouts_api import _kick
from owner.rollouts_tables import Rollout
from owner.rollouts_views import rollout_view
from owner.web import authorized_form, done, message, parse_int, render, signed_in
from owner.web_session import Visitor

NEWEST = 100
OK = {
    "started": "Rollout started.",
    "pause": "Rollout paused.",
    "resume": "Rollout resumed.",
    "abort": "Rollout aborted.",
    "rollback": "Rollback started.",
}
ACTIONS: dict[str, Callable[..., object]] = {
    "pause": engine_ops.pause,
    "resume": engine_ops.resume,
    "abort": engine_ops.abort,
    "rollback": engine_ops.rollback,
}


def web_rollouts_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/rollouts")
    def rollouts(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        with Session(engine_of(request)) as db:
            rows = db.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(NEWEST)).all()
            views = [rollout_view(db, r, devices=False) for r in rows]
        return render(request, "rollouts.html", who, title="Rollouts", rollouts=views)

    def page(request: Request, who: Visitor, number: int, *, status: int = 200, **extra: object) -> Response:
        with Session(engine_of(request)) as db:
            found = db.get(Rollout, number)
            view = None if found is None else rollout_view(db, found)
        if view is None:
            return message(request, who, "No such rollout", f"No rollout {number}.", 404)
        failing = [d for d in view.devices or [] if d.state in (FAILED, ROLLED_BACK)]
        return render(
            request,
            "rollout.html",
            who,
            status=status,
            title=f"Rollout #{number}",
            r=view,
            failing=failing,
            states=DEVICE_STATES,
            **extra,
        )

    @router.get("/ui/rollouts/{rollout_id}")
    def rollout(rollout_id: str, request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        number = parse_int(rollout_id, 0)
        if not number:
            return message(request, who, "No such rollout", "Rollouts are numbered from 1.", 404)
        return page(request, who, number, ok=OK.get(request.query_params.get("ok", "")))

    @router.post("/ui/rollouts/{rollout_id}/{action}")
    async def act(rollout_id: str, action: str, request: Request) -> Response:
        got = await authorized_form(request, Role.OPERATOR)
        if isinstance(got, Response):
            return got
        who, _ = got
        number = parse_int(rollout_id, 0)
        if action not in ACTIONS or not number:
            return message(request, who, "Not found", "No such rollout action.", 404)
        try:
            result = await run_in_threadpool(
                lambda: ACTIONS[action](engine_of(request), number, who=who.name, now=now_of(request))
            )
        except RolloutError as exc:
            error, code = str(exc), exc.status
            return await run_in_threadpool(lambda: page(request, who, number, error=error, status=code))
        target = result if action == "rollback" and isinstance(result, int) else number
        if action in ("resume", "rollback"):
            await run_in_threadpool(_kick, request, target)
        return done(f"/ui/rollouts/{target}?ok={action}")

    return router
