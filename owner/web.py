"""The owner's status page for admins (``/ui``): devices, groups, vouchers and TO0, audit.

Server-rendered HTML without JavaScript, read-only, over the same rows as the admin API
(changes go through the API and ``fdo owner ...``, which audit them). It refreshes
itself every 30 seconds.

Sign-in takes an admin API token (a viewer token is enough) from a form and opens a
server-side session (:mod:`owner.web_session`): the cookie holds a random session id,
never the token. Every page looks the session and its token up again, so signing out,
the session's expiry or idle timeout, and revoking the token all send the browser back
to sign-in. Every form that changes state (sign-in and sign-out included) carries a CSRF
token; a missing or wrong one is answered 403. Every value is HTML-escaped: serials,
models, labels and devmod facts come from devices. Each response forbids scripts,
framing and caching, and sends no referrer.

* ``GET /ui``: counts by device status, vouchers active and handed on, TO0
  registrations pending and expiring, groups with their current revision, the newest
  devices, TO0 registrations failing (with the last error), the newest audit entries
* ``GET /ui/devices`` (``?status=``, ``?group=``, ``?page=``): the devices, newest change
  first, 100 a page
* ``GET /ui/devices/{guid}`` (any GUID the device has had): facts, labels, rollouts, timeline
* ``/ui/rollouts[/{id}]``: :mod:`owner.web_rollouts`
* ``POST /ui/login`` (form fields ``token`` and ``csrf``), ``POST /ui/logout`` (``csrf``)

A new state-changing route reads its form with :func:`authorized_form`, which checks
the session, the CSRF token and the role.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from fdo.errors import FdoError
from fdo.types import Guid
from fdo_server.auth import AdminToken, Role, lookup_token
from owner import web_session
from owner.admin_api import status_summary
from owner.admin_groups import device_json, find_live_group, group_json, overdue_after
from owner.deps import engine_of, now_of
from owner.groups import find_device
from owner.groups_tables import STATUSES, AuditEntry, Device, Group
from owner.tables import ACTIVE, HANDED_ON, REPLACING, USABLE, OwnerVoucher, To0Work
from owner.to0 import EXPIRING_WINDOW
from owner.web_session import COOKIE, CSRF_FIELD, Visitor

#: The newest devices and audit entries the overview lists.
NEWEST = 50
#: Devices per page of ``/ui/devices``.
PAGE = 100
MAX_FORM = 4096
REFRESH_SECONDS = 30

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1b1b1b; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin-top: .4rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
code, .guid { font-family: ui-monospace, monospace; font-size: .9em; }
.bad { color: #a40000; } .good { color: #05620c; } .muted { color: #666; }
header { display: flex; justify-content: space-between; align-items: baseline; }
form.inline { display: inline; }
"""


def _visitor(request: Request) -> Visitor | None:
    """The signed-in browser making ``request`` (None: show the sign-in form)."""
    return web_session.visitor(request)


def _csrf_input(value: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(value)}">'


def _page(title: str, body: str, *, status: int = 200, who: Visitor | None = None) -> HTMLResponse:
    user = ""
    if who is not None:
        user = (
            f'<span class="muted">{escape(who.name)} ({escape(who.role)})</span> '
            '<form class="inline" method="post" action="/ui/logout">'
            f"{_csrf_input(who.csrf)}<button>Sign out</button></form>"
        )
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if who is not None else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · fdo-bootc owner</title>{refresh}"
        '<link rel="stylesheet" href="/ui/style.css"></head><body>'
        f'<header><h1><a href="/ui">fdo-bootc owner</a> · {escape(title)}</h1><div>{user}</div></header>'
        f"{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _login(request: Request, message: str = "", status: int = 200) -> HTMLResponse:
    """The sign-in form with a fresh (or the browser's still valid) sign-in CSRF token; a
    session cookie that no longer names a live session is cleared."""
    if not message and request.cookies.get(COOKIE):
        message = "Your session has ended (signed out, expired, idle or its token revoked): sign in again."
    note = f'<p class="bad">{escape(message)}</p>' if message else ""
    form_token = web_session.sign_in_token(request)
    body = (
        f"{note}<p>Sign in with an admin API token (any role; a viewer token is enough).</p>"
        '<form method="post" action="/ui/login">'
        f"{_csrf_input(form_token)}"
        '<label>Token <input type="password" name="token" autocomplete="off" required></label> '
        "<button>Sign in</button></form>"
    )
    response = _page("sign in", body, status=status)
    web_session.set_sign_in_cookie(response, request, form_token)
    if request.cookies.get(COOKIE):
        web_session.clear_session_cookie(response, request)
    return response


