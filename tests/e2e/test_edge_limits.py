"""Unauthenticated work is bounded, over real HTTP against the three services as server
processes (issue 13, item 2):

* each service sweeps its expired protocol sessions by itself (a short interval here;
  two manufacturer workers sweep the same table, each row is deleted and counted once);
* a flood of TO1.HelloRV from one client address is refused after the limit with an
  FDO ErrorMessage and ``Retry-After``, counted in ``/metrics``, while another address
  (through a trusted proxy's ``X-Forwarded-For``: every test request comes from
  127.0.0.1) is still answered and a device still onboards;
* ``POST /ui/login`` answers 429 with ``Retry-After`` after its burst;
* DI from a network the manufacturer does not list is refused with an FDO error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select

from fdo.crypto import generate_key
from fdo.di.device import DIDevice
from fdo.errors import ErrorCode
from fdo.messages import ErrorMessage
from fdo.to1.messages import TO1HelloRV
from fdo.types import Guid, SgType, SigInfo
from fdo_server.db import make_engine
from fdo_server.session_model import FdoSession
from fdo_server.stack import SERVICES, Stack
from tests.conftest import database_backends, open_database

BURST = 4


@pytest.fixture(scope="module", params=database_backends())
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The three services; the manufacturer with two workers that both sweep."""
    workdir = tmp_path_factory.mktemp(f"edge-{request.param}")
    dbs = {name: open_database(request.param, workdir, name) for name in SERVICES}
    env = {
        "manufacturer": {
            "FDO_MANUFACTURER_TRUSTED_PROXIES": "127.0.0.1",
            "FDO_MANUFACTURER_DI_NETWORKS": "10.1.0.0/16, 127.0.0.1",
            "FDO_MANUFACTURER_SESSION_SWEEP_SECONDS": "0.2",
            "FDO_MANUFACTURER_SESSION_TTL_SECONDS": "10",
        },
        "rendezvous": {
            "FDO_RENDEZVOUS_TRUSTED_PROXIES": '["127.0.0.1/32"]',
            "FDO_RENDEZVOUS_FIRST_MESSAGE_RATE": "0.01",
            "FDO_RENDEZVOUS_FIRST_MESSAGE_BURST": str(BURST),
        },
        "owner": {
            "FDO_OWNER_TRUSTED_PROXIES": "127.0.0.1",
            "FDO_OWNER_LOGIN_RATE": "0.01",
            "FDO_OWNER_LOGIN_BURST": "2",
        },
    }
    urls = {name: db.__enter__() for name, db in dbs.items()}
    try:
        with Stack(workdir, database_urls=urls, workers={"manufacturer": 2}, env=env) as running:
            yield running
    finally:
        for db in dbs.values():
            db.__exit__()


def metric(stack: Stack, of: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.url(of)}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def fdo_post(stack: Stack, service: str, msg_type: int, body: bytes, client: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/cbor"}
    if client is not None:
        headers["X-Forwarded-For"] = client
    return httpx.post(f"{stack.url(service)}/fdo/101/msg/{msg_type}", content=body, headers=headers)


def error_of(resp: httpx.Response) -> ErrorMessage:
    assert resp.status_code == 500 and resp.headers["message-type"] == "255", resp.text
    return ErrorMessage.decode(resp.content)


def hello_rv() -> bytes:
    return TO1HelloRV(guid=Guid.new(), ea_sig_info=SigInfo(SgType.ES256)).encode()


def test_expired_sessions_are_swept_by_the_service(stack: Stack) -> None:
    """Sessions another process left behind go in the first sweep after this service's
    own session expires: the sweeper sleeps until a session it knows of is due
    (fdo_server.sweep), never on a fixed tick."""
    engine = make_engine(stack.database_urls["manufacturer"])
    table = FdoSession.__table__  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    row = {"protocol": "DI", "state": b"s", "version": 0}
    swept_before = metric(stack, "manufacturer", "fdo_sessions_swept_total", service="manufacturer")
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(table),
                [{**row, "token": f"gone-{i}", "expires_at": now - timedelta(minutes=1)} for i in range(3)]
                + [{**row, "token": "live", "expires_at": now + timedelta(hours=1)}],
            )
        # A device starts DI and goes away: the service's own session (10 s TTL here).
        device = DIDevice(key=generate_key("ec256"), serial="SWEEP-1", model="kiosk-v2")
        msg_type, body = device.start()
        started = fdo_post(stack, "manufacturer", msg_type, body, None)
        assert started.status_code == 200, started.text
        mine = started.headers.get("authorization")
        deadline = time.monotonic() + 40
        while True:
            with engine.connect() as conn:
                left = set(conn.scalars(select(table.c.token)))
            if left == {"live"} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert left == {"live"}, f"left: {left}; the DI session was {mine}"
    finally:
        engine.dispose()
    swept = metric(stack, "manufacturer", "fdo_sessions_swept_total", service="manufacturer") - swept_before
    assert swept >= 4  # the three left behind and the abandoned DI session (others may expire too)


