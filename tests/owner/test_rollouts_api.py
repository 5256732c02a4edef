"""The rollouts admin API on a real database (SQLite, and PostgreSQL when set): start,
a second start refused (409), pause, resume, abort, rollback, the group's target and
rollout policy, roles, audit, the status pages; and two runners racing on one
PostgreSQL rollout (no device in two batches, none skipped, no transition twice)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from fdo_server.auth import Role
from fdo_server.db import make_engine, unit_of_work
from fdo_server.sql import Database
from owner import rollout_engine
from owner.app import create_app
from owner.groups_tables import Device, DeviceEvent, Group, Revision
from owner.inventory import ensure_device
from owner.rollout_runner import advance
from owner.rollouts import Policy
from owner.rollouts_tables import Rollout, RolloutDevice
from tests.conftest import KeyPool, migrated
from tests.owner.helpers import make_world, token, ui_sign_in

IMAGE1 = "registry.example/os@sha256:" + "01" * 32
IMAGE2 = "registry.example/os@sha256:" + "02" * 32
IMAGE3 = "registry.example/os@sha256:" + "03" * 32
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def publish(client: TestClient, headers: dict[str, str], image: str) -> dict[str, Any]:
    r = client.post("/api/v1/groups/lab/revisions", headers=headers, json={"image": image})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def onboarded_devices(engine: Any, group: str, number: int, count: int) -> list[int]:
    """``count`` devices of ``group`` onboarded on revision ``number`` (as TO2 leaves them)."""
    ids = []
    with unit_of_work(engine) as db:
        g = db.exec(select(Group).where(Group.name == group)).one()
        rev = db.exec(select(Revision).where(Revision.group_id == g.id, Revision.number == number)).one()
        for i in range(count):
            device = ensure_device(db, uuid.uuid4().bytes, now=NOW)
            device.group_id, device.desired_revision_id, device.status = g.id, rev.id, "onboarded"
            device.serial = f"SN-{i + 1:02}"
            db.add(device)
            db.flush()
            ids.append(device.id or 0)
    return ids


def report(engine: Any, device_ids: list[int], number: int, image: str, state: str = "applied") -> None:
    """What a check-in records for each device: it holds revision ``number``."""
    with unit_of_work(engine) as db:
        for device_id in device_ids:
            device = db.get(Device, device_id)
            assert device is not None
            device.held_revision, device.held_generation = number, device.desired_generation
            device.apply_state = state
            device.booted_digest = image.rpartition("@")[2] if state == "applied" else None
            device.last_error_step = "000-bootc-switch" if state == "failed" else None
            device.last_error = "manifest unknown" if state == "failed" else None
            db.add(device)


@pytest.fixture
def app(key_pool: KeyPool, tmp_path: Path, database_url: str) -> FastAPI:
    world = make_world(key_pool, tmp_path)
    return create_app(world.settings(database_url, rollout_tick_seconds=3600), clock=lambda: NOW)


def test_rollout_api_start_conflict_pause_resume_abort_rollback_roles_audit(app: FastAPI) -> None:
    client = TestClient(app)
    operator, viewer = token(app, Role.OPERATOR), token(app, Role.VIEWER)
    engine = app.state.engine
    assert client.post("/api/v1/groups", headers=operator, json={"name": "lab"}).status_code == 201
    assert publish(client, operator, IMAGE1)["target_revision"] == 1  # no device yet: target moves
    ids = onboarded_devices(engine, "lab", 1, 6)
    second = publish(client, operator, IMAGE2)
    assert second["target_revision"] == 1 and second["behind"] == 6 and second["rollout"] is None
    assert client.get("/api/v1/groups/lab", headers=viewer).json()["current_revision"] == 1

    body = {"revision": 2, "batch_size": 3, "success_threshold": 100}
    assert client.post("/api/v1/groups/lab/rollouts", headers=viewer, json=body).status_code == 403
    assert client.post("/api/v1/groups/lab/rollouts", json=body).status_code == 401
    assert (
        client.post("/api/v1/groups/lab/rollouts", headers=operator, json={"revision": 9}).status_code == 404
    )
    bad = {"revision": 2, "batch_size": 3, "batch_percent": 10}
    assert client.post("/api/v1/groups/lab/rollouts", headers=operator, json=bad).status_code == 422
    r = client.post("/api/v1/groups/lab/rollouts", headers=operator, json=body)
    assert r.status_code == 201, r.text
    rollout = r.json()
    rid = rollout["id"]
    assert rollout["state"] == "running" and rollout["batches"] == 2 and rollout["from_revision"] == 1
    # Started in the request: the first batch is told at once.
    assert [(b["batch"], b["counts"]) for b in rollout["batch_counts"]] == [
        (1, {"updating": 3}),
        (2, {"pending": 3}),
    ]
    assert client.get("/api/v1/groups/lab", headers=viewer).json()["current_revision"] == 2
    conflict = client.post("/api/v1/groups/lab/rollouts", headers=operator, json=body)
    assert conflict.status_code == 409 and "active rollout" in conflict.json()["detail"]

    with Session(engine) as db:
        desired = {d.id: (d.desired_revision_id, d.desired_generation) for d in db.exec(select(Device)).all()}
    rev2 = desired[ids[0]][0]
    assert [desired[i][1] for i in ids] == [1, 1, 1, 0, 0, 0] and desired[ids[3]][0] != rev2

    assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=viewer).status_code == 403
    assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=operator).json()["state"] == "paused"
    assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=operator).status_code == 409
    report(engine, ids[:3], 2, IMAGE2)
    assert not advance(app.state.database, rid, NOW)  # paused: nothing moves
    resumed = client.post(f"/api/v1/rollouts/{rid}/resume", headers=operator).json()
    assert resumed["state"] == "running" and resumed["batch"] == 2
    assert resumed["counts"] == {"succeeded": 3, "updating": 3}

    listed = client.get(
        "/api/v1/rollouts", headers=viewer, params={"group": "lab", "state": "running"}
    ).json()
    assert [x["id"] for x in listed["items"]] == [rid] and listed["items"][0]["devices"] is None
    assert client.get("/api/v1/rollouts", headers=viewer, params={"state": "odd"}).status_code == 422
    assert client.get("/api/v1/rollouts/999", headers=viewer).status_code == 404

    aborted = client.post(f"/api/v1/rollouts/{rid}/abort", headers=operator).json()
    assert aborted["state"] == "aborted" and "aborted by test-operator" in aborted["reason"]
    assert client.get("/api/v1/groups/lab", headers=viewer).json()["current_revision"] == 1
    assert client.post(f"/api/v1/rollouts/{rid}/abort", headers=operator).status_code == 409

    back = client.post(f"/api/v1/rollouts/{rid}/rollback", headers=operator)
    assert back.status_code == 201, back.text
    back_body = back.json()
    assert (
        back_body["revision"] == 1
        and back_body["rollback_of"] == rid
        and back_body["options"]["batch_size"] == 3
    )
    # Devices that never left revision 1 with nothing applied yet are rolled out again;
    # the ones on revision 2 are sent revision 1 back.
    assert sum(back_body["counts"].values()) == 6

    device = client.get(f"/api/v1/devices/{_guid(engine, ids[0])}", headers=viewer).json()
    assert [(m["rollout"], m["state"]) for m in device["rollouts"]][-1] == (rid, "succeeded")

    # The group's rollout policy: a publish starts a rollout by itself.
    client.post(f"/api/v1/rollouts/{back_body['id']}/abort", headers=operator)
    policy = {
        "rollout_policy": {"batch_percent": 50, "success_threshold": 80, "window": "Mon-Sun 00:00-24:00"}
    }
    assert client.put("/api/v1/groups/lab/rollout-policy", headers=viewer, json=policy).status_code == 403
    r = client.put("/api/v1/groups/lab/rollout-policy", headers=operator, json=policy)
    assert r.status_code == 200 and r.json()["rollout_policy"]["batch_percent"] == 50
    bad_policy = {"rollout_policy": {"window": "whenever"}}
    assert (
        client.put("/api/v1/groups/lab/rollout-policy", headers=operator, json=bad_policy).status_code == 422
    )
    third = publish(client, operator, IMAGE3)
    assert third["rollout"] is not None and third["target_revision"] == 3
    auto = client.get(f"/api/v1/rollouts/{third['rollout']}", headers=viewer).json()
    assert auto["batches"] == 2 and auto["options"]["success_threshold"] == 80

    actions = [e["action"] for e in client.get("/api/v1/audit", headers=viewer).json()["items"]]
    assert Counter(a for a in actions if a.startswith("rollout.")) == {
        "rollout.start": 1, "rollout.pause": 1, "rollout.resume": 1, "rollout.abort": 2,
        "rollout.rollback": 1,
    }  # fmt: skip
    assert "group.rollout-policy" in actions

    # The status page shows the same.
    ui_sign_in(client, viewer["Authorization"].split()[1])
    page = client.get("/ui/rollouts")
    assert page.status_code == 200 and f'href="/ui/rollouts/{rid}"' in page.text and "aborted" in page.text
    assert '<span class="badge">succeeded 3</span>' in page.text
    detail = client.get(f"/ui/rollouts/{rid}")
    assert (
        detail.status_code == 200 and "<h2>Progress by batch</h2>" in detail.text and "SN-01" in detail.text
    )
    assert client.get("/ui/rollouts/12345").status_code == 404
    assert f'href="/ui/rollouts/{rid}"' in client.get(f"/ui/devices/{_guid(engine, ids[0])}").text


def test_failures_pause_with_reason_and_errors_shown(app: FastAPI) -> None:
    client = TestClient(app)
    operator = token(app, Role.OPERATOR)
    engine = app.state.engine
    client.post("/api/v1/groups", headers=operator, json={"name": "lab"})
    publish(client, operator, IMAGE1)
    ids = onboarded_devices(engine, "lab", 1, 5)
    publish(client, operator, IMAGE2)
    body = {"revision": 2, "batch_size": 5, "success_threshold": 80}
    rid = client.post("/api/v1/groups/lab/rollouts", headers=operator, json=body).json()["id"]
    report(engine, ids[:2], 2, IMAGE2, state="failed")
    assert advance(app.state.database, rid, NOW)
    shown = client.get(f"/api/v1/rollouts/{rid}", headers=operator).json()
    assert shown["state"] == "paused" and "SN-01, SN-02" in shown["reason"]
    errors = [d["error"] for d in shown["devices"] if d["state"] == "failed"]
    assert errors == [{"step": "000-bootc-switch", "text": "manifest unknown"}] * 2


def test_a_device_that_onboards_again_during_the_rollout_counts_once_it_applies(app: FastAPI) -> None:
    client = TestClient(app)
    operator = token(app, Role.OPERATOR)
    engine = app.state.engine
    client.post("/api/v1/groups", headers=operator, json={"name": "lab"})
    publish(client, operator, IMAGE1)
    ids = onboarded_devices(engine, "lab", 1, 2)
    publish(client, operator, IMAGE2)
    body = {"revision": 2, "batch_size": 2, "report_timeout": 3600}
    rid = client.post("/api/v1/groups/lab/rollouts", headers=operator, json=body).json()["id"]
    with unit_of_work(engine) as db:  # the rollout told both: generation 1
        assert {d.desired_generation for d in db.exec(select(Device)).all()} == {1}
        # One does a new TO2 meanwhile: it gets the target (revision 2), generation 0.
        again = db.get(Device, ids[0])
        assert again is not None
        again.desired_generation = 0
        db.add(again)
    report(engine, ids, 2, IMAGE2)
    assert advance(app.state.database, rid, NOW)
    shown = client.get(f"/api/v1/rollouts/{rid}", headers=operator).json()
    assert shown["state"] == "completed", shown
    assert {d["state"] for d in shown["devices"]} == {"succeeded"}


def _guid(engine: Any, device_id: int) -> str:
    with Session(engine) as db:
        device = db.get(Device, device_id)
        assert device is not None
        return str(uuid.UUID(bytes=device.guid))


@pytest.mark.skipif(
    not __import__("os").environ.get("FDO_TEST_POSTGRES_URL"),
    reason="two runners racing need PostgreSQL (FDO_TEST_POSTGRES_URL unset)",
)
def test_two_runners_racing_on_postgresql_apply_each_transition_once(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the race runs on PostgreSQL only")
    url = migrated(database_url, "owner")
    engine = make_engine(url)  # the operator's and the devices'
    racers = [Database(url) for _ in range(2)]  # two replicas' runners, on the driver
    with unit_of_work(engine) as db:
        group = Group(name="race")
        db.add(group)
        db.flush()
        revs = [
            Revision(group_id=group.id or 0, number=n, image=img) for n, img in ((1, IMAGE1), (2, IMAGE2))
        ]
        db.add_all(revs)
        db.flush()
        group.target_revision_id = revs[0].id
        for _ in range(30):
            device = ensure_device(db, uuid.uuid4().bytes, now=NOW)
            device.group_id, device.desired_revision_id = group.id, revs[0].id
            db.add(device)
        db.flush()
        policy = Policy(batch_size=5, success_threshold=80, max_unavailable=2)
        rid = rollout_engine.start(db, group, revs[1], policy, who="test", now=NOW).id
        assert rid is not None
    applied = [0, 0]
    stop = threading.Event()

    def runner_loop(index: int) -> None:
        while not stop.is_set():
            if advance(racers[index], rid, NOW):
                applied[index] += 1

    def devices_loop() -> None:  # devices report what the rollout sent them
        while not stop.is_set():
            with Session(engine) as db:
                told = db.exec(
                    select(RolloutDevice.device_id).where(
                        RolloutDevice.rollout_id == rid, RolloutDevice.state == "updating"
                    )
                ).all()
            report(engine, list(told), 2, IMAGE2)

    threads = [threading.Thread(target=runner_loop, args=(i,)) for i in (0, 1)]
    threads.append(threading.Thread(target=devices_loop))
    for t in threads:
        t.start()
    try:
        deadline = __import__("time").monotonic() + 60
        while __import__("time").monotonic() < deadline:
            with Session(engine) as db:
                rollout = db.get(Rollout, rid)
                assert rollout is not None
                if rollout.state != "running":
                    break
            __import__("time").sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    with Session(engine) as db:
        rollout = db.get(Rollout, rid)
        assert rollout is not None and rollout.state == "completed", rollout
        members = db.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)).all()
        devices = db.exec(select(Device).where(Device.group_id == group.id).order_by(col(Device.id))).all()
        events = db.exec(select(DeviceEvent).where(DeviceEvent.kind == "desired")).all()
    # Every device in exactly one batch, batches as planned at start, none skipped.
    assert sorted(m.device_id for m in members) == sorted(d.id for d in devices if d.id)
    assert {m.device_id: m.batch for m in members} == {d.id: i // 5 + 1 for i, d in enumerate(devices)}
    assert all(m.state == "succeeded" for m in members)
    # Each device was told once; each transition applied once (the version counts them).
    assert all(d.desired_generation == 1 for d in devices)
    assert Counter(e.device_id for e in events) == {d.id: 1 for d in devices}
    assert rollout.version == applied[0] + applied[1] and sum(applied) > 6
    engine.dispose()
    for racer in racers:
        racer.dispose()


def test_migration_sets_each_groups_target_to_its_newest_revision(database_url: str) -> None:
    from sqlalchemy import text

    from fdo_server import migrate

    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "owner", "2026_12_03_device_checkin")  # before rollouts
        with engine.begin() as conn:
            for gid, name in ((1, "a"), (2, "b")):
                conn.execute(
                    text(
                        "INSERT INTO owner_group (id, name, description, priority, labels, members,"
                        " is_default, created_at, created_by) VALUES (:id, :name, '', 0, '{}', '[]',"
                        " false, :at, 'x')"
                    ),
                    {"id": gid, "name": name, "at": NOW},
                )
            for rid, number in ((10, 1), (11, 2), (12, 3)):
                conn.execute(
                    text(
                        "INSERT INTO owner_revision (id, group_id, number, image, transport, apply_mode,"
                        " config, has_registry_auth, secret_paths, published_at, published_by)"
                        " VALUES (:id, 1, :n, :img, 'registry', 'switch', '{}', false, '[]', :at, 'x')"
                    ),
                    {"id": rid, "n": number, "img": IMAGE1, "at": NOW},
                )
        migrate.upgrade(engine, "owner")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, target_revision_id FROM owner_group")).all()
        targets: dict[str, int | None] = {str(name): target for name, target in rows}
        assert targets == {"a": 12, "b": None}
    finally:
        engine.dispose()
