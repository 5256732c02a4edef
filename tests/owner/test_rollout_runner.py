"""The rollout runner sleeps until something is due (owner/rollout_runner.py), on a real
database (SQLite, and PostgreSQL when set), with its waits recorded instead of timed:
with no rollout running it waits with no timeout at all, and a wake starts a pass; with
one running it waits until the earliest report timeout or window opening, never longer
than its safety interval (``12 × tick``) and never a short fixed tick; once the rollout
is over it waits with no timeout again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fdo_server.auth import Role
from owner.app import create_app
from owner.rollout_runner import SAFETY_TICKS, RolloutRunner
from tests.conftest import KeyPool
from tests.owner.helpers import make_world, token
from tests.owner.test_rollouts_api import IMAGE1, IMAGE2, onboarded_devices, publish, report

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday
TICK = 3600.0  # a safety interval (12 h) longer than anything due below


@pytest.fixture
def app(key_pool: KeyPool, tmp_path: Path, database_url: str) -> FastAPI:
    world = make_world(key_pool, tmp_path)
    return create_app(world.settings(database_url), clock=lambda: NOW)


def runner(app: FastAPI, *, tick: float = TICK, now: datetime = NOW) -> RolloutRunner:
    return RolloutRunner(app.state.database, tick=tick, clock=lambda: now)


def start(app: FastAPI, devices: int, **options: Any) -> tuple[TestClient, dict[str, str], list[int], int]:
    client = TestClient(app)
    operator = token(app, Role.OPERATOR)
    assert client.post("/api/v1/groups", headers=operator, json={"name": "lab"}).status_code == 201
    publish(client, operator, IMAGE1)
    ids = onboarded_devices(app.state.engine, "lab", 1, devices)
    publish(client, operator, IMAGE2)
    r = client.post("/api/v1/groups/lab/rollouts", headers=operator, json={"revision": 2, **options})
    assert r.status_code == 201, r.text
    return client, operator, ids, int(r.json()["id"])


def test_an_idle_runner_waits_with_no_timeout_until_woken(app: FastAPI) -> None:
    waits: list[float | None] = []
    passes = threading.Semaphore(0)

    def wait(event: threading.Event, timeout: float | None) -> bool:
        waits.append(timeout)
        passes.release()
        return event.wait(timeout)

    rollouts = RolloutRunner(app.state.database, tick=5.0, clock=lambda: NOW, wait=wait)
    rollouts.start()
    try:
        assert passes.acquire(timeout=30)
        rollouts.wake()  # what a start, resume or settling check-in in this process does
        assert passes.acquire(timeout=30)
    finally:
        rollouts.stop()
    assert waits[:2] == [None, None]


def test_a_running_rollout_is_due_at_its_report_timeout(app: FastAPI) -> None:
    client, operator, ids, rid = start(app, 4, batch_size=2, report_timeout=120)
    assert runner(app).run_once() == 120.0  # the first batch started at NOW (in the request)
    later = NOW + timedelta(seconds=100)
    assert runner(app, now=later).run_once() == 20.0
    # A short tick only caps it at the safety interval (12 ticks), it is no fixed tick.
    assert runner(app, tick=5.0).run_once() == SAFETY_TICKS * 5.0
    report(app.state.engine, ids[:2], 2, IMAGE2)  # the first batch applied: the second starts
    assert runner(app, now=later).run_once() == 120.0
    report(app.state.engine, ids[2:], 2, IMAGE2)
    assert runner(app, now=later).run_once() is None  # completed: nothing runs
    assert client.get(f"/api/v1/rollouts/{rid}", headers=operator).json()["state"] == "completed"


def test_a_rollout_waiting_for_its_window_is_due_when_it_opens(app: FastAPI) -> None:
    _, _, _, rid = start(app, 2, batch_size=2, window="Wed 14:00-15:00", report_timeout=600)
    assert runner(app).run_once() == 2 * 3600.0  # nobody started: the window opens at 14:00
    opened = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    assert runner(app, now=opened).run_once() == 600.0  # both started: their report timeout


def test_a_paused_rollout_is_not_due(app: FastAPI) -> None:
    client, operator, _, rid = start(app, 2, batch_size=1)
    assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=operator).status_code == 200
    assert runner(app).run_once() is None


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    assert "fdo-owner-rollouts" not in {t.name for t in threading.enumerate()} - before
