"""Status page (``/ui``) sign-in sessions and CSRF tokens.

Signing in with an admin API token makes a server-side session: a random 256-bit id
(url-safe) goes to the browser in the cookie :data:`COOKIE`; the database keeps only its
SHA-256 (:class:`owner.tables.UiSession`) with the token's id and role, and when it was
made, last read and when it ends. Each page looks the session up with its token: the
session ends when it is older than ``ui_session_seconds``, unread for
``ui_idle_seconds``, signed out (the row is deleted), or when its token is revoked or no
longer has the role it signed in with. ``last_seen_at`` is written at most once a minute
(a quarter of the idle timeout when that is shorter), so reading pages stays one
indexed SELECT. Every sign-in sweeps the rows of ended sessions.

Every form that changes state carries a CSRF token, compared in constant time, in the
form field :data:`CSRF_FIELD` or the header ``X-CSRF-Token``:

* with a session, the token is an HMAC of the session id (:func:`csrf_token`): stable
  for the session, nothing stored, useless without the cookie;
* the sign-in form has no session yet: a signed double-submit token
  (:func:`mint_sign_in_token`), ``issued.nonce.mac`` with an HMAC under a key derived
  from the owner keys (:func:`derive_secret`, the same on every worker and replica), in
  both the cookie :data:`SIGN_IN_COOKIE` and the form. A cross-site page can neither
  read that cookie (SameSite=Strict, HttpOnly) nor make a valid token, so it cannot sign
  a browser in to the attacker's token (login CSRF); a token is good for an hour.

Cookies are HttpOnly, SameSite=Strict, limited to ``/ui``, and ``Secure`` whenever the
browser reached us over HTTPS, directly or through a proxy in ``trusted_proxies``
(:mod:`fdo_server.proxies`). :func:`read_form` reads a posted form up to a size limit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Request, Response
from sqlalchemy import delete, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fdo.crypto import PrivateKeyT, private_key_to_der
from fdo_server.auth import AdminToken, Role
from fdo_server.clock import utc
from fdo_server.db import unit_of_work
from fdo_server.proxies import is_https
from owner.deps import engine_of, now_of
from owner.settings import OwnerSettings
from owner.tables import UiSession

log = logging.getLogger(__name__)

COOKIE = "fdo_owner_ui"
SIGN_IN_COOKIE = "fdo_owner_ui_signin"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
COOKIE_PATH = "/ui"
#: How long a sign-in form (its double-submit token) stays usable.
SIGN_IN_FORM_SECONDS = 3600
#: The longest ``last_seen_at`` is left unwritten while a session is read.
TOUCH_SECONDS = 60
#: Longest value of a token this module made (longer ones are refused unread).
_MAX_TOKEN = 256
_SIGN_IN_INFO = b"fdo-bootc owner /ui sign-in form v1"


@dataclass(frozen=True, slots=True)
class Visitor:
    """A browser signed in to the status page."""

    session_pk: int
    token_id: int
    #: The token's name (shown on the page).
    name: str
    #: The role the session signed in with (the token's, checked on every request).
    role: Role
    #: The CSRF token every state-changing form of this session carries.
    csrf: str

    def allows(self, needed: Role) -> bool:
        return self.role.allows(needed)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """The session's synchronizer token: an HMAC keyed by the (secret) session id."""
    return _b64(hmac.new(session_id.encode(), b"fdo-bootc /ui csrf", hashlib.sha256).digest())


def same_token(expected: str, submitted: str) -> bool:
    """``submitted`` equals ``expected``, compared in constant time (any text is safe)."""
    if not expected or not submitted or len(submitted) > _MAX_TOKEN:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode("utf-8", "surrogatepass"))


def submitted_csrf(request: Request, form: Mapping[str, str]) -> str:
    """The CSRF token a request carries: the form field, else the ``X-CSRF-Token`` header."""
    return form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")


