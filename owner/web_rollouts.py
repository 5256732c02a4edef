"""Rollout pages of the owner's status page (docs/rollouts.md); same data as the API.

* ``GET /ui/rollouts``: rollouts, newest first, with counts by device state
* ``GET /ui/rollouts/{id}``: options, state and reason, batches with counts by state,
  failing devices with their step and error, and every device of the rollout

Read-only, signed in as for the rest of ``/ui`` (:mod:`owner.web`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlmodel import Session, col, select

from owner.deps import engine_of
from owner.rollouts import DEVICE_STATES, FAILED, ROLLED_BACK
from owner.rollouts_schemas import RolloutOut
from owner.rollouts_tables import Rollout
from owner.rollouts_views import rollout_view
from owner.web import _device_link, _login, _page, _table, _text, _visitor

NEWEST = 100


def _state(state: str) -> str:
    kind = {"completed": "good", "succeeded": "good", "aborted": "bad", "paused": "bad"}.get(state, "")
    kind = "bad" if state in (FAILED, ROLLED_BACK) else kind
    return f'<span class="{kind}">{_text(state)}</span>' if kind else _text(state)


def _counts(counts: dict[str, int]) -> str:
    return _text(" ".join(f"{s}={counts[s]}" for s in DEVICE_STATES if counts.get(s)) or None)


def _link(rollout_id: int) -> str:
    return f'<a href="/ui/rollouts/{rollout_id}">{rollout_id}</a>'


def _list(views: list[RolloutOut]) -> str:
    rows = [
        [
            _link(v.id),
            _text(v.group),
            _text(v.revision),
            _text(v.from_revision),
            _state(v.state),
            _text(f"{v.batch}/{v.batches}"),
            _counts(v.counts),
            _text(v.reason),
            _text(v.created_at),
        ]
        for v in views
    ]
    headings = ["id", "group", "revision", "from", "state", "batch", "devices", "reason", "started"]
    return _table(headings, rows, "No rollouts yet.")


def _rollout(v: RolloutOut) -> str:
    facts = [
        ["group", _text(v.group)],
        ["revision", _text(v.revision)],
        ["from revision", _text(v.from_revision)],
        ["state", _state(v.state)],
        ["reason", _text(v.reason)],
        ["batch", _text(f"{v.batch} of {v.batches}")],
        ["rolls back", _link(v.rollback_of) if v.rollback_of else _text(None)],
        ["options", _text({k: o for k, o in v.options.items() if o not in (None, [])})],
        ["started", _text(f"{v.created_at} by {v.created_by}")],
        ["updated", _text(v.updated_at)],
    ]
    batches = [
        [_text(b.batch) + (" (current)" if b.batch == v.batch else ""), _text(b.devices), _counts(b.counts)]
        for b in v.batch_counts
    ]
    devices = v.devices or []
    failing = [
        [_device_link(d.guid), _text(d.serial), _text(d.batch), _state(d.state),
         _text(None if d.error is None else d.error.step), _text(None if d.error is None else d.error.text)]
        for d in devices
        if d.state in (FAILED, ROLLED_BACK)
    ]  # fmt: skip
    members = [
        [_device_link(d.guid), _text(d.serial), _text(d.batch), _state(d.state), _text(d.from_revision),
         _text(d.started_at), _text(d.finished_at)]
        for d in devices
    ]  # fmt: skip
    return (
        _table(["", ""], facts, "")
        + "<h2>Batches</h2>"
        + _table(["batch", "devices", "by state"], batches, "No devices.")
        + "<h2>Failing devices</h2>"
        + _table(["device", "serial", "batch", "state", "step", "error"], failing, "None.")
        + "<h2>Devices</h2>"
        + _table(
            ["device", "serial", "batch", "state", "from revision", "started", "finished"], members, "None."
        )
    )


def web_rollouts_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/rollouts")
    def rollouts(request: Request) -> Response:
        who = _visitor(request)
        if who is None:
            return _login(request)
        with Session(engine_of(request)) as db:
            rows = db.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(NEWEST)).all()
            return _page("rollouts", _list([rollout_view(db, r, devices=False) for r in rows]), who=who)

    @router.get("/ui/rollouts/{rollout_id}")
    def rollout(rollout_id: str, request: Request) -> Response:
        who = _visitor(request)
        if who is None:
            return _login(request)
        with Session(engine_of(request)) as db:
            number = int(rollout_id) if rollout_id.isdigit() and len(rollout_id) < 10 else 0
            found = db.get(Rollout, number) if number else None
            if found is None:
                return _page("no such rollout", "<p>No such rollout.</p>", status=404, who=who)
            return _page(f"rollout {number}", _rollout(rollout_view(db, found)), who=who)

    return router