def _forbidden(reason: str, who: Visitor | None = None) -> HTMLResponse:
    body = f'<p class="bad">{escape(reason)}</p><p><a href="/ui">Back to the status page</a></p>'
    return _page("forbidden", body, status=403, who=who)


BAD_CSRF = (
    "This form did not come from this status page in this browser, or it is too old "
    "(its CSRF token is missing or wrong): nothing was done. Reload the page and try again."
)


async def authorized_form(request: Request, needed: Role) -> tuple[Visitor, dict[str, str]] | Response:
    """The form of a state-changing request and who sent it, or the response refusing it:
    413 (too long), the sign-in form with 401 (no live session), 403 (CSRF token missing
    or wrong, or a role below ``needed``)."""
    form = await web_session.read_form(request, MAX_FORM)
    if form is None:
        return _page("too long", "<p>That form is too long.</p>", status=413)
    who = await run_in_threadpool(_visitor, request)
    if who is None:
        return _login(request, "" if request.cookies.get(COOKIE) else "Sign in first.", status=401)
    if not web_session.same_token(who.csrf, web_session.submitted_csrf(request, form)):
        return _forbidden(BAD_CSRF, who)
    if not who.allows(needed):
        return _forbidden(f"This needs the {needed} role; you signed in as {who.role}.", who)
    return who, form


def _table(headings: list[str], rows: list[list[str]], empty: str) -> str:
    """A table of already-escaped cells."""
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _text(value: object) -> str:
    """A value as escaped text (None as a dash; mappings and lists as compact JSON)."""
    if value is None or value == "":
        return '<span class="muted">–</span>'
    if isinstance(value, dict | list):
        return f"<code>{escape(json.dumps(value, sort_keys=True, ensure_ascii=False))}</code>"
    return escape(str(value))


def _status(status: str) -> str:
    kind = {"applied": "good", "failed": "bad"}.get(status, "")
    return f'<span class="{kind}">{escape(status)}</span>' if kind else escape(status)


def _delivery(delivery: dict[str, Any] | None) -> str:
    """The delivery result: ``full``, ``partial (n missing)``, ``none``; a dash when unassigned."""
    if not delivery:
        return _text(None)
    result = str(delivery.get("result"))
    kind = {"full": "good", "none": "bad"}.get(result, "")
    text = f"{result} ({len(delivery.get('missing') or [])} missing)" if result == "partial" else result
    return f'<span class="{kind}">{escape(text)}</span>' if kind else escape(text)


def _device_link(guid: str) -> str:
    return f'<a class="guid" href="/ui/devices/{escape(guid)}">{escape(guid)}</a>'


DEVICE_HEADINGS = ["GUID", "status", "serial", "model", "group", "revision", "delivery", "labels", "updated"]


def _device_rows(db: Session, rows: Sequence[Device]) -> list[list[str]]:
    out = []
    for row in rows:
        d = device_json(row, db)
        out.append(
            [
                _device_link(d["guid"]),
                _status(d["status"]),
                _text(d["serial"]),
                _text(d["model"]),
                _text(d["group"]),
                _text(d["revision"]),
                _delivery(d["delivery"]),
                _text(d["labels"] or None),
                _text(d["updated_at"]),
            ]
        )
    return out


def _list_link(text: str, **query: str) -> str:
    return f'<a href="/ui/devices?{escape(urlencode(query))}">{escape(text)}</a>'


