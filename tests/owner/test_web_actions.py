"""The console's actions without a browser (tests/ui drives them in Chromium): each one
does what the admin API does, writes the same audit entry, and follows the role."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select

from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from fdo_server.db import unit_of_work
from owner.app import create_app
from owner.groups_tables import AuditEntry
from tests.conftest import KeyPool
from tests.owner.helpers import World, form_csrf, make_world, token, ui_sign_in
from tests.owner.test_rollouts_api import IMAGE1, IMAGE2, onboarded_devices


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


@pytest.fixture
def app(world: World, database_url: str) -> FastAPI:
    return create_app(world.settings(database_url))


def browser(app: FastAPI, role: Role) -> tuple[TestClient, str]:
    http = TestClient(app, base_url="https://testserver", follow_redirects=False)
    page = ui_sign_in(http, token(app, role)["Authorization"].removeprefix("Bearer "))
    return http, form_csrf(page)


def audit(app: FastAPI) -> list[tuple[str, str, str]]:
    with unit_of_work(app.state.engine) as db:
        rows = db.exec(select(AuditEntry).order_by(col(AuditEntry.id))).all()
        return [(r.who, r.action, r.target) for r in rows]


def test_an_operator_changes_labels_publishes_and_steers_a_rollout(app: FastAPI, world: World) -> None:
    api = TestClient(app)
    operator = token(app, Role.OPERATOR)
    assert api.post("/api/v1/groups", json={"name": "kiosk"}, headers=operator).status_code == 201
    assert api.post("/api/v1/groups/kiosk/revisions", json={"image": IMAGE1}, headers=operator).is_success
    onboarded_devices(app.state.engine, "kiosk", 1, 4)
    guid = api.get("/api/v1/devices", headers=operator).json()["items"][0]["guid"]
    http, csrf = browser(app, Role.OPERATOR)

    bad = http.post(f"/ui/devices/{guid}/labels", data={"csrf": csrf, "labels": "site"})
    assert bad.status_code == 422 and "Line 1: write each label as key=value." in bad.text
    saved = http.post(f"/ui/devices/{guid}/labels", data={"csrf": csrf, "labels": "site=lab\n\nrack = r7\n"})
    assert saved.status_code == 303 and saved.headers["location"].endswith("?ok=labels")
    assert api.get(f"/api/v1/devices/{guid}", headers=operator).json()["labels"] == {
        "site": "lab",
        "rack": "r7",
    }
    assert "Labels saved." in http.get(saved.headers["location"]).text
    again = http.post(f"/ui/devices/{guid}/redeliver", data={"csrf": csrf})
    assert again.status_code == 303

    form = {"csrf": csrf, "image": "registry.example/os:latest", "config": "{}"}
    tag = http.post("/ui/groups/kiosk/revisions", data=form)
    assert (
        tag.status_code == 422 and "image:" in tag.text and 'value="registry.example/os:latest"' in tag.text
    )
    not_json = http.post("/ui/groups/kiosk/revisions", data=form | {"image": IMAGE2, "config": "{"})
    assert not_json.status_code == 422 and "config: not JSON (line 1, column 2" in not_json.text
    wrong_shape = http.post("/ui/groups/kiosk/revisions", data=form | {"image": IMAGE2, "config": '{"x": 1}'})
    assert wrong_shape.status_code == 422 and "config.x:" in wrong_shape.text
    published = http.post("/ui/groups/kiosk/revisions", data=form | {"image": IMAGE2, "apply_mode": "stage"})
    assert published.status_code == 303, published.text
    revisions = api.get("/api/v1/groups/kiosk/revisions", headers=operator).json()["items"]
    assert [(r["number"], r["image"], r["apply_mode"]) for r in revisions][-1] == (2, IMAGE2, "stage")

    refused = http.post("/ui/groups/kiosk/rollouts", data={"csrf": csrf, "revision": "9"})
    assert refused.status_code == 404 and "has no revision 9" in refused.text
    started = http.post("/ui/groups/kiosk/rollouts", data={"csrf": csrf, "revision": "2", "batch_size": "2"})
    assert started.status_code == 303
    where = started.headers["location"].partition("?")[0]
    rollout_id = where.rsplit("/", 1)[1]
    for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        answer = http.post(f"{where}/{action}", data={"csrf": csrf})
        assert answer.status_code == 303, answer.text
        assert api.get(f"/api/v1/rollouts/{rollout_id}", headers=operator).json()["state"] == state
    twice = http.post(f"{where}/pause", data={"csrf": csrf})
    assert twice.status_code == 409 and 'role="alert"' in twice.text
    assert http.post(f"{where}/explode", data={"csrf": csrf}).status_code == 404

    mine = [(a, t) for w, a, t in audit(app) if w == "test-operator"]
    target = f"rollout:{rollout_id}"
    assert mine[-7:] == [
        ("device.labels", guid), ("device.redeliver", guid), ("revision.publish", "kiosk"),
        ("rollout.start", target), ("rollout.pause", target), ("rollout.resume", target),
        ("rollout.abort", target),
    ]  # fmt: skip


def test_vouchers_upload_and_tokens_follow_the_role(app: FastAPI, world: World) -> None:
    _, voucher = world.device()
    pem = vouchers_to_pem([voucher]).encode()
    http, csrf = browser(app, Role.OPERATOR)
    imported = http.post("/ui/vouchers", data={"csrf": csrf}, files={"file": ("v.pem", pem, "text/plain")})
    assert imported.status_code == 200 and "imported" in imported.text and str(voucher.guid) in imported.text
    duplicate = http.post("/ui/vouchers", data={"csrf": csrf}, files={"file": ("v.pem", pem, "text/plain")})
    assert duplicate.status_code == 422
    no_csrf = http.post("/ui/vouchers", files={"file": ("v.pem", pem, "text/plain")})
    assert no_csrf.status_code == 403
    assert ("test-operator", "voucher.import", str(voucher.guid)) in audit(app)
    assert http.post("/ui/tokens", data={"csrf": csrf, "name": "x"}).status_code == 403

    admin, admin_csrf = browser(app, Role.ADMIN)
    made = admin.post("/ui/tokens", data={"csrf": admin_csrf, "name": "night", "role": "viewer"})
    assert made.status_code == 200 and "not shown again" in made.text
    value = re.search(r'class="secret" data-copy="([^"]+)"', made.text)
    assert value is not None
    viewer = {"Authorization": f"Bearer {value.group(1)}"}
    assert TestClient(app).get("/api/v1/summary", headers=viewer).status_code == 200
    token_id = TestClient(app).get("/api/v1/tokens", headers=token(app, Role.ADMIN)).json()["items"]
    night = next(t["id"] for t in token_id if t["name"] == "night")
    assert admin.post("/ui/tokens", data={"csrf": admin_csrf, "name": ""}).status_code == 422
    revoked = admin.post(f"/ui/tokens/{night}/revoke", data={"csrf": admin_csrf})
    assert revoked.status_code == 303
    assert TestClient(app).get("/api/v1/summary", headers=viewer).status_code == 401
    assert admin.post("/ui/tokens/999999/revoke", data={"csrf": admin_csrf}).status_code == 404


def test_a_viewer_can_post_nothing(app: FastAPI) -> None:
    api = TestClient(app)
    operator = token(app, Role.OPERATOR)
    assert api.post("/api/v1/groups", json={"name": "kiosk"}, headers=operator).status_code == 201
    http, csrf = browser(app, Role.VIEWER)
    before = audit(app)
    for path in (
        "/ui/devices/00000000000000000000000000000001/labels",
        "/ui/devices/00000000000000000000000000000001/redeliver",
        "/ui/groups/kiosk/revisions",
        "/ui/groups/kiosk/rollouts",
        "/ui/rollouts/1/abort",
        "/ui/tokens",
        "/ui/tokens/1/revoke",
    ):
        answer = http.post(path, data={"csrf": csrf, "labels": "a=b", "image": IMAGE1, "revision": "1"})
        assert answer.status_code == 403 and "you signed in as viewer" in answer.text, path
    upload = http.post("/ui/vouchers", data={"csrf": csrf}, files={"file": ("v.pem", b"x", "text/plain")})
    assert upload.status_code == 403
    assert audit(app) == before
    page = http.get("/ui/groups/kiosk").text
    assert 'id="publish"' not in page and 'id="start-rollout"' not in page
