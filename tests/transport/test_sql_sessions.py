"""Negative paths of the FDO router over the database-backed session store.

The same refusals ``tests/transport/test_http.py`` shows with the in-memory store, here
through the real rendezvous app (:func:`rendezvous.app.create_app`) on SQLite and, with
``FDO_TEST_POSTGRES_URL`` set, PostgreSQL: expired sessions, replays (one after the
other and racing), out-of-order messages, oversized and chunked bodies, wrong content
types, unknown message types and non-CBOR first messages each get the proper FDO error,
and the service answers the next valid TO0 normally afterwards. :class:`SQLSessionStore`
is also tested on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response as HttpxResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey
from fdo.messages import ErrorMessage
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.voucher import OwnershipVoucher
from fdo_server.db import make_engine, unit_of_work
from fdo_server.session_model import FdoSession
from fdo_server.sessions import SQLSessionStore
from rendezvous.app import create_app
from rendezvous.settings import RendezvousSettings
from rendezvous.store import as_utc
from rendezvous.tables import Registration
from tests.conftest import KeyPool, migrated
from tests.fdo.flow import make_manufacturer, run_di
from transport.client import FdoHttpClient
from transport.server import StaleSessionError

BASE = "http://testserver"
CBOR = {"Content-Type": "application/cbor"}
TTL = 60
MAX_BODY = 16384


@dataclass
class Setup:
    credential: DeviceCredential
    voucher: OwnershipVoucher
    owner_key: PrivateKeyT


@pytest.fixture(scope="module")
def setup(key_pool: KeyPool) -> Setup:
    mfr_keys = {"ec256": key_pool.get("ec256", 0), "ec384": key_pool.get("ec384", 0)}
    owner_key = key_pool.get("ec256", 2)
    credential, voucher = run_di(make_manufacturer(mfr_keys), key_pool.get("ec256", 1))
    extended = voucher.extend(mfr_keys["ec256"], PublicKey.from_key(owner_key.public_key()))
    return Setup(credential, extended, owner_key)


class Clock:
    """A settable UTC clock that can hold the first call of each of ``n`` request threads
    at a barrier, so that concurrent requests all load their session before any goes on."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)
        self._lock = threading.Lock()
        self._barrier: threading.Barrier | None = None
        self._held: set[int] = set()

    def __call__(self) -> datetime:
        with self._lock:
            barrier = self._barrier
            ident = threading.get_ident()
            hold = barrier is not None and ident not in self._held
            if hold:
                self._held.add(ident)
        if hold and barrier is not None:
            barrier.wait()
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def hold(self, parties: int) -> None:
        """Make the next ``parties`` request threads meet before their first clock read."""
        with self._lock:
            self._barrier = threading.Barrier(parties, timeout=20)
            self._held = set()

    def release(self) -> None:
        with self._lock:
            self._barrier = None


@dataclass
class Service:
    url: str
    app: FastAPI
    clock: Clock
    http: TestClient
    engines: list[Engine] = field(default_factory=list)

    def client(self) -> TestClient:
        return TestClient(self.app, base_url=BASE)

    def sessions(self) -> list[FdoSession]:
        with Session(self.app.state.engine) as db:
            return list(db.exec(select(FdoSession)).all())

    def registrations(self) -> list[Registration]:
        with Session(self.app.state.engine) as db:
            return list(db.exec(select(Registration)).all())


@pytest.fixture
def service(database_url: str) -> Iterator[Service]:
    clock = Clock()
    settings = RendezvousSettings(
        database_url=migrated(database_url, "rendezvous"),
        session_ttl_seconds=TTL,
        max_body=MAX_BODY,
        max_wait_seconds=3600,
    )
    app = create_app(settings, clock=clock)
    yield Service(database_url, app, clock, TestClient(app, base_url=BASE))
    app.state.database.dispose()