def _overview(db: Session, now: datetime) -> str:
    counts = status_summary(db, now)
    to0 = counts["to0"]
    summary = _table(
        [
            *STATUSES,
            "vouchers active",
            "replacements unconfirmed",
            "vouchers handed on",
            "TO0 pending",
            f"TO0 expiring within {EXPIRING_WINDOW.days} day",
            "TO0 failing",
        ],
        [
            [
                *(_list_link(str(counts["devices"][s]), status=s) for s in STATUSES),
                str(counts["vouchers"][ACTIVE]),
                str(counts["vouchers"][REPLACING]),
                str(counts["vouchers"][HANDED_ON]),
                str(to0["pending"]),
                str(to0["expiring"]),
                str(to0["failing"]),
            ]
        ],
        "",
    )
    groups = [
        group_json(g, db)
        for g in db.exec(select(Group).where(col(Group.deleted_at).is_(None)).order_by(col(Group.name))).all()
    ]
    group_rows = [
        [
            _text(g["name"]) + (' <span class="muted">(default)</span>' if g["is_default"] else ""),
            _text(g["current_revision"]),
            _text(g["model"]),
            _text(g["serial_pattern"]),
            _text(g["labels"] or None),
            _list_link(str(g["devices"]), group=g["name"]),
        ]
        for g in groups
    ]
    newest = select(Device).order_by(col(Device.updated_at).desc(), col(Device.id).desc()).limit(NEWEST)
    device_rows = _device_rows(db, db.exec(newest).all())
    failing = db.exec(
        select(OwnerVoucher, To0Work)
        .join(To0Work, col(To0Work.voucher_id) == col(OwnerVoucher.id))
        .where(col(OwnerVoucher.state).in_(USABLE), col(To0Work.last_error).is_not(None))
        .order_by(col(To0Work.attempts).desc(), col(OwnerVoucher.id))
        .limit(NEWEST)
    ).all()
    to0_rows = [
        [
            _text(str(Guid(v.guid))),
            _text(w.attempts),
            _text(w.next_attempt_at.isoformat()),
            _text(w.last_error),
        ]
        for v, w in failing
    ]
    audit = db.exec(select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(NEWEST)).all()
    audit_rows = [[_text(a.at.isoformat()), _text(a.who), _text(a.action), _text(a.target)] for a in audit]
    return (
        f"<h2>Summary</h2>{summary}"
        "<h2>Groups</h2>"
        + _table(
            ["group", "revision", "model", "serial pattern", "labels", "devices"], group_rows, "No groups."
        )
        + f"<h2>Devices (newest {NEWEST})</h2>"
        + _table(DEVICE_HEADINGS, device_rows, "No devices yet.")
        + f'<p>{_list_link("All devices")} · <a href="/ui/rollouts">Rollouts</a></p>'
        + "<h2>TO0 registrations failing</h2>"
        + _table(["voucher GUID", "attempts", "next attempt", "last error"], to0_rows, "None.")
        + f"<h2>Audit log (newest {NEWEST})</h2>"
        + _table(["at", "who", "action", "target"], audit_rows, "Nothing changed yet.")
    )


def _device(d: dict[str, Any]) -> str:
    facts = [
        ["status", _status(d["status"])],
        ["GUIDs", "<br>".join(_text(g) for g in d["guids"])],
        ["serial", _text(d["serial"])],
        ["model", _text(d["model"])],
        ["group", _text(d["group"])],
        ["assigned revision", _text(d["assigned_revision"])],
        ["revision of the latest TO2", _text(d["revision"])],
        ["delivery", _delivery(d["delivery"])],
        ["desired revision", _text(d["desired_revision"])],
        ["applied revision", _text(d["applied_revision"])],
        ["apply state", _text(d["apply_state"])],
        ["booted digest", _text(d["booted_digest"])],
        ["staged digest", _text(d["staged_digest"])],
        ["health", _text(d["health"])],
        ["rolled back", "yes" if d["rolled_back"] else "no"],
        ["last check-in", _text(d["last_checkin_at"]) + (" (overdue)" if d["overdue"] else "")],
        [
            "last error",
            _text(None if not d["last_error"] else f"{d['last_error']['step']}: {d['last_error']['text']}"),
        ],
        ["check-in credential", _text(d["checkin"])],
        [
            "rollouts",
            "<br>".join(
                f'<a href="/ui/rollouts/{r["rollout"]}">rollout {r["rollout"]}</a> (revision {r["revision"]},'
                f" {_text(r['rollout_state'])}): batch {r['batch']}, {_text(r['state'])}"
                + ("" if not r["error"] else f" {_text(r['error']['step'])}: {_text(r['error']['text'])}")
                for r in d.get("rollouts") or []
            )
            or _text(None),
        ],
        ["labels", _text(d["labels"] or None)],
        ["devmod", _text(d["devmod"] or None)],
        ["created", _text(d["created_at"])],
        ["updated", _text(d["updated_at"])],
    ]
    events = [[_text(e["at"]), _text(e["kind"]), _text(e["detail"] or None)] for e in d["events"]]
    return (
        _table(["", ""], facts, "")
        + _delivery_parts(d["delivery"])
        + "<h2>Timeline</h2>"
        + _table(["at", "event", "detail"], events, "No events.")
    )


def _delivery_parts(delivery: dict[str, Any] | None) -> str:
    """What the latest TO2 delivered and what it could not, with why."""
    if not delivery:
        return ""
    missing = [
        [_text(m.get("item")), _text(m.get("part")), _text(m.get("needs")), _text(m.get("reason"))]
        for m in delivery.get("missing") or []
    ]
    sent = [
        [_text(s.get("item")), _text(s.get("part")), _text(s.get("via"))]
        for s in delivery.get("delivered") or []
    ]
    return (
        f"<h2>Delivery of revision {_text(delivery.get('revision'))}</h2>"
        + _table(["missing", "part", "needs", "why"], missing, "Nothing missing.")
        + _table(["delivered", "part", "via"], sent, "Nothing delivered.")
    )


