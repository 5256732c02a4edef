"""The owner's admin console (``/ui``): the core every page module uses.

Server-rendered Jinja2 templates (``owner/templates/``) with a small self-served script
and stylesheet (``owner/static/``, served under ``/ui/static``); no CDN, and a CSP that
allows only the owner's own scripts and styles. Pages work without JavaScript: the
script only turns ``<time>`` elements into local time and adds copy-on-click to GUIDs.

Sign-in takes an admin API token from a form and opens a server-side session
(:mod:`owner.web_session`): the cookie holds a random session id, never the token.
Every page looks the session and its token up again, so signing out, the session's
expiry or idle timeout, and revoking the token all send the browser back to sign-in.
Every form that changes state (sign-in and sign-out included) is read with
:func:`authorized_form` (or :func:`authorized_upload`), which checks the session, the
CSRF token and the role: a missing or wrong token is answered 403, a role too low 403.
Actions call the same functions as the admin API (:mod:`owner.admin_ops`,
:mod:`owner.rollout_engine`), so they write the same audit entries. Pages show only the
buttons the visitor's role can use.

Pages: :mod:`owner.web_devices` (dashboard, devices, device), :mod:`owner.web_groups`,
:mod:`owner.web_rollouts`, :mod:`owner.web_admin` (vouchers, audit, tokens).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from fdo_server.auth import AdminToken, Role, lookup_token
from owner import web_session
from owner.deps import engine_of
from owner.web_session import COOKIE, CSRF_FIELD, Visitor

MAX_FORM = 64 * 1024

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


# ---------------------------------------------------------------------------- formats


def short_guid(guid: object) -> Markup:
    """A GUID shown by its first 8 hex digits, the full value in the title (and copied
    on click by the script)."""
    if not guid:
        return Markup('<span class="muted">–</span>')
    text = str(guid)
    return Markup('<span class="guid" title="{0}" data-copy="{0}">{1}…</span>').format(text, text[:8])


def when(value: object) -> Markup:
    """A timestamp as ``<time>``: UTC to the second without JavaScript, local time with."""
    if not value:
        return Markup('<span class="muted">–</span>')
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            return Markup("<span>{0}</span>").format(value)
    if value.tzinfo is None:  # SQLite hands back naive datetimes: they are UTC
        value = value.replace(tzinfo=UTC)
    text = value.astimezone(UTC).isoformat()
    shown = text[:19].replace("T", " ") + " UTC"
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(text, shown)


def digest(value: object) -> Markup:
    """A digest (``sha256:…``) or digest-pinned reference shortened, the full value on hover."""
    if not value:
        return Markup('<span class="muted">–</span>')
    text = str(value)
    head, sep, hexpart = text.rpartition("sha256:")
    if not sep:
        if len(text) > 24 and all(c in "0123456789abcdef" for c in text):
            return Markup('<code class="digest" title="{0}">{1}…</code>').format(text, text[:12])
        return Markup('<code title="{0}">{0}</code>').format(text)
    return Markup('<code class="digest" title="{0}">{1}sha256:{2}…</code>').format(text, head, hexpart[:12])


def as_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


_env = Environment(
    loader=PackageLoader("owner", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(guid=short_guid, when=when, digest=digest, json=as_json)
_env.globals.update(CSRF_FIELD=CSRF_FIELD)

NAV = [
    ("Dashboard", "/ui", Role.VIEWER),
    ("Devices", "/ui/devices", Role.VIEWER),
    ("Groups", "/ui/groups", Role.VIEWER),
    ("Rollouts", "/ui/rollouts", Role.VIEWER),
    ("Vouchers", "/ui/vouchers", Role.VIEWER),
    ("Audit", "/ui/audit", Role.VIEWER),
    ("Tokens", "/ui/tokens", Role.ADMIN),
]


def render(
    request: Request, template: str, who: Visitor | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    """A page from ``template`` with the layout's navigation for ``who``."""
    nav = [(t, h) for t, h, role in NAV if who is not None and who.allows(role)]
    html = _env.get_template(template).render(
        who=who,
        nav=nav,
        path=request.url.path,
        can_operate=who is not None and who.allows(Role.OPERATOR),
        can_admin=who is not None and who.allows(Role.ADMIN),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def message(request: Request, who: Visitor | None, title: str, text: str, status: int) -> HTMLResponse:
    return render(request, "message.html", who, status=status, title=title, text=text)


def done(location: str) -> RedirectResponse:
    """After a change: back to the page (303, so a reload does not post again)."""
    return RedirectResponse(location, status_code=303, headers=HEADERS)


# ---------------------------------------------------------------------------- sign-in


def visitor(request: Request) -> Visitor | None:
    return web_session.visitor(request)


def login_page(request: Request, note: str = "", status: int = 200) -> HTMLResponse:
    """The sign-in form with a fresh (or the browser's still valid) sign-in CSRF token; a
    session cookie that no longer names a live session is cleared."""
    if not note and request.cookies.get(COOKIE):
        note = "Your session has ended (signed out, expired, idle or its token revoked): sign in again."
    form_token = web_session.sign_in_token(request)
    response = render(request, "login.html", None, status=status, title="Sign in", note=note, csrf=form_token)
    web_session.set_sign_in_cookie(response, request, form_token)
    if request.cookies.get(COOKIE):
        web_session.clear_session_cookie(response, request)
    return response


def signed_in(request: Request) -> Visitor | Response:
    """Who reads the page, or the sign-in form to answer with."""
    who = visitor(request)
    return login_page(request) if who is None else who


BAD_CSRF = (
    "This form did not come from this console in this browser, or it is too old "
    "(its CSRF token is missing or wrong): nothing was done. Reload the page and try again."
)


def forbidden(request: Request, reason: str, who: Visitor | None = None) -> HTMLResponse:
    return message(request, who, "Forbidden", reason, 403)


async def _check(request: Request, form: dict[str, str], needed: Role) -> Visitor | Response:
    who = await run_in_threadpool(visitor, request)
    if who is None:
        return login_page(request, "" if request.cookies.get(COOKIE) else "Sign in first.", status=401)
    if not web_session.same_token(who.csrf, web_session.submitted_csrf(request, form)):
        return forbidden(request, BAD_CSRF, who)
    if not who.allows(needed):
        return forbidden(request, f"This needs the {needed} role; you signed in as {who.role}.", who)
    return who


async def authorized_form(
    request: Request, needed: Role, limit: int = MAX_FORM
) -> tuple[Visitor, dict[str, str]] | Response:
    """The url-encoded form of a state-changing request and who sent it, or the response
    refusing it: 413 (too long), the sign-in form with 401 (no live session), 403 (CSRF
    token missing or wrong, or a role below ``needed``)."""
    form = await web_session.read_form(request, limit)
    if form is None:
        return message(request, None, "Too long", "That form is too long.", 413)
    who = await _check(request, form, needed)
    return who if isinstance(who, Response) else (who, form)


async def authorized_upload(
    request: Request, needed: Role, limit: int
) -> tuple[Visitor, dict[str, str], dict[str, bytes]] | Response:
    """A ``multipart/form-data`` form (text fields and files up to ``limit`` bytes in
    all) and who sent it, refused as :func:`authorized_form` refuses."""
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        return message(request, None, "Too long", f"That upload is over {limit} bytes.", 413)
    try:
        parsed = await request.form(max_files=8, max_fields=16, max_part_size=limit)
    except (HTTPException, ValueError, KeyError, AssertionError):
        return message(request, None, "Bad form", "That form could not be read.", 400)
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for name, value in parsed.multi_items():
        if isinstance(value, str):
            fields.setdefault(name, value)
        else:
            data = await value.read()
            files[name] = files.get(name, b"") + data
    await parsed.close()
    if sum(map(len, files.values())) > limit:
        return message(request, None, "Too long", f"That upload is over {limit} bytes.", 413)
    who = await _check(request, fields, needed)
    return who if isinstance(who, Response) else (who, fields, files)


def _static(name: str, media_type: str) -> Callable[[], Response]:
    """The route answering with the packaged file ``owner/static/<name>``."""
    body = resources.files("owner").joinpath("static", name).read_bytes()
    headers = HEADERS | {"Cache-Control": "public, max-age=300"}

    def serve() -> Response:
        return Response(body, media_type=media_type, headers=headers)

    return serve


def core_router() -> APIRouter:
    """Static files, sign-in and sign-out."""
    router = APIRouter(include_in_schema=False)

    for name, media_type in STATIC.items():
        router.add_api_route(f"/ui/static/{name}", _static(name, media_type), methods=["GET"])

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        form = await web_session.read_form(request, 4096)
        if form is None:
            return login_page(request, "That is not a token.", status=413)
        if not web_session.sign_in_form_ok(request, form):
            return forbidden(request, BAD_CSRF)
        token = form.get("token", "").strip()

        def check() -> AdminToken | None:
            with Session(engine_of(request)) as db:
                return lookup_token(db, token) if token else None

        who = await run_in_threadpool(check)
        if who is None:
            return login_page(request, "Unknown or revoked token.", status=401)
        session_id = await run_in_threadpool(web_session.sign_in, request, who)
        response = done("/ui")
        web_session.set_session_cookie(response, request, session_id)
        return response

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        got = await authorized_form(request, Role.VIEWER)
        if isinstance(got, Response):
            return got
        await run_in_threadpool(web_session.end_session, engine_of(request), request.cookies.get(COOKIE, ""))
        response = done("/ui")
        web_session.clear_session_cookie(response, request)
        return response

    return router


def parse_int(text: str | None, default: int, *, low: int = 1, high: int = 2**31 - 1) -> int | None:
    """``text`` as an int in ``[low, high]`` (``default`` when empty), or None."""
    if not text:
        return default
    if not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if low <= value <= high else None


__all__ = ["Markup", "escape"]