def to0_owner(setup: Setup) -> TO0Owner:
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    return TO0Owner(voucher=setup.voucher, owner_key=setup.owner_key, rv_to2_addr=addr, wait_seconds=7200)


def assert_error(response: HttpxResponse, code: int, prev: int) -> None:
    assert response.status_code == 500, response.content
    assert response.headers["Message-Type"] == "255"
    assert response.headers["Content-Type"] == "application/cbor"
    err = ErrorMessage.decode(response.content)
    assert (err.code, err.prev_msg_type) == (code, prev)


def hello(http: TestClient, setup: Setup) -> tuple[dict[str, str], bytes]:
    """TO0.Hello: the headers carrying the session token and the TO0.OwnerSign to send next."""
    owner = to0_owner(setup)
    _, body = owner.start()
    r = http.post("/fdo/101/msg/20", content=body, headers=CBOR)
    assert r.status_code == 200 and r.headers["Message-Type"] == "21"
    nxt = owner.receive(21, r.content)
    assert nxt is not None and nxt[0] == 22
    return {**CBOR, "Authorization": r.headers["Authorization"]}, nxt[1]


def hello_rv(http: TestClient, setup: Setup) -> tuple[dict[str, str], bytes]:
    """TO1.HelloRV: the headers carrying the session token and the TO1.ProveToRV to send next."""
    device = TO1Device(setup.credential)
    _, body = device.start()
    r = http.post("/fdo/101/msg/30", content=body, headers=CBOR)
    assert r.status_code == 200 and r.headers["Message-Type"] == "31", r.content
    nxt = device.receive(31, r.content)
    assert nxt is not None and nxt[0] == 32
    return {**CBOR, "Authorization": r.headers["Authorization"]}, nxt[1]


def registration_snapshot(service: Service) -> list[tuple[bytes, bytes, datetime, datetime]]:
    return [(r.guid, r.to1d, as_utc(r.registered_at), as_utc(r.expires_at)) for r in service.registrations()]


def assert_still_serves(service: Service, setup: Setup) -> None:
    """A full TO0 then TO1 on a fresh connection succeeds after whatever went before."""
    sessions_before = len(service.sessions())
    client = FdoHttpClient(BASE, client=service.client())
    owner = to0_owner(setup)
    client.run(owner)
    assert owner.accepted_wait_seconds == 3600
    device = TO1Device(setup.credential)
    client.run(device)
    assert device.done and device.to1d is not None
    assert [r.guid for r in service.registrations()] == [setup.voucher.guid.value]
    assert len(service.sessions()) == sessions_before  # its own sessions were finished


# ---------------------------------------------------------------------------- expiry


@pytest.mark.parametrize("past", [0, 1, 3600])
def test_expired_session(service: Service, setup: Setup, past: int) -> None:
    headers, sign = hello(service.http, setup)
    assert len(service.sessions()) == 1
    service.clock.advance(TTL + past)  # expires_at <= now: expired
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert service.sessions() == []  # the dead token's row is gone
    assert service.registrations() == []
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert_still_serves(service, setup)


def test_session_alive_just_before_expiry(service: Service, setup: Setup) -> None:
    headers, sign = hello(service.http, setup)
    service.clock.advance(TTL - 1)
    r = service.http.post("/fdo/101/msg/22", content=sign, headers=headers)
    assert r.status_code == 200 and r.headers["Message-Type"] == "23"
    assert service.sessions() == [] and len(service.registrations()) == 1


def test_expired_session_not_revived_by_clock(service: Service, setup: Setup) -> None:
    headers, sign = hello(service.http, setup)
    service.clock.advance(TTL)
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    service.clock.advance(-TTL)  # even if time ran back, the session no longer exists
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert service.registrations() == []


# ---------------------------------------------------------------------------- replays