def _device_list(db: Session, status: str | None, group: Group | None, page: int) -> str:
    query = select(Device)
    if status is not None:
        query = query.where(Device.status == status)
    if group is not None:
        query = query.where(Device.group_id == group.id)
    total = db.exec(select(func.count()).select_from(query.subquery())).one()
    rows = db.exec(
        query.order_by(col(Device.updated_at).desc(), col(Device.id).desc())
        .offset((page - 1) * PAGE)
        .limit(PAGE)
    ).all()
    groups = db.exec(
        select(Group.name).where(col(Group.deleted_at).is_(None)).order_by(col(Group.name))
    ).all()

    def option(value: str, current: str | None) -> str:
        chosen = " selected" if value == current else ""
        return f'<option value="{escape(value)}"{chosen}>{escape(value)}</option>'

    form = (
        '<form method="get" action="/ui/devices">'
        '<label>status <select name="status"><option value="">any</option>'
        + "".join(option(s, status) for s in STATUSES)
        + '</select></label> <label>group <select name="group"><option value="">any</option>'
        + "".join(option(g, None if group is None else group.name) for g in groups)
        + "</select></label> <button>Show</button></form>"
    )
    query_args = {k: v for k, v in (("status", status), ("group", group and group.name)) if v}
    pages = []
    if page > 1:
        pages.append(_list_link("previous", **query_args, page=str(page - 1)))
    if page * PAGE < total:
        pages.append(_list_link("next", **query_args, page=str(page + 1)))
    first = (page - 1) * PAGE + 1
    shown = f"{first}–{first + len(rows) - 1}" if rows else "none"
    shown = f"<p>{total} device(s), {shown} shown. {' '.join(pages)}</p>"
    return form + shown + _table(DEVICE_HEADINGS, _device_rows(db, rows), "No device matches.")


def web_router() -> APIRouter:
    """The page's routes (mount at the root: they are under ``/ui``)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/style.css")
    def style() -> Response:
        return Response(STYLE, media_type="text/css", headers=HEADERS)

    @router.get("/ui")
    def overview(request: Request) -> Response:
        who = _visitor(request)
        if who is None:
            return _login(request)
        with Session(engine_of(request)) as db:
            return _page("status", _overview(db, now_of(request)), who=who)

    @router.get("/ui/devices")
    def devices(
        request: Request, status: str | None = None, group: str | None = None, page: str = "1"
    ) -> Response:
        who = _visitor(request)
        if who is None:
            return _login(request)
        with Session(engine_of(request)) as db:
            wanted = status or None
            if wanted is not None and wanted not in STATUSES:
                return _page("devices", f"<p>No status {escape(wanted[:32])}.</p>", status=400, who=who)
            number = int(page) if page.isdigit() and 0 < len(page) < 10 else 0
            if number < 1:
                return _page("devices", "<p>Pages count from 1.</p>", status=400, who=who)
            found = None
            if group:
                found = find_live_group(db, group)
                if found is None:
                    return _page("devices", f"<p>No group {escape(group[:64])}.</p>", status=404, who=who)
            return _page("devices", _device_list(db, wanted, found, number), who=who)

    @router.get("/ui/devices/{guid}")
    def device(guid: str, request: Request) -> Response:
        who = _visitor(request)
        if who is None:
            return _login(request)
        with Session(engine_of(request)) as db:
            try:
                wanted = Guid.parse(guid)
            except (FdoError, ValueError):
                return _page("no such device", f"<p>Not a GUID: {escape(guid[:64])}</p>", status=400, who=who)
            row = find_device(db, wanted)
            if row is None:
                return _page(
                    "no such device",
                    f"<p>No device has had GUID {escape(str(wanted))}.</p>",
                    status=404,
                    who=who,
                )
            view = device_json(
                row, db, events=True, now=now_of(request), overdue_after=overdue_after(request)
            )
            return _page(f"device {wanted}", _device(view), who=who)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        form = await web_session.read_form(request, MAX_FORM)
        if form is None:
            return _login(request, "That is not a token.", status=413)
        if not web_session.sign_in_form_ok(request, form):
            return _forbidden(BAD_CSRF)
        token = form.get("token", "").strip()

        def check() -> AdminToken | None:
            with Session(engine_of(request)) as db:
                return lookup_token(db, token) if token else None

        who = await run_in_threadpool(check)
        if who is None:
            return _login(request, "Unknown or revoked token.", status=401)
        session_id = await run_in_threadpool(web_session.sign_in, request, who)
        response = RedirectResponse("/ui", status_code=303, headers=HEADERS)
        web_session.set_session_cookie(response, request, session_id)
        return response

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        got = await authorized_form(request, Role.VIEWER)
        if isinstance(got, Response):
            return got
        await run_in_threadpool(web_session.end_session, engine_of(request), request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/ui", status_code=303, headers=HEADERS)
        web_session.clear_session_cookie(response, request)
        return response

    return router
