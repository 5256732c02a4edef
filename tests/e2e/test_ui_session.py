"""Over real HTTP: the owner's status page signs browsers in to server-side sessions.

The owner runs under uvicorn (one worker, no TO0) on SQLite and, when
``FDO_TEST_POSTGRES_URL`` is set, on PostgreSQL, trusting one proxy address,
127.0.0.2. A browser here is an ``httpx.Client``; one bound to 127.0.0.2 is that proxy.
The cookie is a random session id whose hash alone is stored; signing out, revoking the
token, a changed role, the idle timeout and the absolute expiry each end the session;
forms without the right CSRF token are refused 403; cookies are ``Secure`` when the
trusted proxy says the browser came over HTTPS, and not when anybody else says so.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from fdo.crypto import private_key_to_pem
from fdo_server.auth import AdminToken, Role, create_token
from fdo_server.db import make_engine, unit_of_work
from fdo_server.launcher import ServiceProcess, free_port
from fdo_server.migrate import upgrade
from owner.tables import UiSession
from owner.web_session import COOKIE, SIGN_IN_COOKIE
from tests.conftest import KeyPool, database_backends, open_database
from tests.owner.helpers import form_csrf, ui_sign_in

PROXY = "127.0.0.2"
SESSION_ENDED = "Your session has ended"
CSRF_REFUSED = "its CSRF token is missing or wrong"


@dataclass
class Owner:
    """An owner served by uvicorn, its database and a bootstrap admin token."""

    url: str
    database_url: str
    admin_token: str

    def browser(self, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> httpx.Client:
        """A client connecting from ``source`` (a loopback address)."""
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.url, transport=transport, headers=headers, timeout=30)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30
        )

    def new_token(self, role: Role) -> tuple[int, str]:
        """A new admin API token with ``role``: its id and its value."""
        with self.admin() as api:
            made = api.post("/api/v1/tokens", json={"name": f"ui-{role}", "role": str(role)})
            assert made.status_code == 201, made.text
            body = made.json()
        return int(body["id"]), str(body["token"])

    def sessions(self) -> list[UiSession]:
        engine = make_engine(self.database_url)
        try:
            with Session(engine) as db:
                return list(db.exec(select(UiSession).order_by(col(UiSession.id))).all())
        finally:
            engine.dispose()


def serve_owner(workdir: Path, database_url: str, pool: KeyPool, **env: str) -> ServiceProcess:
    key = workdir / "owner-ec256.key"
    if not key.exists():
        key.write_bytes(private_key_to_pem(pool.get("ec256", 7)))
    port = free_port()
    return ServiceProcess(
        name="owner",
        factory="owner.app:app_from_env",
        env={
            "FDO_OWNER_DATABASE_URL": database_url,
            "FDO_OWNER_KEYS": json.dumps({"ec256": str(key)}),
            "FDO_OWNER_TO2_URLS": json.dumps([f"http://127.0.0.1:{port}"]),
            "FDO_OWNER_TO0_ENABLED": "false",
            "FDO_OWNER_TRUSTED_PROXIES": json.dumps([f"{PROXY}/32"]),
            # This test signs in far more often than a person: no sign-in rate limit.
            "FDO_OWNER_LOGIN_RATE": "0",
            **env,
        },
        port=port,
        log_path=workdir / f"owner-{port}.log",
    )


@pytest.fixture(scope="module", params=database_backends())
def owner(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, key_pool: KeyPool
) -> Iterator[Owner]:
    workdir = tmp_path_factory.mktemp(f"ui-{request.param}")
    with open_database(request.param, workdir, "owner") as url:
        engine = make_engine(url)
        try:
            upgrade(engine, "owner")
            with unit_of_work(engine) as db:
                admin = create_token(db, "root", Role.ADMIN)
        finally:
            engine.dispose()
        with serve_owner(workdir, url, key_pool) as process:
            yield Owner(process.url, url, admin)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each cookie the response sets: its whole ``Set-Cookie`` line, by name."""
    return {line.partition("=")[0]: line for line in response.headers.get_list("set-cookie")}


