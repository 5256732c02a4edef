"""``POST /device/v1/report`` and ``/api/v1/report`` on the fast path
(owner.checkin_endpoint.DeviceEndpoint): byte for byte the answers of the documented
routes, for good and bad requests, on SQLite and PostgreSQL.

Each request goes to two owner apps from :func:`owner.app.create_app` on databases set
up alike: one as it is served, one without the endpoint (so its routes, middleware and
exception handlers answer); status, header fields and body must be the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlmodel import select

from fdo_server.db import unit_of_work
from fdo_server.planes import include_device_router
from fdo_server.service import service_app
from fdo_server.sql import Database
from owner import checkin, inventory
from owner.app import create_app
from owner.assign import issue_report_token
from owner.checkin_endpoint import DeviceEndpoint
from owner.groups_tables import Device, DeviceEvent
from owner.report_api import device_router, report_router
from tests.conftest import KeyPool, database_backends, open_database
from tests.owner.helpers import World, make_world

DIGEST = "sha256:" + "ab" * 32
LIMIT = 1024 * 1024  # the owner's max_request_body, which BodyLimit gives these routes
JSON = {"Content-Type": "application/json"}


@dataclass
class Owner:
    """An owner app, its client, and a device with a check-in secret and a report token."""

    app: FastAPI
    http: TestClient
    device_id: int
    secret: str
    report_token: str

    def post(self, path: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> Response:
        sent = {
            k: v.replace("SECRET", self.secret).replace("REPORT_TOKEN", self.report_token)
            for k, v in headers.items()
        }
        resp: Response = self.http.post(path, content=body, headers=sent)
        return resp

    def record(self) -> tuple[str, list[str]]:
        """The device's status and its timeline events' kinds."""
        with unit_of_work(self.app.state.engine) as db:
            device = db.get(Device, self.device_id)
            assert device is not None
            events = db.exec(select(DeviceEvent).where(DeviceEvent.device_id == self.device_id)).all()
            return device.status, [e.kind for e in events]


def _owner(app: FastAPI) -> Owner:
    with unit_of_work(app.state.engine) as db:
        device = inventory.ensure_device(db, os.urandom(16))
        device.status = "onboarded"
        assert device.id is not None
        secret = checkin.issue_secret(device.id)
        report_token = issue_report_token(db, device)
        device_id = device.id
    return Owner(app, TestClient(app), device_id, secret, report_token)


class _Clock:
    """The apps' clock; ``broken`` makes it raise."""

    broken = False

    def __call__(self) -> datetime:
        if self.broken:
            raise RuntimeError("the clock broke")
        return datetime.now(UTC)


CLOCK = _Clock()


def _is_endpoint(cls: object) -> bool:
    return cls is DeviceEndpoint


@contextmanager
def _app_pair(world: World, served_url: str, routed_url: str) -> Iterator[tuple[FastAPI, FastAPI]]:
    """``(served, routed)``: the owner app as served, and the same app without the endpoint
    (their database connections closed afterwards: the clients run no lifespan)."""
    served = create_app(world.settings(served_url), clock=CLOCK)
    routed = create_app(world.settings(routed_url), clock=CLOCK)
    try:
        assert _is_endpoint(served.user_middleware[0].cls)
        routed.user_middleware = [m for m in routed.user_middleware if not _is_endpoint(m.cls)]
        yield served, routed
    finally:
        served.state.database.dispose()
        routed.state.database.dispose()


@pytest.fixture
def owners(key_pool: KeyPool, tmp_path: Path, database_factory: Any) -> Iterator[tuple[Owner, Owner]]:
    """The apps of :func:`_app_pair` on fresh databases of their own, each with a device."""
    world = make_world(key_pool, tmp_path)
    with _app_pair(world, database_factory("served"), database_factory("routed")) as (served, routed):
        yield _owner(served), _owner(routed)


