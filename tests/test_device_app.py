"""The device plane without a web framework (:mod:`fdo_server.device_app`) answers every
device-plane request as the service's FastAPI app does.

Both apps of a service are built on the same database and sent the same requests, each
through its own lifespan: the probes, an FDO message (a real TO1 and TO0 of a device
the rendezvous knows, and refused ones), the answers of the routing (405, 307, 404), the
body limit; the status, the body and the header fields must match (``Allow`` as a set:
Starlette joins a set of methods). Then what only the device app does itself: its
lifespan, an unanswered exception.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fdo.crypto import generate_key, make_ca, private_key_to_pem
from fdo.di.device import DIDevice
from fdo.messages import ErrorMessage
from fdo.to1.device import TO1Device
from fdo_server.body_limit import route_pattern
from fdo_server.db import unit_of_work
from fdo_server.device_app import DeviceApp
from fdo_server.session_model import FdoSession
from manufacturer.app import create_app as manufacturer_app
from manufacturer.app import create_device_app as manufacturer_device_app
from manufacturer.settings import ManufacturerSettings
from manufacturer.tables import Voucher
from owner import checkin, inventory
from owner.app import create_app as owner_app
from owner.app import create_device_app as owner_device_app
from rendezvous.app import create_app as rendezvous_app
from rendezvous.app import create_device_app as rendezvous_device_app
from rendezvous.settings import RendezvousSettings
from rendezvous.tables import Registration
from tests.conftest import KeyPool, migrated
from tests.owner.helpers import make_world
from tests.rendezvous.test_service import Setup, make_setup, to0_owner
from transport.client import FdoHttpClient
from transport.dispatch import Response
from transport.server import FdoEndpoint

CBOR = {"Content-Type": "application/cbor"}
#: Header fields that differ between two answers by nature (none of them do in a TestClient).
VARYING = {"date", "server"}


def answer(response: httpx.Response) -> tuple[int, dict[str, Any], bytes | tuple[int, int]]:
    """What must match: status, header fields (``allow`` as a set), and the body, or of an
    FDO ErrorMessage its code and previous message type (its timestamp differs)."""
    fields: dict[str, Any] = {k: v for k, v in response.headers.items() if k not in VARYING}
    if "allow" in fields:
        fields["allow"] = {m.strip() for m in fields["allow"].split(",")}
    if response.headers.get("message-type") == "255":
        err = ErrorMessage.decode(response.content)
        return response.status_code, fields, (int(err.code), err.prev_msg_type)
    return response.status_code, fields, response.content


#: (method, path, keyword arguments of the request) sent to both apps.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/health", {}),
    ("HEAD", "/health", {}),
    ("GET", "/ready", {}),
    ("POST", "/health", {"content": b"{}"}),
    ("DELETE", "/ready", {}),
    ("GET", "/health/", {}),
    ("GET", "/fdo/101/msg/30", {}),
    ("PUT", "/fdo/101/msg/20", {"content": b"x"}),
    ("GET", "/fdo/101/msg/", {}),
    ("POST", "/fdo/101/msg/30/", {"content": b"\x80", "headers": CBOR}),
    ("POST", "/fdo/101/msg/30/x", {"content": b"\x80", "headers": CBOR}),
    ("GET", "/nope", {}),
    ("GET", "/", {}),
    ("POST", "/nope?a=b", {"content": b"x" * 2048}),
    ("POST", "/nope", {"content": b"x" * 5000}),  # over max_request_body below: 413
    ("POST", "/fdo/101/msg/30", {"content": b"\x80", "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/fdo/101/msg/30", {"content": b"\x80", "headers": CBOR}),
    ("POST", "/fdo/101/msg/32", {"content": b"\x80", "headers": CBOR}),
    ("POST", "/fdo/101/msg/99", {"content": b"\x80", "headers": CBOR}),
    ("POST", "/fdo/101/msg/abc", {"content": b"\x80", "headers": CBOR}),
    ("POST", "/fdo/101/msg/255", {"content": b"\x80", "headers": CBOR}),
    ("POST", "/fdo/101/msg/10", {"content": b"\x80" * 70_000, "headers": CBOR}),
]


def both(
    full: Callable[[], Any], device: Callable[[], DeviceApp], base_url: str
) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(full(), base_url=base_url) as a,
        TestClient(device(), base_url=base_url) as b,
    ):
        yield a, b


@pytest.fixture
def rendezvous(database_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    settings = RendezvousSettings(
        database_url=migrated(database_url, "rendezvous"),
        max_request_body=4096,
    )
    yield from both(
        lambda: rendezvous_app(settings), lambda: rendezvous_device_app(settings), "http://rv.test"
    )


@pytest.fixture
def manufacturer(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    ca_key = generate_key("ec384")
    (tmp_path / "ca.pem").write_bytes(make_ca(ca_key, "CA", datetime.now(UTC)).public_bytes(Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(private_key_to_pem(ca_key))
    (tmp_path / "ec256.key").write_bytes(private_key_to_pem(generate_key("ec256")))
    settings = ManufacturerSettings(
        database_url=migrated(database_url, "manufacturer"),
        keys={"ec256": tmp_path / "ec256.key"},
        device_ca_key=tmp_path / "ca.key",
        device_ca_cert=tmp_path / "ca.pem",
        rendezvous=["http://rv.example:8041"],
        max_request_body=4096,
    )
    yield from both(
        lambda: manufacturer_app(settings), lambda: manufacturer_device_app(settings), "http://mfr.test"
    )


def same_answers(full: TestClient, device: TestClient) -> None:
    for method, path, kwargs in REQUESTS:
        a = full.request(method, path, **kwargs)
        b = device.request(method, path, **kwargs)
        assert answer(b) == answer(a), (method, path)


def test_the_rendezvous_device_app_answers_as_the_fastapi_app(
    rendezvous: tuple[TestClient, TestClient],
) -> None:
    full, device = rendezvous
    same_answers(full, device)
    # No admin route: 404 where the FastAPI app asks for a token.
    assert full.get("/api/v1/registrations").status_code == 401
    assert device.get("/api/v1/registrations").json() == {"detail": "Not Found"}


def test_the_manufacturer_device_app_answers_as_the_fastapi_app(
    manufacturer: tuple[TestClient, TestClient],
) -> None:
    full, device = manufacturer
    same_answers(full, device)
    assert full.get("/api/v1/vouchers").status_code == 401
    assert device.get("/api/v1/vouchers").json() == {"detail": "Not Found"}


def test_route_patterns_are_starlettes() -> None:
    from starlette.routing import compile_path

    for path in ("/api/v1/groups/{name}/revisions", "/api/v1/vouchers", "/ui/x.y/{a}/{b}", "/"):
        assert route_pattern(path).pattern == compile_path(path)[0].pattern
    with pytest.raises(ValueError, match="plain"):
        route_pattern("/a/{n:int}")


@pytest.fixture(scope="module")
def setup(key_pool: KeyPool) -> Setup:
    return make_setup(key_pool)


def test_to0_and_to1_through_the_rendezvous_device_app(
    rendezvous: tuple[TestClient, TestClient], setup: Setup
) -> None:
    """A real TO0 and TO1 on the device app; the FastAPI app's admin API sees the
    registration (one database), and a replayed TO0.OwnerSign is refused as there."""
    full, device = rendezvous
    client = FdoHttpClient(str(device.base_url), client=device)
    owner = to0_owner(setup)
    client.run(owner)
    assert owner.accepted_wait_seconds == 7200
    to1 = TO1Device(setup.credential)
    client.run(to1)
    assert to1.done and to1.to1d is not None
    with Session(full.app.state.engine) as db:  # type: ignore[attr-defined]
        assert [r.guid for r in db.exec(select(Registration))] == [setup.voucher.guid.value]
        assert db.exec(select(FdoSession)).all() == []  # finished sessions are deleted


def test_di_through_the_manufacturer_device_app(manufacturer: tuple[TestClient, TestClient]) -> None:
    full, device = manufacturer
    di = DIDevice(key=generate_key("ec256"), serial="DEVAPP-1", model="kiosk")
    FdoHttpClient(str(device.base_url), client=device).run(di)
    assert di.done
    with Session(full.app.state.engine) as db:  # type: ignore[attr-defined]
        assert [v.serial for v in db.exec(select(Voucher))] == ["DEVAPP-1"]


class Lifespan:
    """A lifespan that notes when it starts and stops."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        self.events.append("start")
        yield
        self.events.append("stop")