def test_the_cookie_is_a_session_id_and_signing_out_revokes_it(owner: Owner) -> None:
    _, token = owner.new_token(Role.VIEWER)
    with owner.browser() as browser:
        form = browser.get("/ui")
        assert 'name="token"' in form.text
        sign_in = set_cookies(form)[SIGN_IN_COOKIE].lower()
        assert all(a in sign_in for a in ("httponly", "samesite=strict", "path=/ui")), sign_in
        signed = browser.post(
            "/ui/login", data={"token": token, "csrf": form_csrf(form.text)}, follow_redirects=False
        )
        assert signed.status_code == 303
        line = set_cookies(signed)[COOKIE]
        for attribute in ("httponly", "samesite=strict", "path=/ui"):
            assert attribute in line.lower(), line
        assert "secure" not in line.lower()  # plain HTTP, no trusted proxy
        session_id = browser.cookies[COOKIE]
        assert token not in line and len(session_id) == 43  # 256 bits, url-safe base64
        assert set(session_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        (row,) = [
            s for s in owner.sessions() if s.session_hash == hashlib.sha256(session_id.encode()).hexdigest()
        ]
        assert row.role == "viewer"
        home = browser.get("/ui").text
        assert (
            "Devices by status" in home
            and '<span class="who">ui-viewer</span> <span class="role">viewer</span>' in home
        )

        out = browser.post("/ui/logout", data={"csrf": form_csrf(home)}, follow_redirects=False)
        assert out.status_code == 303 and set_cookies(out)[COOKIE].startswith(f'{COOKIE}="";')
        assert row.id not in {s.id for s in owner.sessions()}

    # The old cookie, replayed, signs nobody in; the token itself still works for the API.
    with owner.browser() as replay:
        page = replay.get("/ui", headers={"Cookie": f"{COOKIE}={session_id}"})
        assert "Devices by status" not in page.text and SESSION_ENDED in page.text
        assert set_cookies(page)[COOKIE].startswith(f'{COOKIE}="";')
        assert replay.get("/api/v1/summary", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # The token is not a session id either.
        assert "Devices by status" not in replay.get("/ui", headers={"Cookie": f"{COOKIE}={token}"}).text


def test_revoking_the_token_ends_its_sessions(owner: Owner) -> None:
    token_id, token = owner.new_token(Role.OPERATOR)
    with owner.browser() as first, owner.browser() as second:
        ui_sign_in(first, token)
        ui_sign_in(second, token)
        with owner.admin() as api:
            assert api.delete(f"/api/v1/tokens/{token_id}").status_code == 200
        for browser in (first, second):
            page = browser.get("/ui/devices")
            assert (
                "Devices by status" not in page.text
                and SESSION_ENDED in page.text
                and 'name="token"' in page.text
            )
        assert not [s for s in owner.sessions() if s.token_id == token_id]
        # Signing in again with the revoked token is refused.
        again = first.post(
            "/ui/login",
            data={"token": token, "csrf": form_csrf(first.get("/ui").text)},
            follow_redirects=False,
        )
        assert again.status_code == 401 and COOKIE not in set_cookies(again)


def test_the_session_keeps_the_role_it_signed_in_with(owner: Owner) -> None:
    viewer_id, viewer = owner.new_token(Role.VIEWER)
    _, admin = owner.new_token(Role.ADMIN)
    with owner.browser() as as_viewer, owner.browser() as as_admin:
        assert '<span class="who">ui-viewer</span> <span class="role">viewer</span>' in ui_sign_in(
            as_viewer, viewer
        )
        assert '<span class="who">ui-admin</span> <span class="role">admin</span>' in ui_sign_in(
            as_admin, admin
        )
        assert {s.token_id: s.role for s in owner.sessions()}[viewer_id] == "viewer"
        # The token's role changes under the session (no API does this): the session ends.
        engine = make_engine(owner.database_url)
        try:
            with unit_of_work(engine) as db:
                db.execute(update(AdminToken).where(col(AdminToken.id) == viewer_id).values(role="operator"))
        finally:
            engine.dispose()
        assert SESSION_ENDED in as_viewer.get("/ui").text
        assert '<span class="who">ui-admin</span> <span class="role">admin</span>' in as_admin.get("/ui").text


def test_forms_without_the_right_csrf_token_are_refused(owner: Owner) -> None:
    _, token = owner.new_token(Role.VIEWER)
    with owner.browser() as browser:
        form = browser.get("/ui").text
        good = form_csrf(form)
        mac_flipped = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
        # Sign-in: no token, a wrong one, a forged one in cookie and form alike.
        for fields, cookie in (
            ({"token": token}, good),
            ({"token": token, "csrf": "x" * 40}, good),
            ({"token": token, "csrf": mac_flipped}, mac_flipped),
            ({"token": token, "csrf": good}, ""),  # a cross-site form: no sign-in cookie
        ):
            browser.cookies.clear()
            if cookie:
                browser.cookies.set(SIGN_IN_COOKIE, cookie)
            refused = browser.post("/ui/login", data=fields, follow_redirects=False)
            assert refused.status_code == 403 and CSRF_REFUSED in refused.text, fields
            assert COOKIE not in set_cookies(refused)
        browser.cookies.clear()

        home = ui_sign_in(browser, token)
        session_csrf = form_csrf(home)
        assert session_csrf != good
        # Sign-out: no token, a wrong one, the sign-in form's one: 403, still signed in.
        for fields in ({}, {"csrf": "nope"}, {"csrf": good}):
            refused = browser.post("/ui/logout", data=fields, follow_redirects=False)
            assert refused.status_code == 403 and CSRF_REFUSED in refused.text, fields
            assert "Devices by status" in browser.get("/ui").text
        # The header is accepted instead of the field (for scripts such as htmx).
        out = browser.post("/ui/logout", headers={"X-CSRF-Token": session_csrf}, follow_redirects=False)
        assert out.status_code == 303
        assert "Devices by status" not in browser.get("/ui").text


def test_cookies_are_secure_when_the_trusted_proxy_says_https(owner: Owner) -> None:
    _, token = owner.new_token(Role.VIEWER)
    https = {"X-Forwarded-Proto": "https"}

    def cookies_of(source: str, headers: dict[str, str]) -> dict[str, str]:
        """The cookies a sign-in from ``source`` with ``headers`` sets (form, then session)."""
        with owner.browser(source=source, headers=headers) as browser:
            form = browser.get("/ui")
            pre = set_cookies(form)[SIGN_IN_COOKIE]
            csrf = form_csrf(form.text)
            # Sent by hand: a client keeps a Secure cookie off plain HTTP.
            signed = browser.post(
                "/ui/login",
                data={"token": token, "csrf": csrf},
                headers={"Cookie": f"{SIGN_IN_COOKIE}={csrf}"},
                follow_redirects=False,
            )
            assert signed.status_code == 303, signed.text
            return {SIGN_IN_COOKIE: pre, COOKIE: set_cookies(signed)[COOKIE]}

    def secure(line: str) -> bool:
        return "secure" in [part.strip().lower() for part in line.split(";")]

    behind_proxy = cookies_of(PROXY, https)
    assert all(secure(line) for line in behind_proxy.values()), behind_proxy
    # Anybody else saying https, or the proxy not saying it: not Secure.
    for source, headers in (("127.0.0.1", https), (PROXY, {}), (PROXY, {"X-Forwarded-Proto": "http"})):
        got = cookies_of(source, headers)
        assert not any(secure(line) for line in got.values()), (source, headers, got)


def test_sessions_end_when_idle_or_expired_and_ended_ones_are_swept(
    owner: Owner, tmp_path: Path, key_pool: KeyPool
) -> None:
    """A second server on the same database with short timeouts: 3 s idle, 6 s in all.

    The session cookies are sent by hand: a client drops a cookie at its Max-Age (the
    lifetime, rounded to whole seconds), and here the server is to refuse it.
    """
    idle, lifetime = 3.0, 6.0
    _, token = owner.new_token(Role.VIEWER)
    short = serve_owner(
        tmp_path,
        owner.database_url,
        key_pool,
        FDO_OWNER_UI_IDLE_SECONDS="3",
        FDO_OWNER_UI_SESSION_SECONDS="6",
    )

    def session_of(browser: httpx.Client) -> dict[str, str]:
        ui_sign_in(browser, token)
        return {"Cookie": f"{COOKIE}={browser.cookies[COOKIE]}"}

    with short, httpx.Client(base_url=short.url, timeout=30) as http:
        unused = session_of(http)  # never read again: only the sweep removes it
        http.cookies.clear()
        idler = session_of(http)
        idle_from = time.monotonic()  # its last read has been answered
        http.cookies.clear()
        signing_in = time.monotonic()
        active = session_of(http)
        signed_in = time.monotonic()
        http.cookies.clear()
        # The active browser reads a page every 0.2 s: past the idle timeout it is still
        # signed in, the idle one is not; past the lifetime the active one is not either.
        idler_ended = kept_past_idle = False
        while True:
            sent = time.monotonic()
            page = http.get("/ui", headers=active).text
            answered = time.monotonic()
            if answered < signing_in + lifetime:
                assert "Devices by status" in page, (
                    f"signed out {answered - signing_in:.1f} s after signing in"
                )
                kept_past_idle |= sent > signing_in + idle + 0.5
            if not idler_ended and sent > idle_from + idle + 0.5:
                assert SESSION_ENDED in http.get("/ui", headers=idler).text
                idler_ended = True
            if sent > signed_in + lifetime + 0.2:  # the session ended, however active
                assert SESSION_ENDED in page
                break
            time.sleep(0.2)
        assert idler_ended and kept_past_idle
        unused_hash = hashlib.sha256(unused["Cookie"].partition("=")[2].encode()).hexdigest()
        assert unused_hash in {s.session_hash for s in owner.sessions()}
        # The next sign-in sweeps the ended session nobody read.
        with owner.browser() as later:
            ui_sign_in(later, token)
        assert unused_hash not in {s.session_hash for s in owner.sessions()}