@pytest.fixture(scope="module", params=database_backends())
def apps(
    request: pytest.FixtureRequest, key_pool: KeyPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FastAPI, FastAPI]]:
    """The apps of :func:`_app_pair`, once per module and database, for the tests that
    only send requests (each takes a device of its own: :func:`devices`)."""
    folder = tmp_path_factory.mktemp(f"device-endpoints-{request.param}")
    with (
        open_database(request.param, folder, "served") as served_url,
        open_database(request.param, folder, "routed") as routed_url,
        _app_pair(make_world(key_pool, folder), served_url, routed_url) as pair,
    ):
        yield pair


@pytest.fixture
def devices(apps: tuple[FastAPI, FastAPI]) -> tuple[Owner, Owner]:
    """``(served, routed)`` of :func:`apps`, each with a new onboarded device."""
    return _owner(apps[0]), _owner(apps[1])


def _same(served: Response, routed: Response) -> None:
    assert served.status_code == routed.status_code, (served.text, routed.text)
    assert served.content == routed.content
    assert served.headers.multi_items() == routed.headers.multi_items()


def _report(**fields: Any) -> bytes:
    return json.dumps({"booted_digest": DIGEST, "revision": 1, **fields}).encode()


BEARER = {"Authorization": "Bearer SECRET", **JSON}


def test_a_report_is_recorded_alike(owners: tuple[Owner, Owner]) -> None:
    served, routed = owners
    for owner in owners:
        assert owner.record() == ("onboarded", ["created"])
    answers = [o.post("/device/v1/report", _report(detail="booted fine"), BEARER) for o in owners]
    _same(*answers)
    assert answers[0].status_code == 200 and answers[0].json() == {"status": "applied"}
    assert served.record() == routed.record() == ("applied", ["created", "applied"])
    # Unhealthy: failed, through the deprecated alias and with a pre-check-in report token.
    token = {"Authorization": "Bearer REPORT_TOKEN", **JSON}
    answers = [o.post("/api/v1/report", _report(healthy=False), token) for o in owners]
    _same(*answers)
    assert answers[0].json() == {"status": "failed"}
    assert served.record() == routed.record() == ("failed", ["created", "applied", "failed"])


