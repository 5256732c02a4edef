"""A device's desired revision (owner/desired.py, and owner/inventory.py's ORM entry
that the operator's redelivery calls) on a real database (SQLite, and PostgreSQL when
set): which revision each form picks, the generation bumped on every call, the
``desired`` timeline event, the refusals (409), and the ORM's device object reloaded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select

from fdo_server.auth import Role
from fdo_server.db import unit_of_work
from fdo_server.sql import message_scope
from owner import desired
from owner.app import create_app
from owner.desired import DesiredError
from owner.groups_tables import Device, DeviceEvent, Group
from owner.inventory import ensure_device, set_desired
from tests.conftest import KeyPool
from tests.owner.helpers import make_world, token
from tests.owner.test_rollouts_api import IMAGE1, IMAGE2, publish

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def app(key_pool: KeyPool, tmp_path: Path, database_url: str) -> FastAPI:
    world = make_world(key_pool, tmp_path)
    return create_app(world.settings(database_url), clock=lambda: NOW)


def _device(app: FastAPI, group: str | None) -> tuple[int, str]:
    """A device (in ``group``, with no desired revision yet): its id and GUID."""
    guid = uuid.uuid4()
    with unit_of_work(app.state.engine) as db:
        device = ensure_device(db, guid.bytes, now=NOW)
        if group is not None:
            device.group_id = db.exec(select(Group).where(Group.name == group)).one().id
            db.add(device)
        db.flush()
        assert device.id is not None
        return device.id, guid.hex


def _desired(app: FastAPI, device_id: int) -> tuple[list[dict[str, Any]], int]:
    """The device's ``desired`` events' details and its desired generation."""
    with unit_of_work(app.state.engine) as db:
        events = db.exec(
            select(DeviceEvent)
            .where(DeviceEvent.device_id == device_id, DeviceEvent.kind == "desired")
            .order_by(col(DeviceEvent.id))
        ).all()
        device = db.get(Device, device_id)
        assert device is not None
        return [e.detail for e in events], device.desired_generation


def test_redeliver_picks_the_revision_bumps_the_generation_and_refuses_what_it_cannot(app: FastAPI) -> None:
    client = TestClient(app)
    operator = token(app, Role.OPERATOR)
    assert client.post("/api/v1/groups", headers=operator, json={"name": "lab"}).status_code == 201
    publish(client, operator, IMAGE1)
    publish(client, operator, IMAGE2)  # no device onboarded: the target moves to revision 2
    device_id, guid = _device(app, "lab")

    def redeliver(body: dict[str, Any] | None) -> Any:
        return client.post(f"/api/v1/devices/{guid}/redeliver", headers=operator, json=body)

    assert redeliver(None).status_code == 200  # no desired revision yet: the group's target
    assert redeliver({"revision": 1}).status_code == 200
    assert redeliver({"revision": None}).status_code == 200  # its desired revision again
    missing = redeliver({"revision": 9})
    assert missing.status_code == 409 and "no such revision" in missing.json()["detail"]
    who = "test-operator"
    assert _desired(app, device_id) == (
        [
            {"revision": 2, "generation": 1, "by": who},
            {"revision": 1, "generation": 2, "by": who},
            {"revision": 1, "generation": 3, "by": who},
        ],
        3,
    )
    _, loose = _device(app, None)
    alone = client.post(f"/api/v1/devices/{loose}/redeliver", headers=operator, json={"revision": 1})
    assert alone.status_code == 409 and alone.json()["detail"] == "the device has no group"


def test_the_orm_entry_reloads_the_device_and_the_driver_one_reports_the_generation(app: FastAPI) -> None:
    client = TestClient(app)
    operator = token(app, Role.OPERATOR)
    assert client.post("/api/v1/groups", headers=operator, json={"name": "lab"}).status_code == 201
    publish(client, operator, IMAGE1)
    device_id, _ = _device(app, "lab")
    with unit_of_work(app.state.engine) as db:
        device = db.get(Device, device_id)
        assert device is not None and device.desired_generation == 0
        revision = set_desired(db, device, 1, now=NOW, who="a")
        assert (revision.number, device.desired_revision_id, device.desired_generation) == (1, revision.id, 1)
        with pytest.raises(DesiredError, match="no such revision"):
            set_desired(db, device, 2, now=NOW, who="a")
    with message_scope(app.state.database):
        again = desired.set_desired(device_id, now=NOW, who="b")
        assert (again.number, again.generation) == (1, 2)
        with pytest.raises(desired.DesiredError, match="no such revision"):
            desired.set_desired(device_id, 2, now=NOW)
    assert _desired(app, device_id)[1] == 2