def test_replayed_owner_sign(service: Service, setup: Setup) -> None:
    headers, sign = hello(service.http, setup)
    r = service.http.post("/fdo/101/msg/22", content=sign, headers=headers)
    assert r.status_code == 200 and r.headers["Message-Type"] == "23"
    before = registration_snapshot(service)
    assert len(before) == 1
    service.clock.advance(5)  # a replay that were accepted would move registered_at
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert registration_snapshot(service) == before
    assert service.sessions() == []
    assert_still_serves(service, setup)


def test_replayed_prove_to_rv(service: Service, setup: Setup) -> None:
    FdoHttpClient(BASE, client=service.http).run(to0_owner(setup))
    before = registration_snapshot(service)
    headers, prove = hello_rv(service.http, setup)
    r = service.http.post("/fdo/101/msg/32", content=prove, headers=headers)
    assert r.status_code == 200 and r.headers["Message-Type"] == "33"
    assert_error(service.http.post("/fdo/101/msg/32", content=prove, headers=headers), 1, 32)
    assert registration_snapshot(service) == before and service.sessions() == []


def test_replayed_hello_gets_a_new_session(service: Service, setup: Setup) -> None:
    """A first message replayed is a new session; it cannot reuse or disturb the first one."""
    owner = to0_owner(setup)
    _, body = owner.start()
    r1 = service.http.post("/fdo/101/msg/20", content=body, headers=CBOR)
    r2 = service.http.post("/fdo/101/msg/20", content=body, headers={**CBOR, **_auth(r1)})
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["Authorization"] != r2.headers["Authorization"]
    assert len(service.sessions()) == 2


def _auth(response: HttpxResponse) -> dict[str, str]:
    return {"Authorization": response.headers["Authorization"]}


def _race(service: Service, path: str, body: bytes, headers: dict[str, str], *, hold: bool) -> list[Any]:
    """Send the same message from two threads at once; the responses (or exceptions)."""
    results: list[Any] = [None, None]
    start = threading.Barrier(2, timeout=20)
    if hold:
        service.clock.hold(2)

    def send(i: int) -> None:
        client = service.client()
        try:
            start.wait()
            results[i] = client.post(path, content=body, headers=headers)
        except BaseException as exc:  # reported by the assertions below
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    service.clock.release()
    assert not any(t.is_alive() for t in threads), "a racing request hung"
    return results


def _one_won(results: list[Any], reply_type: int, prev: int) -> None:
    for r in results:
        assert isinstance(r, HttpxResponse), r
    ok = [r for r in results if r.status_code == 200]
    failed = [r for r in results if r.status_code != 200]
    assert len(ok) == 1 and len(failed) == 1, [(r.status_code, r.content) for r in results]
    assert ok[0].headers["Message-Type"] == str(reply_type)
    assert_error(failed[0], 1, prev)


@pytest.mark.parametrize("hold", [True, False], ids=["interleaved", "free"])
def test_concurrent_owner_sign(service: Service, setup: Setup, hold: bool) -> None:
    rounds = 1 if hold else 3
    for _ in range(rounds):
        headers, sign = hello(service.http, setup)
        service.clock.advance(1)
        results = _race(service, "/fdo/101/msg/22", sign, headers, hold=hold)
        if not hold and all(isinstance(r, HttpxResponse) and r.status_code == 200 for r in results):
            pytest.fail("both racing TO0.OwnerSign were accepted")
        _one_won(results, 23, 22)
        assert len(service.registrations()) == 1
        assert service.sessions() == []
        assert as_utc(service.registrations()[0].registered_at) == service.clock.now
    assert_still_serves(service, setup)


@pytest.mark.parametrize("hold", [True, False], ids=["interleaved", "free"])
def test_concurrent_prove_to_rv(service: Service, setup: Setup, hold: bool) -> None:
    FdoHttpClient(BASE, client=service.http).run(to0_owner(setup))
    before = registration_snapshot(service)
    headers, prove = hello_rv(service.http, setup)
    _one_won(_race(service, "/fdo/101/msg/32", prove, headers, hold=hold), 33, 32)
    assert registration_snapshot(service) == before and service.sessions() == []
    assert_still_serves(service, setup)