BAD = "{not json"
REQUESTS: list[tuple[str, dict[str, str], bytes, int | None]] = [
    # No credential, another scheme, refused secrets, an admin-looking token.
    ("no credential", JSON, _report(), 401),
    ("basic", {"Authorization": "Basic abc", **JSON}, _report(), 401),
    ("empty bearer", {"Authorization": "Bearer  ", **JSON}, _report(), 401),
    ("refused secret", {"Authorization": "Bearer fdc1.1." + "A" * 43, **JSON}, _report(), 401),
    ("unknown token", {"Authorization": "Bearer not-a-secret", **JSON}, _report(), 401),
    # Not JSON, or not validating: 422 before the credential is looked at.
    ("invalid json", BEARER, BAD.encode(), 422),
    ("invalid json, no credential", JSON, BAD.encode(), 422),
    ("truncated json", BEARER, b'{"healthy": tr', 422),
    ("empty body", BEARER, b"", 422),
    ("not utf-8", BEARER, b'{"detail": "\xff"}', 400),
    ("no content type", {"Authorization": "Bearer SECRET"}, _report(), 422),
    ("text/plain", {"Authorization": "Bearer SECRET", "Content-Type": "text/plain"}, _report(), 422),
    (
        "json with charset",
        {"Authorization": "Bearer SECRET", "Content-Type": "application/json; charset=utf-8"},
        _report(),
        200,
    ),
    (
        "+json",
        {"Authorization": "Bearer SECRET", "Content-Type": "application/merge-patch+json"},
        _report(),
        200,
    ),
    ("bad digest", BEARER, _report(booted_digest="sha256:nope"), 422),
    ("non-ascii input", BEARER, _report(booted_digest="sha256:é"), 422),
    ("negative revision", BEARER, _report(revision=-1), 422),
    ("unknown field", BEARER, _report(extra=1, _sa_hidden=2), 422),
    ("detail too long", BEARER, _report(detail="x" * 4001), 422),
    ("a list", BEARER, b'[{"_sa_x": 1, "y": 2}]', 422),
    ("a string", BEARER, b'"report"', 422),
    ("several errors, no credential", JSON, _report(revision="x", healthy="maybe"), 422),
    # Each field's lax conversions and refusals (pydantic's, on both paths).
    ("revision as text", BEARER, _report(revision=" 7 "), 200),
    ("revision as a whole float", BEARER, _report(revision=1.0), 200),
    ("revision with a fraction", BEARER, _report(revision=1.5), 422),
    ("revision huge", BEARER, _report(revision=10**30), 200),
    ("revision in underscores", BEARER, _report(revision="1_0"), 200),
    ("revision null", BEARER, _report(revision=None), 200),
    ("revision a list", BEARER, _report(revision=[1]), 422),
    ("revision true", BEARER, _report(revision=True), 200),
    ("revision unparsable text", BEARER, _report(revision="0x10"), 422),
    ("revision too many digits", BEARER, _report(revision="9" * 4301), 422),
    ("healthy as yes", BEARER, _report(healthy="yes"), 200),
    ("healthy as 0", BEARER, _report(healthy=0), 200),
    ("healthy as 2", BEARER, _report(healthy=2), 422),
    ("healthy as 2.5", BEARER, _report(healthy=2.5), 422),
    ("healthy null", BEARER, _report(healthy=None), 422),
    ("healthy an object", BEARER, _report(healthy={"a": 1}), 422),
    ("digest null", BEARER, _report(booted_digest=None), 200),
    ("digest in capitals", BEARER, _report(booted_digest=DIGEST.upper()), 422),
    ("digest and a newline", BEARER, _report(booted_digest=DIGEST + "\n"), 422),
    ("digest a number", BEARER, _report(booted_digest=5), 422),
    ("detail null", BEARER, _report(detail=None), 422),
    ("detail non-ascii at the limit", BEARER, _report(detail="é" * 4000), 200),
    ("detail non-ascii over the limit", BEARER, _report(detail="😀" * 4001), 422),
    ("detail a lone surrogate", BEARER, b'{"detail": "\\ud800"}', 422),
    ("nested junk", BEARER, _report(x={"y": [1, {"z": None}], "_sa_k": 2}), 422),
    ("an empty object", BEARER, b"{}", 200),
    ("null", BEARER, b"null", 422),
    ("a number", BEARER, b"5", 422),
    ("true", BEARER, b"true", 422),
    ("everything wrong", BEARER, _report(booted_digest=1, revision=-2, healthy="x", detail=[], y=0), 422),
    # A NUL in the detail (stored as JSON, on both databases).
    ("nul", BEARER, _report(detail="a\u0000b"), None),
    # The app's body limit for these routes (fdo_server.body_limit).
    ("over the limit", BEARER, b"x" * (LIMIT + 1), 413),
    ("at the limit", BEARER, b" " * (LIMIT - 2) + b"{}", 200),
]