async def read_form(request: Request, limit: int) -> dict[str, str] | None:
    """The url-encoded form of ``request`` (the first value of each field); None when the
    body is longer than ``limit`` bytes (reading stops there)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    fields = parse_qs(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _settings(request: Request) -> OwnerSettings:
    settings: OwnerSettings = request.app.state.settings
    return settings


# ---------------------------------------------------------------------------- sign-in form


def derive_secret(keys: Mapping[str, PrivateKeyT]) -> bytes:
    """The key that signs sign-in form tokens, derived (HKDF) from the owner keys, so
    every worker and replica with the same keys has it and nothing new is stored."""
    material = b"".join(private_key_to_der(keys[kind]) for kind in sorted(keys))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SIGN_IN_INFO).derive(material)


def _secret(request: Request) -> bytes:
    secret: bytes = request.app.state.ui_secret
    return secret


def _sign(secret: bytes, text: str) -> str:
    return _b64(hmac.new(secret, b"sign-in\0" + text.encode(), hashlib.sha256).digest())


def mint_sign_in_token(secret: bytes, now: datetime) -> str:
    """A fresh signed double-submit token: ``issued.nonce.mac``."""
    text = f"{int(now.timestamp())}.{secrets.token_urlsafe(24)}"
    return f"{text}.{_sign(secret, text)}"


def sign_in_token_valid(secret: bytes, token: str, now: datetime) -> bool:
    """``token`` was made by :func:`mint_sign_in_token` with ``secret`` within the hour."""
    if not token or len(token) > _MAX_TOKEN or not token.isascii():
        return False
    text, _, mac = token.rpartition(".")
    issued = text.partition(".")[0]
    if not issued.isdigit() or len(issued) > 12 or not hmac.compare_digest(mac, _sign(secret, text)):
        return False
    age = now.timestamp() - int(issued)
    return -60 <= age <= SIGN_IN_FORM_SECONDS


def sign_in_token(request: Request) -> str:
    """The sign-in token for a form: the browser's own while still valid, else a new one."""
    secret, now = _secret(request), now_of(request)
    current = request.cookies.get(SIGN_IN_COOKIE, "")
    return current if sign_in_token_valid(secret, current, now) else mint_sign_in_token(secret, now)


def sign_in_form_ok(request: Request, form: Mapping[str, str]) -> bool:
    """The sign-in form came from our page in this browser (double-submit, signed)."""
    cookie = request.cookies.get(SIGN_IN_COOKIE, "")
    return same_token(cookie, submitted_csrf(request, form)) and sign_in_token_valid(
        _secret(request), cookie, now_of(request)
    )


# ---------------------------------------------------------------------------- cookies


def _set(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request, _settings(request).trusted_proxies),
    )


def _clear(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request, _settings(request).trusted_proxies),
    )


def set_sign_in_cookie(response: Response, request: Request, token: str) -> None:
    _set(response, request, SIGN_IN_COOKIE, token, SIGN_IN_FORM_SECONDS)


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    """The session cookie (it lives as long as the session at most), the sign-in one gone."""
    _set(response, request, COOKIE, session_id, _settings(request).ui_session_seconds)
    _clear(response, request, SIGN_IN_COOKIE)


def clear_session_cookie(response: Response, request: Request) -> None:
    _clear(response, request, COOKIE)


# ---------------------------------------------------------------------------- sessions


#: Bulk statements leave the ORM's loaded rows alone (SQLite hands back naive datetimes,
#: which the ORM cannot compare with aware ones).
_BULK = {"synchronize_session": False}


def _touch_interval(settings: OwnerSettings) -> timedelta:
    return timedelta(seconds=min(TOUCH_SECONDS, settings.ui_idle_seconds / 4))