# ---------------------------------------------------------------------------- order


def test_to1_message_with_to0_token(service: Service, setup: Setup) -> None:
    headers, sign = hello(service.http, setup)
    assert_error(service.http.post("/fdo/101/msg/32", content=b"\x80", headers=headers), 1, 32)
    assert service.sessions() == []  # the token died with the error
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert service.registrations() == []
    assert_still_serves(service, setup)


def test_to0_message_with_to1_token(service: Service, setup: Setup) -> None:
    FdoHttpClient(BASE, client=service.http).run(to0_owner(setup))
    headers, _ = hello_rv(service.http, setup)
    assert_error(service.http.post("/fdo/101/msg/22", content=b"\x80", headers=headers), 1, 22)
    assert service.sessions() == []


@pytest.mark.parametrize("auth", [None, "Bearer nope", "", "Bearer a b"])
def test_owner_sign_before_hello(service: Service, setup: Setup, auth: str | None) -> None:
    _, sign = hello(service.http, setup)  # a valid OwnerSign, sent without its session
    headers = dict(CBOR) if auth is None else {**CBOR, "Authorization": auth}
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert service.registrations() == []


def test_prove_before_hello_rv(service: Service, setup: Setup) -> None:
    FdoHttpClient(BASE, client=service.http).run(to0_owner(setup))
    assert_error(service.http.post("/fdo/101/msg/32", content=b"\x80", headers=CBOR), 1, 32)


@pytest.mark.parametrize("msg_type", [21, 23])
def test_server_message_types_sent_to_server(service: Service, setup: Setup, msg_type: int) -> None:
    headers, _ = hello(service.http, setup)
    r = service.http.post(f"/fdo/101/msg/{msg_type}", content=b"\x80", headers=headers)
    assert r.status_code == 500 and r.headers["Message-Type"] == "255"
    assert ErrorMessage.decode(r.content).code in (1, 100)
    assert service.sessions() == []


# ---------------------------------------------------------------------------- bodies