@pytest.mark.parametrize("path", ["/device/v1/report", "/api/v1/report"])
@pytest.mark.parametrize(("case", "headers", "body", "status"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_requests_get_the_routes_answers(
    devices: tuple[Owner, Owner],
    path: str,
    case: str,
    headers: dict[str, str],
    body: bytes,
    status: int | None,
) -> None:
    answers = [o.post(path, body, headers) for o in devices]
    _same(*answers)
    if status is not None:
        assert answers[0].status_code == status, answers[0].text
    if answers[0].status_code != 200:
        assert devices[0].record() == devices[1].record() == ("onboarded", ["created"])


def test_a_value_the_database_refuses_is_the_apps_422(owners: tuple[Owner, Owner]) -> None:
    """PostgreSQL refuses a NUL in text (psycopg's DataError, raised on the driver's
    cursor): both paths answer it as the app's handlers answer a refused value."""
    if not owners[0].app.state.settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite stores a NUL")
    body = json.dumps({"seq": 1, "error": "a\u0000b"}).encode()
    answers = []
    for owner in owners:
        headers = {"Authorization": f"Bearer {owner.secret}", **JSON}
        answers.append(owner.http.post("/device/v1/checkin", content=body, headers=headers))
    _same(*answers)
    assert answers[0].status_code == 422
    assert answers[0].json()["detail"].startswith("a value cannot be stored: PostgreSQL text fields")


def test_an_error_the_app_does_not_handle_is_its_500(owners: tuple[Owner, Owner]) -> None:
    """An exception that is no database error (the clock fails) goes up to the app's
    error middleware on both paths, a plain 500."""
    CLOCK.broken = True
    try:
        for path, body in [
            ("/device/v1/checkin", json.dumps({"seq": 1}).encode()),
            ("/api/v1/report", _report()),
        ]:
            answers = []
            for owner in owners:
                headers = {"Authorization": f"Bearer {owner.secret}", **JSON}
                client = TestClient(owner.app, raise_server_exceptions=False)
                answers.append(client.post(path, content=body, headers=headers))
            _same(*answers)
            assert answers[0].status_code == 500 and answers[0].text == "Internal Server Error"
    finally:
        CLOCK.broken = False


def test_a_chunked_body_over_the_limit_is_refused_alike(owners: tuple[Owner, Owner]) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(LIMIT // 65536 + 1):
            yield b"x" * 65536

    answers = [o.post("/device/v1/report", chunks(), BEARER) for o in owners]
    _same(*answers)
    assert answers[0].status_code == 413 and answers[0].headers["connection"] == "close"


def test_other_methods_still_reach_the_routes(owners: tuple[Owner, Owner]) -> None:
    for path in ("/device/v1/report", "/api/v1/report", "/device/v1/report/"):
        answers = [o.http.get(path) for o in owners]
        _same(*answers)
    assert owners[0].http.get("/device/v1/report").status_code == 405
    assert owners[0].http.put("/api/v1/report", content=_report()).status_code == 405


def test_the_endpoint_serves_without_the_routes(
    key_pool: KeyPool, tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    """Mounted in front of an app without the routes, the endpoint answers on its own."""
    app = create_app(make_world(key_pool, tmp_path).settings(database_url))
    request.addfinalizer(app.state.engine.dispose)
    owner = _owner(app)
    endpoint = DeviceEndpoint(
        FastAPI(),
        database=app.state.database,
        clock=lambda: datetime.now(UTC),
        interval=300,
        inline=False,  # through run_in_thread
        max_request_body=LIMIT,
    )
    resp = TestClient(endpoint).post(
        "/device/v1/report", content=_report(), headers={"Authorization": f"Bearer {owner.secret}", **JSON}
    )
    assert resp.status_code == 200 and resp.json() == {"status": "applied"}
    assert owner.record() == ("applied", ["created", "applied"])
    assert TestClient(endpoint).get("/device/v1/report").status_code == 404


def test_an_unreachable_database_is_the_apps_503(
    key_pool: KeyPool, tmp_path: Path, database_url: str
) -> None:
    unreachable = Database("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1")
    settings = make_world(key_pool, tmp_path).settings(database_url)
    routed = service_app("owner", settings, unreachable, {})
    routed.state.clock = lambda: datetime.now(UTC)
    include_device_router(routed, report_router(), prefix="/api/v1")
    include_device_router(routed, device_router(), prefix="/device/v1")
    served = DeviceEndpoint(
        FastAPI(),
        database=unreachable,
        clock=lambda: datetime.now(UTC),
        interval=300,
        inline=True,
        max_request_body=LIMIT,
    )
    headers = {"Authorization": "Bearer fdc1.1." + "A" * 43, **JSON}
    try:
        for path, body in [
            ("/device/v1/report", _report()),
            ("/api/v1/report", _report()),
            ("/device/v1/checkin", json.dumps({"seq": 1}).encode()),
        ]:
            answers = [TestClient(app).post(path, content=body, headers=headers) for app in (served, routed)]
            _same(*answers)
            assert answers[0].status_code == 503 and answers[0].headers["retry-after"] == "5"
    finally:
        unreachable.dispose()
