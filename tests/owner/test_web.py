"""The owner's status page (``/ui``): sign-in, what it shows, escaping, security headers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from sqlmodel import select

import owner.web_devices
from fdo.serviceinfo.devmod import Devmod
from fdo.types import Guid
from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from fdo_server.db import unit_of_work
from owner.app import create_app
from owner.groups import assignment_for, record_onboarding
from owner.tables import OwnerVoucher, To0Work, UiSession
from owner.web import authorized_form
from owner.web_session import COOKIE, SIGN_IN_COOKIE
from tests.conftest import KeyPool
from tests.owner.helpers import World, form_csrf, make_world, token, ui_sign_in

IMAGE = "quay.io/acme/os@sha256:" + "ab" * 32
EVIL = '<script>alert("x")</script>'


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


@pytest.fixture
def app(world: World, database_url: str) -> FastAPI:
    return create_app(world.settings(database_url))


def signed_in(app: FastAPI, role: Role = Role.VIEWER) -> TestClient:
    http = TestClient(app, base_url="https://testserver")
    ui_sign_in(http, token(app, role)["Authorization"].removeprefix("Bearer "))
    return http


def test_sign_in_needs_a_live_token_and_sets_a_strict_session_cookie(app: FastAPI) -> None:
    http = TestClient(app, base_url="https://testserver")
    page = http.get("/ui")
    assert page.status_code == 200 and 'name="token"' in page.text and "Devices by status" not in page.text
    csrf = form_csrf(page.text)
    assert http.cookies[SIGN_IN_COOKIE] == csrf  # the signed double-submit token
    wrong = http.post("/ui/login", data={"token": "fdo_not-a-token", "csrf": csrf}, follow_redirects=False)
    assert wrong.status_code == 401 and "Unknown or revoked token" in wrong.text
    assert f"{COOKIE}=" not in wrong.headers.get("set-cookie", "")
    assert http.post("/ui/login", content=b"token=" + b"x" * 5000).status_code == 413

    value = token(app, Role.VIEWER)["Authorization"].removeprefix("Bearer ")
    response = http.post("/ui/login", data={"token": value, "csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303
    session = http.cookies[COOKIE]
    assert session and session != value and value not in response.headers["set-cookie"]
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    for attribute in ("HttpOnly", "Path=/ui", "SameSite=strict", "Secure"):
        assert attribute.lower() in cookie.lower(), cookie
    home = http.get("/ui").text
    assert (
        "Devices by status" in home
        and '<span class="who">test-viewer</span> <span class="role">viewer</span>' in home
    )

    out = http.post("/ui/logout", data={"csrf": form_csrf(home)}, follow_redirects=False)
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
    http.cookies.set(COOKIE, session, domain="testserver.local", path="/ui")  # keep the old cookie
    again = http.get("/ui").text
    assert "Devices by status" not in again and "Your session has ended" in again


PAGES = ("/ui", "/ui/devices", "/ui/groups", "/ui/rollouts", "/ui/vouchers", "/ui/audit")


def test_every_page_allows_only_own_scripts_and_forbids_framing_and_caching(app: FastAPI) -> None:
    http = signed_in(app)
    for path in (*PAGES, f"/ui/devices/{Guid.new()}", "/ui/devices/nope", "/ui/tokens"):
        response = http.get(path)
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
        # The one script is the owner's own file; no inline script, no inline style.
        assert re.findall(r"<script[^>]*>", response.text) == ['<script src="/ui/static/console.js" defer>']
        assert "style=" not in response.text and "<style" not in response.text
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
        assert headers["referrer-policy"] == "no-referrer"
    assert http.get(f"/ui/devices/{Guid.new()}").status_code == 404
    assert http.get("/ui/devices/nope").status_code == 404
    assert http.get("/ui/tokens").status_code == 403  # a viewer
    for name in ("console.css", "console.js"):
        static = http.get(f"/ui/static/{name}")
        assert static.status_code == 200 and "default-src 'none'" in static.headers["content-security-policy"]
    assert http.get("/ui/static/web.py").status_code == 404
    assert http.get("/ui/static/console.js", params={"name": "../web.py"}).text.startswith("// fdo-bootc")


def test_the_page_shows_groups_devices_to0_and_audit_escaped(
    app: FastAPI, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = token(app, Role.OPERATOR)
    api = TestClient(app)
    (_, voucher), (_, other) = world.device(), world.device()
    assert api.post(
        "/api/v1/vouchers", content=vouchers_to_pem([voucher, other]), headers=operator
    ).is_success
    group = {"name": "kiosk", "model": EVIL}
    assert api.post("/api/v1/groups", json=group, headers=operator).status_code == 201
    revision = {"image": IMAGE, "apply_mode": "switch"}
    assert api.post("/api/v1/groups/kiosk/revisions", json=revision, headers=operator).status_code == 201
    labels = {"labels": {"site": "lab", "note": EVIL}}
    assert api.put(f"/api/v1/devices/{other.guid}/labels", json=labels, headers=operator).status_code == 200

    # A device onboards with devmod facts an attacker chose: its model is markup.
    devmod = Devmod(os="Linux", arch="x86_64", version="1", device=EVIL, sep=":", bin="x86_64", sn=b"SN-<b>1")
    new_guid = Guid.new()
    with unit_of_work(app.state.engine) as db:
        got = assignment_for(voucher.guid, devmod)
        assert got is not None and got.revision.number == 1
        record_onboarding(voucher.guid, new_guid, devmod, got.revision)
        # The other voucher's TO0 registration is live for another hour: expiring.
        work = db.exec(select(To0Work).join(OwnerVoucher).where(OwnerVoucher.guid == other.guid.value)).one()
        work.registered_until = datetime.now(UTC) + timedelta(hours=1)
        db.add(work)
        # The first voucher's TO0 keeps failing, with an error text a peer could shape.
        failing = db.exec(
            select(To0Work).join(OwnerVoucher).where(OwnerVoucher.guid == voucher.guid.value)
        ).one()
        failing.attempts, failing.last_error = 4, f"rendezvous said {EVIL}"
        db.add(failing)

    http = signed_in(app)
    page = http.get("/ui").text
    assert EVIL not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/ui/static/console.js" defer>']
    cards = dict(
        (label, int(n))
        for n, label in re.findall(r'<div class="n">(\d+)</div><div class="l">([^<]+)</div>', page)
    )
    assert cards == {
        "new": 1, "onboarding": 0, "onboarded": 1, "undelivered": 0, "applied": 0, "failed": 0,
        "overdue check-in": 0, "vouchers active": 2,
        "TO0 pending": 1, "TO0 expiring soon": 1, "TO0 failing": 1,
    }  # fmt: skip
    summary_api = TestClient(app).get("/api/v1/summary", headers=operator).json()
    assert summary_api == {
        "devices": {"new": 1, "onboarding": 0, "onboarded": 1, "undelivered": 0, "applied": 0, "failed": 0},
        "vouchers": {"active": 2, "replacing": 0, "replaced": 0, "superseded": 0, "handed_on": 0},
        "to0": {"pending": 1, "expiring": 1, "failing": 1, "expiring_within_seconds": 86400},
    }
    to0 = re.search(r"<h2>TO0 problems</h2>(.*?)</table>", page, re.S)
    assert to0 is not None and str(voucher.guid) in to0.group(1) and str(other.guid) not in to0.group(1)
    assert "<td>4</td>" in to0.group(1) and "rendezvous said &lt;script&gt;" in to0.group(1)
    assert 'href="/ui/devices?status=onboarded"><div class="n">1</div>' in page

    groups = http.get("/ui/groups").text
    assert 'href="/ui/devices?group=kiosk">1</a>' in groups and EVIL not in groups
    audit_page = http.get("/ui/audit").text
    assert "group.create" in audit_page and "revision.publish" in audit_page and "device.labels" in audit_page
    assert EVIL not in audit_page
    only = http.get("/ui/audit", params={"action": "device.labels"}).text
    assert "1 entry" in only and "revision.publish</code>" not in only
    assert http.get("/ui/audit", params={"since": "yesterday"}).status_code == 400

    # The device list, filtered and paged.
    listed = http.get("/ui/devices", params={"status": "onboarded"}).text
    assert f'href="/ui/devices/{new_guid}"' in listed and str(other.guid) not in listed
    assert "1 device(s), 1–1 shown" in listed and '<option value="onboarded" selected>' in listed
    listed = http.get("/ui/devices", params={"group": "kiosk"}).text
    assert str(new_guid) in listed and str(other.guid) not in listed
    monkeypatch.setattr(owner.web_devices, "PAGE", 1)
    first, second = http.get("/ui/devices").text, http.get("/ui/devices", params={"page": "2"}).text
    assert "2 device(s), 1–1 shown" in first and 'href="/ui/devices?page=2">next →</a>' in first
    assert "2 device(s), 2–2 shown" in second and 'href="/ui/devices?page=1">← previous</a>' in second
    by_serial = http.get("/ui/devices", params={"q": "SN-<b"}).text
    assert "1 device(s)" in by_serial and str(new_guid) in by_serial
    by_label = http.get("/ui/devices", params={"q": "lab"}).text
    assert "1 device(s)" in by_label and str(other.guid) in by_label
    by_guid = http.get("/ui/devices", params={"q": str(voucher.guid)}).text  # an old GUID
    assert "1 device(s)" in by_guid and str(new_guid) in by_guid
    assert {str(new_guid), str(other.guid)} == {
        g for g in (str(new_guid), str(other.guid)) if g in first + second
    }
    assert http.get("/ui/devices", params={"status": "happy"}).status_code == 400
    assert http.get("/ui/devices", params={"page": "0"}).status_code == 400
    assert http.get("/ui/devices", params={"page": "x"}).status_code == 400
    assert http.get("/ui/devices", params={"group": EVIL}).status_code == 400
    assert EVIL not in http.get("/ui/devices", params={"group": EVIL}).text

    # The device by its old GUID: both GUIDs, facts and the timeline, escaped.
    detail = http.get(f"/ui/devices/{voucher.guid}")
    assert detail.status_code == 200
    text = detail.text
    assert str(voucher.guid) in text and str(new_guid) in text and "SN-&lt;b&gt;1" in text
    assert EVIL not in text and re.findall(r"<script[^>]*>", text) == [
        '<script src="/ui/static/console.js" defer>'
    ]
    assert [k for k in ("created", "assigned", "onboarded") if f"<td>{k}</td>" in text] == [
        "created",
        "assigned",
        "onboarded",
    ]


def test_the_device_pages_show_the_delivery_escaped(app: FastAPI, world: World) -> None:
    operator = token(app, Role.OPERATOR)
    api = TestClient(app)
    _, voucher = world.device()
    assert api.post("/api/v1/vouchers", content=vouchers_to_pem([voucher]), headers=operator).is_success
    assert api.post("/api/v1/groups", json={"name": "all", "is_default": True}, headers=operator).is_success
    revision = {"image": IMAGE, "apply_mode": "switch"}
    assert api.post("/api/v1/groups/all/revisions", json=revision, headers=operator).is_success
    devmod = Devmod(os="Linux", arch="x86_64", version="1", device="m", sep=":", bin="x86_64")
    # A device's own error text (bootc module results) is what it chose: markup here.
    delivery = {
        "result": "partial",
        "revision": 1,
        "via": "bootc",
        "delivered": [{"item": "file:/etc/a", "part": "item", "via": "com.fdo-bootc.bootc"}],
        "missing": [{"item": f"image:{IMAGE}", "part": "item", "needs": None, "reason": EVIL}],
    }
    with unit_of_work(app.state.engine):
        got = assignment_for(voucher.guid, devmod)
        assert got is not None
        record_onboarding(voucher.guid, None, devmod, got.revision, delivery=delivery)
    http = signed_in(app)
    listing = http.get("/ui/devices").text
    assert str(voucher.guid)[:8] in listing
    page = http.get(f"/ui/devices/{voucher.guid}").text
    assert EVIL not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert (
        "<h2>Not delivered at onboarding (revision 1)</h2>" in page
        and '<span class="badge warn">partial</span>' in page
    )
    record = api.get(f"/api/v1/devices/{voucher.guid}", headers=operator).json()
    assert record["delivery"] == delivery and record["status"] == "onboarded" and record["revision"] == 1


class MovableClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_sessions_follow_the_clock_and_last_seen_is_written_at_most_once_a_minute(
    world: World, database_url: str
) -> None:
    clock = MovableClock(datetime(2026, 1, 1, tzinfo=UTC))
    app = create_app(world.settings(database_url), clock=clock)

    def last_seen() -> datetime:
        with unit_of_work(app.state.engine) as db:
            (row,) = db.exec(select(UiSession)).all()
            return row.last_seen_at.replace(tzinfo=UTC)

    def signed_in_now(http: TestClient) -> bool:
        page = http.get("/ui").text
        assert "Devices by status" in page or 'name="token"' in page
        return "Devices by status" in page

    http = signed_in(app)
    start = clock.now
    assert last_seen() == start
    clock.now = start + timedelta(seconds=30)
    assert signed_in_now(http) and last_seen() == start  # no write within the minute
    clock.now = start + timedelta(seconds=61)
    assert signed_in_now(http) and last_seen() == clock.now
    seen = clock.now
    clock.now = seen + timedelta(minutes=29, seconds=59)
    assert signed_in_now(http)
    clock.now += timedelta(minutes=30)  # 30 minutes without a read
    assert not signed_in_now(http)
    with unit_of_work(app.state.engine) as db:
        assert db.exec(select(UiSession)).all() == []  # the ended session's row is gone

    # However active, a session ends 12 hours after sign-in.
    http = signed_in(app)
    start = clock.now
    while clock.now + timedelta(minutes=29) < start + timedelta(hours=12):
        clock.now += timedelta(minutes=29)
        assert signed_in_now(http), clock.now - start
    clock.now = start + timedelta(hours=12)
    assert not signed_in_now(http)

    # A sign-in form is good for an hour.
    form = http.get("/ui").text
    clock.now += timedelta(hours=1, seconds=1)
    value = token(app, Role.VIEWER)["Authorization"].removeprefix("Bearer ")
    stale = http.post("/ui/login", data={"token": value, "csrf": form_csrf(form)}, follow_redirects=False)
    assert stale.status_code == 403 and COOKIE not in stale.headers.get("set-cookie", "")
    fresh = form_csrf(http.get("/ui").text)
    assert fresh != form_csrf(form)
    assert (
        http.post("/ui/login", data={"token": value, "csrf": fresh}, follow_redirects=False).status_code
        == 303
    )


def test_state_changing_forms_need_the_csrf_token_and_the_role(app: FastAPI) -> None:
    @app.post("/ui/test-operator-action")
    async def action(request: Request) -> Response:
        got = await authorized_form(request, Role.OPERATOR)
        if isinstance(got, Response):
            return got
        who, form = got
        return PlainTextResponse(f"done by {who.role}: {form.get('thing')}")

    anonymous = TestClient(app, base_url="https://testserver")
    refused = anonymous.post("/ui/test-operator-action", data={"thing": "x"})
    assert refused.status_code == 401 and 'name="token"' in refused.text

    viewer = signed_in(app, Role.VIEWER)
    csrf = form_csrf(viewer.get("/ui").text)
    denied = viewer.post("/ui/test-operator-action", data={"thing": "x", "csrf": csrf})
    assert (
        denied.status_code == 403 and "This needs the operator role; you signed in as viewer." in denied.text
    )

    operator = signed_in(app, Role.OPERATOR)
    csrf = form_csrf(operator.get("/ui").text)
    assert operator.post("/ui/test-operator-action", data={"thing": "x"}).status_code == 403
    assert (
        operator.post("/ui/test-operator-action", data={"thing": "x", "csrf": csrf + "x"}).status_code == 403
    )
    done = operator.post("/ui/test-operator-action", data={"thing": "x", "csrf": csrf})
    assert done.status_code == 200 and done.text == "done by operator: x"
    by_header = operator.post("/ui/test-operator-action", data={"thing": "y"}, headers={"X-CSRF-Token": csrf})
    assert by_header.text == "done by operator: y"
    assert operator.post("/ui/test-operator-action", content=b"thing=" + b"y" * 70_000).status_code == 413