def _asgi_post(
    app: FastAPI, path: str, headers: dict[str, str], chunks: Iterator[bytes]
) -> tuple[int, dict[str, str], bytes, int]:
    """POST straight through ASGI; returns status, headers, body and how many chunks were read."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }

    async def run() -> None:
        await app(scope, receive, send)  # type: ignore[arg-type]

    anyio.run(run)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    out = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], out, body, read


def _endless(size: int = 1024) -> Iterator[bytes]:
    while True:
        yield b"\xa0" * size


def _assert_asgi_error(status: int, headers: dict[str, str], body: bytes, code: int, prev: int) -> None:
    assert status == 500 and headers["message-type"] == "255"
    assert headers["content-type"] == "application/cbor"
    err = ErrorMessage.decode(body)
    assert (err.code, err.prev_msg_type) == (code, prev)


@pytest.mark.parametrize("length", [str(MAX_BODY + 1), str(10**12), "abc", "-1", "1e3"])
def test_content_length_over_limit_is_not_read(service: Service, length: str) -> None:
    status, headers, body, read = _asgi_post(
        service.app, "/fdo/101/msg/20", {**CBOR, "content-length": length}, _endless()
    )
    _assert_asgi_error(status, headers, body, 100, 20)
    assert read == 0
    assert service.sessions() == []


def test_chunked_body_over_limit_stops_reading(service: Service) -> None:
    status, headers, body, read = _asgi_post(
        service.app, "/fdo/101/msg/20", {**CBOR, "transfer-encoding": "chunked"}, _endless()
    )
    _assert_asgi_error(status, headers, body, 100, 20)
    assert read == MAX_BODY // 1024 + 1  # stopped at the first chunk over the limit
    assert service.sessions() == []


def test_lying_content_length_stops_reading(service: Service) -> None:
    status, headers, body, read = _asgi_post(
        service.app, "/fdo/101/msg/22", {**CBOR, "content-length": "10"}, _endless()
    )
    _assert_asgi_error(status, headers, body, 100, 22)
    assert read == MAX_BODY // 1024 + 1


def test_oversized_over_http(service: Service, setup: Setup) -> None:
    assert_error(
        service.http.post("/fdo/101/msg/20", content=b"\xa0" * (MAX_BODY + 1), headers=CBOR), 100, 20
    )
    chunked = (b"\xa0" * 1000 for _ in range(MAX_BODY // 1000 + 2))
    assert_error(service.http.post("/fdo/101/msg/30", content=chunked, headers=CBOR), 100, 30)
    headers, _ = hello(service.http, setup)
    assert_error(
        service.http.post("/fdo/101/msg/22", content=b"\xa0" * (MAX_BODY + 1), headers=headers), 100, 22
    )
    assert len(service.sessions()) == 1  # refused before the session was looked at
    assert_still_serves(service, setup)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "text/plain",
        "application/cbor; charset=utf-8",
        "application/cbor-seq",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
    ],
)
def test_wrong_content_type(service: Service, setup: Setup, content_type: str | None) -> None:
    _, body = to0_owner(setup).start()
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert_error(service.http.post("/fdo/101/msg/20", content=body, headers=headers), 100, 20)
    assert service.sessions() == []
    token_headers, sign = hello(service.http, setup)
    later = {**token_headers}
    if content_type is None:
        later.pop("Content-Type")
    else:
        later["Content-Type"] = content_type
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=later), 100, 22)
    assert service.registrations() == []
    assert_still_serves(service, setup)


@pytest.mark.parametrize(
    ("path", "prev"),
    [
        ("0", 0),
        ("1", 1),
        ("10", 10),  # DI: not served by the rendezvous
        ("24", 24),
        ("34", 34),
        ("60", 60),  # TO2: not served by the rendezvous
        ("99", 99),
        ("254", 254),
        ("256", 0),
        ("1000", 0),
        ("-1", 0),
        ("abc", 0),
        ("20x", 0),
        ("2.0", 0),
        ("%20", 0),
    ],
)
def test_unknown_message_type(service: Service, setup: Setup, path: str, prev: int) -> None:
    _, body = to0_owner(setup).start()
    assert_error(service.http.post(f"/fdo/101/msg/{path}", content=body, headers=CBOR), 100, prev)
    assert service.sessions() == []


@pytest.mark.parametrize("path", ["²", "٢٠", "²⁰"])
def test_unicode_digit_message_type(service: Service, path: str) -> None:
    """Non-ASCII "digits" in the path are an unknown type, not an unhandled exception."""
    http = TestClient(service.app, base_url=BASE, raise_server_exceptions=False)
    r = http.post(f"/fdo/101/msg/{path}", content=b"\x80", headers=CBOR)
    assert_error(r, 100, 0)


# Not CBOR, truncated CBOR, or CBOR of the wrong shape (TO0.Hello is [], so no b"\x80" here).
NOT_CBOR = [b"", b"\xff", b"\x1f", b"\x5f\x41", b"not cbor at all", b"\xa0", b"\x84\x01\x02\x03", b"\x80\x80"]


@pytest.mark.parametrize("body", NOT_CBOR, ids=lambda b: b.hex() or "empty")
@pytest.mark.parametrize("msg_type", [20, 30])
def test_not_cbor_first_message(service: Service, setup: Setup, msg_type: int, body: bytes) -> None:
    assert_error(service.http.post(f"/fdo/101/msg/{msg_type}", content=body, headers=CBOR), 100, msg_type)
    assert service.sessions() == []


@pytest.mark.parametrize("body", NOT_CBOR, ids=lambda b: b.hex() or "empty")
def test_not_cbor_later_message_kills_session(service: Service, setup: Setup, body: bytes) -> None:
    headers, sign = hello(service.http, setup)
    assert_error(service.http.post("/fdo/101/msg/22", content=body, headers=headers), 100, 22)
    assert service.sessions() == []
    assert_error(service.http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert service.registrations() == []


def test_not_cbor_di_on_manufacturer(database_url: str, tmp_path: Path, key_pool: KeyPool) -> None:
    from manufacturer.app import create_app as manufacturer_app
    from tests.manufacturer.test_manufacturer import make_settings

    keys = {"ec256": key_pool.get("ec256", 10), "ca": key_pool.get("ec384", 10)}
    app = manufacturer_app(make_settings(tmp_path, database_url, keys))
    try:
        http = TestClient(app, base_url=BASE)
        for body in NOT_CBOR:
            assert_error(http.post("/fdo/101/msg/10", content=body, headers=CBOR), 100, 10)
        assert_error(http.post("/fdo/101/msg/12", content=b"\x80", headers=CBOR), 1, 12)
        assert_error(http.post("/fdo/101/msg/20", content=b"\x80", headers=CBOR), 100, 20)
        with Session(app.state.engine) as db:
            assert db.exec(select(FdoSession)).all() == []
    finally:
        app.state.database.dispose()


def test_not_cbor_to2_on_owner(database_url: str, tmp_path: Path, key_pool: KeyPool) -> None:
    from owner.app import create_app as owner_app
    from tests.owner.helpers import make_world

    app = owner_app(make_world(key_pool, tmp_path).settings(database_url))
    try:
        http = TestClient(app, base_url=BASE)
        for body in NOT_CBOR:
            assert_error(http.post("/fdo/101/msg/60", content=body, headers=CBOR), 100, 60)
        assert_error(http.post("/fdo/101/msg/62", content=b"\x80", headers=CBOR), 1, 62)
        assert_error(http.post("/fdo/101/msg/30", content=b"\x80", headers=CBOR), 100, 30)
        with Session(app.state.engine) as db:
            assert db.exec(select(FdoSession)).all() == []
    finally:
        app.state.database.dispose()


# ---------------------------------------------------------------------------- afterwards


def test_service_answers_after_every_kind_of_error(service: Service, setup: Setup) -> None:
    http = service.http
    headers, sign = hello(http, setup)
    assert_error(http.post("/fdo/101/msg/32", content=b"\x80", headers=headers), 1, 32)
    assert_error(http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert_error(http.post("/fdo/101/msg/20", content=b"\xa0" * (MAX_BODY + 1), headers=CBOR), 100, 20)
    assert_error(http.post("/fdo/101/msg/20", content=b"\x80", headers={"Content-Type": "x/y"}), 100, 20)
    assert_error(http.post("/fdo/101/msg/99", content=b"\x80", headers=CBOR), 100, 99)
    assert_error(http.post("/fdo/101/msg/20", content=b"\xff", headers=CBOR), 100, 20)
    headers, sign = hello(http, setup)
    service.clock.advance(TTL)
    assert_error(http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)
    assert service.sessions() == [] and service.registrations() == []
    assert_still_serves(service, setup)


# ---------------------------------------------------------------------------- SQLSessionStore


@dataclass
class Store:
    engine: Engine
    clock: Clock
    store: SQLSessionStore

    def run(self, fn: Callable[[], Any]) -> Any:
        with unit_of_work(self.engine):
            return fn()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(migrated(database_url, "rendezvous"))
    clock = Clock()
    yield Store(engine, clock, SQLSessionStore(clock))
    engine.dispose()


def test_store_create_load_save(store: Store) -> None:
    s, expires = store.store, store.clock.now + timedelta(seconds=TTL)
    token = store.run(lambda: s.create("TO0", b"state-0", expires))
    assert isinstance(token, str) and len(token) >= 40
    loaded = store.run(lambda: s.load(token))
    assert (loaded.protocol, loaded.state, loaded.version) == ("TO0", b"state-0", 0)
    store.run(lambda: s.save(token, b"state-1", version=0))
    loaded = store.run(lambda: s.load(token))
    assert (loaded.state, loaded.version) == (b"state-1", 1)
    assert store.run(lambda: s.load("nope")) is None
    other = store.run(lambda: s.create("TO1", b"x", expires))
    assert other != token


def test_store_save_with_stale_version(store: Store) -> None:
    s, expires = store.store, store.clock.now + timedelta(seconds=TTL)
    token = store.run(lambda: s.create("TO0", b"state-0", expires))
    store.run(lambda: s.save(token, b"state-1", version=0))
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.save(token, b"replayed", version=0))
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.save(token, b"future", version=5))
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.save("nope", b"x", version=0))
    loaded = store.run(lambda: s.load(token))
    assert (loaded.state, loaded.version) == (b"state-1", 1)


def test_store_two_loaders_one_saver(store: Store) -> None:
    """Two units of work load the same version; only the first save wins."""
    s, expires = store.store, store.clock.now + timedelta(seconds=TTL)
    token = store.run(lambda: s.create("TO0", b"s0", expires))
    a = store.run(lambda: s.load(token))
    b = store.run(lambda: s.load(token))
    store.run(lambda: s.save(token, b"a", version=a.version))
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.save(token, b"b", version=b.version))
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.finish(token, version=b.version))
    assert store.run(lambda: s.load(token)).state == b"a"


def test_store_finish(store: Store) -> None:
    s, expires = store.store, store.clock.now + timedelta(seconds=TTL)
    token = store.run(lambda: s.create("TO1", b"s0", expires))
    store.run(lambda: s.save(token, b"s1", version=0))
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.finish(token, version=0))
    assert store.run(lambda: s.load(token)) is not None  # a stale finish deletes nothing
    store.run(lambda: s.finish(token, version=1))
    assert store.run(lambda: s.load(token)) is None
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.finish(token, version=1))


def test_store_rolled_back_with_the_unit_of_work(store: Store) -> None:
    s, expires = store.store, store.clock.now + timedelta(seconds=TTL)
    token = store.run(lambda: s.create("TO0", b"s0", expires))

    def save_then_fail() -> None:
        s.save(token, b"s1", version=0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.run(save_then_fail)
    loaded = store.run(lambda: s.load(token))
    assert (loaded.state, loaded.version) == (b"s0", 0)


def test_store_expiry_and_purge(store: Store) -> None:
    s, now = store.store, store.clock.now
    old = store.run(lambda: s.create("TO0", b"old", now + timedelta(seconds=10)))
    edge = store.run(lambda: s.create("TO0", b"edge", now + timedelta(seconds=20)))
    live = store.run(lambda: s.create("TO1", b"live", now + timedelta(seconds=21)))
    store.clock.advance(20)
    assert store.run(lambda: s.load(old)) is None
    assert store.run(lambda: s.load(edge)) is None  # expires_at == now: expired
    assert store.run(lambda: s.load(live)) is not None
    assert store.run(s.purge_expired) == 2
    assert store.run(s.purge_expired) == 0
    with Session(store.engine) as db:
        assert [r.token for r in db.exec(select(FdoSession)).all()] == [live]
    store.clock.advance(1)
    assert store.run(s.purge_expired) == 1


def test_store_delete(store: Store) -> None:
    s, expires = store.store, store.clock.now + timedelta(seconds=TTL)
    token = store.run(lambda: s.create("TO0", b"s0", expires))
    store.run(lambda: s.delete(token))
    store.run(lambda: s.delete(token))  # idempotent
    assert store.run(lambda: s.load(token)) is None
    with pytest.raises(StaleSessionError):
        store.run(lambda: s.save(token, b"x", version=0))


def test_store_needs_a_unit_of_work(store: Store) -> None:
    with pytest.raises(RuntimeError, match="unit of work"):
        store.store.load("x")