def bare(lifespan: Lifespan, *, ready: str | None = None, keys: bool = True) -> DeviceApp:
    def handle(msg_type: str, headers: Mapping[str, str], data: bytes | None) -> Response:
        raise RuntimeError("boom")  # the dispatcher never raises: this stands for a bug under it

    return DeviceApp(
        endpoint=FdoEndpoint(handle, 4096, inline=True),
        lifespan=lifespan,
        probe=lambda: ready,
        keys_loaded=lambda: keys,
        max_request_body=4096,
    )


def test_the_lifespan_runs_with_the_app_and_an_unanswered_exception_is_a_500_then_raised() -> None:
    lifespan = Lifespan()
    app = bare(lifespan)
    with TestClient(app, raise_server_exceptions=False) as http:
        assert lifespan.events == ["start"]
        r = http.post("/fdo/101/msg/30", content=b"\x80", headers=CBOR)
        assert (r.status_code, r.text, r.headers["content-type"]) == (
            500,
            "Internal Server Error",
            "text/plain; charset=utf-8",
        )
    assert lifespan.events == ["start", "stop"]
    with TestClient(app) as http, pytest.raises(RuntimeError, match="boom"):
        http.post("/fdo/101/msg/30", content=b"\x80", headers=CBOR)


def test_ready_says_why_not() -> None:
    for ready, keys, expected in (
        ("database unreachable (OperationalError)", True, "database unreachable (OperationalError)"),
        (None, False, "keys not loaded"),
    ):
        with TestClient(bare(Lifespan(), ready=ready, keys=keys)) as http:
            r = http.get("/ready")
            assert (r.status_code, r.json()) == (503, {"status": "unavailable", "reason": expected})
    with TestClient(bare(Lifespan())) as http:
        assert http.get("/ready").json() == {"status": "ready"}