def sweep(db: Session, now: datetime, settings: OwnerSettings) -> int:
    """Delete the rows of ended sessions (expired, idle, or of a revoked token)."""
    idle_since = now - timedelta(seconds=settings.ui_idle_seconds)
    revoked = select(AdminToken.id).where(col(AdminToken.revoked_at).is_not(None))
    result = db.execute(
        delete(UiSession)
        .where(
            or_(
                col(UiSession.expires_at) <= now,
                col(UiSession.last_seen_at) <= idle_since,
                col(UiSession.token_id).in_(revoked),
            )
        )
        .execution_options(**_BULK)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def open_session(db: Session, token: AdminToken, now: datetime, settings: OwnerSettings) -> str:
    """A new session for ``token`` (its id, for the cookie; only its hash is stored)."""
    assert token.id is not None  # noqa: S101 - a stored token
    session_id = secrets.token_urlsafe(32)
    db.add(
        UiSession(
            session_hash=hash_session_id(session_id),
            token_id=token.id,
            role=token.role,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=settings.ui_session_seconds),
        )
    )
    return session_id


def _ended(row: UiSession, token: AdminToken, now: datetime, settings: OwnerSettings) -> str | None:
    """Why the session is over, or None while it is live."""
    if token.revoked_at is not None:
        return "its token was revoked"
    if token.role != row.role:
        return "its token's role changed"
    if now >= utc(row.expires_at):
        return "it expired"
    if now - utc(row.last_seen_at) >= timedelta(seconds=settings.ui_idle_seconds):
        return "it was idle too long"
    return None


def find_session(engine: Engine, session_id: str, now: datetime, settings: OwnerSettings) -> Visitor | None:
    """The live session ``session_id`` names (its ``last_seen_at`` kept current), or None;
    the row of an ended session is deleted."""
    if not session_id or len(session_id) > _MAX_TOKEN:
        return None
    wanted = hash_session_id(session_id)
    with unit_of_work(engine) as db:
        found = db.exec(
            select(UiSession, AdminToken)
            .join(AdminToken, col(AdminToken.id) == col(UiSession.token_id))
            .where(UiSession.session_hash == wanted)
        ).first()
        if found is None:
            return None
        row, token = found
        if not hmac.compare_digest(row.session_hash, wanted):
            return None
        why = _ended(row, token, now, settings)
        if why is not None:
            log.info("status page session of token %s ended: %s", token.id, why)
            db.execute(delete(UiSession).where(col(UiSession.id) == row.id).execution_options(**_BULK))
            return None
        if now - utc(row.last_seen_at) >= _touch_interval(settings):
            db.execute(
                update(UiSession)
                .where(col(UiSession.id) == row.id, col(UiSession.last_seen_at) < now)
                .values(last_seen_at=now)
                .execution_options(**_BULK)
            )
        assert row.id is not None and token.id is not None  # noqa: S101 - stored rows
        return Visitor(row.id, token.id, token.name, Role(row.role), csrf_token(session_id))


def end_session(engine: Engine, session_id: str) -> bool:
    """Sign out: delete the session ``session_id`` names; whether there was one."""
    if not session_id or len(session_id) > _MAX_TOKEN:
        return False
    with unit_of_work(engine) as db:
        wanted = hash_session_id(session_id)
        result = db.execute(
            delete(UiSession).where(col(UiSession.session_hash) == wanted).execution_options(**_BULK)
        )
        return bool(getattr(result, "rowcount", 0))


def visitor(request: Request) -> Visitor | None:
    """The signed-in browser making ``request``, or None (no cookie, or its session ended)."""
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        return None
    return find_session(engine_of(request), session_id, now_of(request), _settings(request))


def sign_in(request: Request, token: AdminToken) -> str:
    """Open a session for ``token`` (ending the one this browser had, sweeping ended ones);
    the new session id, for :func:`set_session_cookie`."""
    settings, now = _settings(request), now_of(request)
    previous = request.cookies.get(COOKIE, "")
    with unit_of_work(engine_of(request)) as db:
        swept = sweep(db, now, settings)
        if previous and len(previous) <= _MAX_TOKEN:
            ended = hash_session_id(previous)
            db.execute(
                delete(UiSession).where(col(UiSession.session_hash) == ended).execution_options(**_BULK)
            )
        session_id = open_session(db, token, now, settings)
    log.info("status page sign-in with token %s (%s); %d ended session(s) swept", token.id, token.role, swept)
    return session_id
