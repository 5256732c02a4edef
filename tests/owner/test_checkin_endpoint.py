"""``POST /device/v1/checkin`` on the fast path (owner.checkin_endpoint): the same answers
as the documented route, for good and bad requests, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from fdo_server.auth import Role
from fdo_server.db import unit_of_work
from fdo_server.sql import Database
from owner import checkin
from owner.app import create_app
from owner.checkin_endpoint import MAX_BODY, DeviceEndpoint
from owner.groups_tables import Device, DeviceEvent
from tests.conftest import KeyPool
from tests.owner.helpers import make_world, token

DIGEST = "sha256:" + "ab" * 32
REFUSED = "device credential refused"


@pytest.fixture
def app(key_pool: KeyPool, tmp_path: Path, database_url: str) -> Iterator[FastAPI]:
    built = create_app(make_world(key_pool, tmp_path).settings(database_url))
    yield built
    built.state.database.dispose()  # the clients run no lifespan: close its connections here


def _device(app: FastAPI) -> tuple[int, str]:
    with unit_of_work(app.state.engine) as db:
        device = Device(guid=os.urandom(16), status="onboarded")
        db.add(device)
        db.flush()
        assert device.id is not None
        return device.id, checkin.issue_secret(device.id)


def _body(seq: int, **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "booted_digest": DIGEST, "state": "applied", **extra}


def _record(app: FastAPI, device_id: int) -> tuple[Device, int]:
    with unit_of_work(app.state.engine) as db:
        device = db.get(Device, device_id)
        assert device is not None
        events = db.exec(select(DeviceEvent).where(DeviceEvent.device_id == device_id)).all()
        db.expunge(device)
        return device, len(events)


def test_a_check_in_is_recorded_and_rotates_the_secret(app: FastAPI) -> None:
    device_id, secret = _device(app)
    http = TestClient(app)
    resp = http.post("/device/v1/checkin", json=_body(1), headers={"Authorization": f"Bearer {secret}"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["action"] == "none" and answer["interval"] == 300 and "desired" not in answer
    assert answer["next_secret"].startswith(f"fdc1.{device_id}.")
    device, events = _record(app, device_id)
    assert device.checkin_seq == 1 and device.booted_digest == DIGEST and device.status == "applied"
    assert events == 1
    # The next secret works; the replayed sequence number does not.
    again = {"Authorization": f"Bearer {answer['next_secret']}"}
    assert http.post("/device/v1/checkin", json=_body(1), headers=again).status_code == 401
    assert http.post("/device/v1/checkin", json=_body(2), headers=again).status_code == 200


@pytest.mark.parametrize(
    ("headers", "body", "status", "detail"),
    [
        ({}, json.dumps(_body(1)), 401, "missing device credential"),
        ({"Authorization": "Basic abc"}, json.dumps(_body(1)), 401, "missing device credential"),
        (
            {"Authorization": "Bearer fdc1.1." + "A" * 43},
            json.dumps(_body(1)),
            401,
            "device credential refused",
        ),
        ({"Authorization": "Bearer not-a-secret"}, json.dumps(_body(1)), 401, REFUSED),
        ({"Authorization": "Bearer SECRET"}, "{not json", 422, None),
        ({"Authorization": "Bearer SECRET"}, json.dumps({"seq": 0}), 422, None),
        ({"Authorization": "Bearer SECRET"}, json.dumps([1, 2]), 422, None),
        ({"Authorization": "Bearer SECRET"}, json.dumps(_body(1, state="exploded")), 422, None),
        ({"Authorization": "Bearer SECRET"}, json.dumps(_body(1, error="\ud800")), 422, None),
        ({"Authorization": "Bearer SECRET"}, "x" * (MAX_BODY + 1), 413, None),
    ],
)
def test_bad_requests_get_the_routes_answers_and_record_nothing(
    app: FastAPI, headers: dict[str, str], body: str, status: int, detail: str | None
) -> None:
    device_id, secret = _device(app)
    sent = {k: v.replace("SECRET", secret) for k, v in headers.items()}
    resp = TestClient(app).post(
        "/device/v1/checkin", content=body.encode("utf-8", "surrogatepass"), headers=sent
    )
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    if status == 401:
        assert resp.headers["www-authenticate"] == "Bearer" and resp.json() == {"detail": detail}
    if status == 422:
        assert all(e["loc"][0] == "body" for e in resp.json()["detail"])
    device, events = _record(app, device_id)
    if status != 200:
        assert device.checkin_seq == 0 and device.last_checkin_at is None and events == 0


def test_an_admin_token_is_not_a_check_in_credential(app: FastAPI) -> None:
    device_id, _ = _device(app)
    resp = TestClient(app).post("/device/v1/checkin", json=_body(1), headers=token(app, Role.ADMIN))
    assert resp.status_code == 401
    assert _record(app, device_id)[0].checkin_seq == 0


def test_other_routes_still_reach_the_app(app: FastAPI) -> None:
    http = TestClient(app)
    assert http.get("/device/v1/checkin").status_code == 405
    assert http.get("/health").json() == {"status": "ok"}
    assert "/device/v1/checkin" in http.get("/openapi.json").json()["paths"]


def test_an_unreachable_database_is_503_with_retry_after() -> None:
    broken = Database("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1")
    endpoint = DeviceEndpoint(
        FastAPI(),
        database=broken,
        clock=lambda: datetime.now(UTC),
        interval=300,
        inline=True,
        max_request_body=1024 * 1024,
    )
    try:
        resp = TestClient(endpoint).post(
            "/device/v1/checkin", json=_body(1), headers={"Authorization": "Bearer fdc1.1." + "A" * 43}
        )
    finally:
        broken.dispose()
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5", resp.text
    assert "unavailable" in resp.json()["detail"]