def test_middleware_wraps_outermost_last() -> None:
    app = bare(Lifespan())
    seen: list[str] = []

    def named(name: str) -> Callable[..., Any]:
        def middleware(inner: Any) -> Any:
            async def call(scope: Any, receive: Any, send: Any) -> None:
                seen.append(name)
                await inner(scope, receive, send)

            return call

        return middleware

    app.add_middleware(named("first"))
    app.add_middleware(named("second"))
    with TestClient(app) as http:
        assert http.get("/health").json() == {"status": "ok"}
    assert seen == ["second", "first"]


@pytest.fixture
def owner(key_pool: KeyPool, tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    settings = make_world(key_pool, tmp_path).settings(database_url, max_request_body=4096)
    yield from both(lambda: owner_app(settings), lambda: owner_device_app(settings), "http://owner.test")


#: The owner's device routes besides the FDO messages, as a device (or a stranger) sends them.
OWNER_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/device/v1/checkin", {}),
    ("PUT", "/device/v1/report", {"content": b"{}"}),
    ("GET", "/api/v1/report", {}),
    ("POST", "/device/v1/checkin/", {"json": {}}),
    ("POST", "/device/v1/checkin", {"json": {}}),
    ("POST", "/device/v1/checkin", {"json": {}, "headers": {"Authorization": "Bearer fdc1.1.nope"}}),
    ("POST", "/device/v1/report", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/device/v1/report", {"json": {"revision": 1}, "headers": {"Authorization": "Bearer x"}}),
    ("POST", "/api/v1/report", {"content": b"x" * 5000, "headers": {"Content-Type": "application/json"}}),
]


def test_the_owner_device_app_answers_as_the_fastapi_app(owner: tuple[TestClient, TestClient]) -> None:
    full, device = owner
    same_answers(full, device)
    for method, path, kwargs in OWNER_REQUESTS:
        a = full.request(method, path, **kwargs)
        b = device.request(method, path, **kwargs)
        assert answer(b) == answer(a), (method, path)
    assert full.get("/api/v1/devices").status_code == 401
    assert device.get("/api/v1/devices").json() == {"detail": "Not Found"}


def test_a_device_checks_in_through_the_owner_device_app(owner: tuple[TestClient, TestClient]) -> None:
    full, device = owner
    with unit_of_work(full.app.state.engine) as db:  # type: ignore[attr-defined]
        row = inventory.ensure_device(db, os.urandom(16))
        row.status = "onboarded"
        assert row.id is not None
        secret = checkin.issue_secret(row.id)
    body = {"seq": 1, "booted_digest": "sha256:" + "ab" * 32}
    r = device.post("/device/v1/checkin", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "none" and r.json()["next_secret"] != secret