def test_a_flood_of_first_messages_is_refused_while_others_onboard(stack: Stack) -> None:
    flooder = "198.51.100.1"
    answers = [fdo_post(stack, "rendezvous", 30, hello_rv(), f"6.6.6.6, {flooder}") for _ in range(BURST + 3)]
    # The burst is served (an unknown GUID: ResourceNotFound), the rest refused.
    assert [error_of(r).code for r in answers[:BURST]] == [ErrorCode.RESOURCE_NOT_FOUND] * BURST
    for refused in answers[BURST:]:
        error = error_of(refused)
        assert error.code == ErrorCode.INTERNAL_SERVER_ERROR and error.prev_msg_type == 30
        assert error.message.startswith(f"too many requests from {flooder}; retry in ")
        assert int(refused.headers["retry-after"]) >= 1
    assert metric(stack, "rendezvous", "fdo_rate_limited_total", service="rendezvous", route="fdo/30") == 3
    # Only the first refusal of the episode is logged.
    log = (stack.workdir / "rendezvous.log").read_text()
    assert log.count('"event":"rate_limited"') == 1 and flooder in log

    # Another client behind the same (trusted) proxy is served.
    other = fdo_post(stack, "rendezvous", 30, hello_rv(), "198.51.100.2")
    assert error_of(other).code == ErrorCode.RESOURCE_NOT_FOUND

    # A device (from 127.0.0.1, no proxy) goes through DI, TO0, TO1 and TO2.
    credential = stack.manufacture(serial="EDGE-1", model="edge")
    guid = str(credential.guid)
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    result = stack.onboard(credential, root=stack.workdir / "root", run=lambda argv: (0, b"", b""))
    assert result.credential.guid != credential.guid
    still = fdo_post(stack, "rendezvous", 30, hello_rv(), flooder)
    assert error_of(still).message.startswith(f"too many requests from {flooder}")


def test_sign_in_is_rate_limited_with_429(stack: Stack) -> None:
    def login(client: str) -> httpx.Response:
        return httpx.post(
            f"{stack.url('owner')}/ui/login",
            data={"token": "not-a-token"},
            headers={"X-Forwarded-For": client},
        )

    # Refused for want of the form's CSRF token, but each try counts against the limit.
    assert [login("203.0.113.5").status_code for _ in range(2)] == [403, 403]
    refused = login("203.0.113.5")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "too many requests" in refused.text
    assert login("203.0.113.6").status_code == 403  # another address is not affected
    assert metric(stack, "owner", "fdo_rate_limited_total", service="owner", route="ui/login") == 1


def test_di_from_a_network_not_listed_is_refused(stack: Stack) -> None:
    refused = fdo_post(stack, "manufacturer", 10, b"\x80", "203.0.113.9")
    error = error_of(refused)
    assert error.code == ErrorCode.INTERNAL_SERVER_ERROR and error.prev_msg_type == 10
    assert error.message == "fdo/10 is not offered to 203.0.113.9"
    assert "retry-after" not in refused.headers
    # From a listed network the message reaches DI (which finds this body malformed).
    allowed = fdo_post(stack, "manufacturer", 10, b"\x80", "10.1.2.3")
    assert error_of(allowed).code == ErrorCode.MESSAGE_BODY_ERROR
    assert metric(stack, "manufacturer", "fdo_network_refused_total", route="fdo/10") == 1
    log = (stack.workdir / "manufacturer.log").read_text()
    assert '"event":"network_refused"' in log and "203.0.113.9" in log
