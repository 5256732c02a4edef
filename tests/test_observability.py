"""/health, /ready, /metrics and the JSON logs of the three services (issue 5, points 3-4)."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fdo.crypto import private_key_to_pem
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.to2.device import TO2Device
from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from fdo_server.db import sqlite_url, unit_of_work
from fdo_server.logs import JsonFormatter
from fdo_server.readiness import readiness_probe
from owner.app import create_app as owner_app
from owner.audit import audit
from rendezvous.app import create_app as rendezvous_app
from rendezvous.settings import RendezvousSettings
from tests.conftest import KeyPool, migrated
from tests.fdo.flow import sample_devmod
from tests.manufacturer.test_manufacturer import Mfr, mfr  # noqa: F401 - fixture
from tests.owner.helpers import BASE, make_world, token
from transport.client import FdoHttpClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: TestClient) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Recorder(httpx.BaseTransport):
    """Passes requests on and remembers every bearer token seen (to look for in logs)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.tokens: set[str] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        for header in (request.headers.get("authorization"), response.headers.get("authorization")):
            if header:
                self.tokens.add(header.split()[-1])
        return response


# ---------------------------------------------------------------------------- health / ready


def test_health_and_ready_follow_the_database(tmp_path: Path) -> None:
    db = tmp_path / "rv.db"
    app = rendezvous_app(RendezvousSettings(database_url=migrated(sqlite_url(db), "rendezvous")))
    with TestClient(app, base_url=BASE) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").status_code == 200

        moved = tmp_path / "rv.db.away"
        db.rename(moved)  # the database goes away
        gone = http.get("/ready")
        assert gone.status_code == 503
        assert gone.json()["status"] == "unavailable" and "database" in gone.json()["reason"]
        assert http.get("/health").status_code == 200  # alive all the same
        assert not db.exists()  # the probe never creates an empty database

        moved.rename(db)  # and comes back: ready again, same process, same app
        assert http.get("/ready").status_code == 200


def test_ready_answers_when_the_database_hangs() -> None:
    """A server that takes the connection and never answers: 503 within the deadline, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or replies
        port = silent.getsockname()[1]
        probe = readiness_probe(f"postgresql+psycopg://fdo@127.0.0.1:{port}/fdo", timeout=0.5)
        t0 = time.monotonic()
        answers = [probe() for _ in range(3)]
        assert time.monotonic() - t0 < 2.5
        assert answers == ["database did not answer within 0.5 s"] * 3
        # One check at a time (callers share the stuck one), and libpq's connect_timeout
        # (2 s) ends it.
        assert sum(t.name == "fdo-ready-check" for t in threading.enumerate()) == 1
        deadline = time.monotonic() + 10
        while any(t.name == "fdo-ready-check" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the readiness check never gave up"
            time.sleep(0.1)


def test_owner_not_ready_without_keys(key_pool: KeyPool, tmp_path: Path) -> None:
    world = make_world(key_pool, tmp_path)
    app = owner_app(world.settings(sqlite_url(tmp_path / "o.db")))
    with TestClient(app, base_url=BASE) as http:
        assert http.get("/ready").status_code == 200
        app.state.config.keys.clear()
        response = http.get("/ready")
        assert response.status_code == 503 and response.json()["reason"] == "keys not loaded"


def test_create_app_twice_in_one_process(tmp_path: Path) -> None:
    for i in range(2):
        url = migrated(sqlite_url(tmp_path / f"{i}.db"), "rendezvous")
        app = rendezvous_app(RendezvousSettings(database_url=url))
        with TestClient(app, base_url=BASE) as http:
            assert http.get("/metrics").status_code == 200
            assert http.get("/ready").status_code == 200


# ---------------------------------------------------------------------------- onboarding


def test_metrics_and_logs_after_onboarding(
    mfr: Mfr,  # noqa: F811 - fixture
    key_pool: KeyPool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    world = make_world(key_pool, tmp_path)
    credential, voucher = world.device()
    owner_key = world.owner_keys["ec256"]

    # DI at the manufacturer service.
    recorder = Recorder(mfr.http._transport)
    with httpx.Client(base_url=BASE, transport=recorder) as client:
        from fdo.di.device import DIDevice

        device = DIDevice(key=key_pool.get("ec256", 30), serial="OBS-1", model="kiosk-v2")
        FdoHttpClient(BASE, client=client).run(device)
    m = scrape(mfr.http)
    assert value(m, "fdo_messages_total", service="manufacturer", msg_type="10", result="ok") == 1
    assert value(m, "fdo_messages_total", service="manufacturer", msg_type="12", result="ok") == 1
    assert value(m, "fdo_sessions_started_total", service="manufacturer", protocol="DI") == 1
    assert value(m, "fdo_sessions_completed_total", service="manufacturer", protocol="DI") == 1
    assert value(m, "fdo_protocol_duration_seconds_count", service="manufacturer", protocol="DI") == 1

    # TO0 (by the owner's key) and TO1 at the rendezvous service.
    rv_url = migrated(sqlite_url(tmp_path / "rv.db"), "rendezvous")
    rv = TestClient(rendezvous_app(RendezvousSettings(database_url=rv_url)), base_url=BASE)
    rv_rec = Recorder(rv._transport)
    with rv, httpx.Client(base_url=BASE, transport=rv_rec) as client:
        addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
        FdoHttpClient(BASE, client=client).run(
            TO0Owner(voucher=voucher, owner_key=owner_key, rv_to2_addr=addr, wait_seconds=3600)
        )
        to1 = TO1Device(credential)
        FdoHttpClient(BASE, client=client).run(to1)
        assert to1.done
        # A stray message with a bad token: error code 1 (invalid token) counted.
        bad = client.post(
            "/fdo/101/msg/32",
            content=b"\x80",
            headers={"Content-Type": "application/cbor", "Authorization": "Bearer nope"},
        )
        assert bad.status_code == 500
        r = scrape(rv)
    for protocol, types in (("TO0", ("20", "22")), ("TO1", ("30", "32"))):
        for t in types:
            assert value(r, "fdo_messages_total", service="rendezvous", msg_type=t, result="ok") == 1
        assert value(r, "fdo_sessions_started_total", service="rendezvous", protocol=protocol) == 1
        assert value(r, "fdo_sessions_completed_total", service="rendezvous", protocol=protocol) == 1
        assert value(r, "fdo_protocol_duration_seconds_count", service="rendezvous", protocol=protocol) == 1
    assert value(r, "fdo_messages_total", service="rendezvous", msg_type="32", result="error") == 1
    assert value(r, "fdo_errors_total", service="rendezvous", code="1") == 1

    # TO2 at the owner service.
    app = owner_app(world.settings(sqlite_url(tmp_path / "owner.db")))
    with TestClient(app, base_url=BASE) as own:
        admin = token(app, Role.OPERATOR)
        assert (
            own.post("/api/v1/vouchers", content=vouchers_to_pem([voucher]), headers=admin).status_code == 200
        )
        before = scrape(own)
        assert ("fdo_to0_pending", ()) in before and ("fdo_to0_expiring", ()) in before
        own_rec = Recorder(own._transport)
        with httpx.Client(base_url=BASE, transport=own_rec) as client:
            to2 = TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None)
            FdoHttpClient(BASE, client=client).run(to2)
        assert to2.done
        o = scrape(own)
        # An admin action with a planted registry credential in its detail.
        with unit_of_work(app.state.engine) as db:
            audit(db, "alice", "group.update", "kiosks", {"registry_password": "REGISTRY-PW-7f3a9c"})
    for t in ("60", "62", "64", "66", "68", "70"):
        assert value(o, "fdo_messages_total", service="owner", msg_type=t, result="ok") >= 1, t
    assert value(o, "fdo_sessions_started_total", service="owner", protocol="TO2") == 1
    assert value(o, "fdo_sessions_completed_total", service="owner", protocol="TO2") == 1
    assert value(o, "fdo_protocol_duration_seconds_count", service="owner", protocol="TO2") == 1
    assert value(o, "fdo_protocol_duration_seconds_sum", service="owner", protocol="TO2") > 0
    assert sum(v for (name, _), v in o.items() if name == "fdo_errors_total") == 0

    # One JSON line per FDO message, with the fields; nothing secret anywhere.
    formatter = JsonFormatter()
    lines = [formatter.format(rec) for rec in caplog.records]
    parsed = [json.loads(line) for line in lines]
    messages = [p for p in parsed if p.get("event") == "fdo_message"]
    n_fdo = sum(
        int(v) for samples in (m, r, o) for (name, _), v in samples.items() if name == "fdo_messages_total"
    )
    assert len(messages) == n_fdo
    for p in messages:
        assert {"service", "msg_type", "guid", "session", "outcome", "error_code", "duration_ms"} <= p.keys()
    to2_done = [p for p in messages if p["service"] == "owner" and p.get("completed")]
    assert [p["guid"] for p in to2_done] == [voucher.guid.value.hex()]
    assert {p["guid"] for p in messages if p["service"] == "rendezvous" and p["msg_type"] == 32} >= {
        voucher.guid.value.hex()
    }
    assert all(
        p["session"] and len(p["session"]) == 12 for p in messages if p["msg_type"] not in (10, 20, 30, 60)
    )
    actions = [p for p in parsed if p.get("event") == "admin_action"]
    assert {"who": "alice", "action": "group.update", "target": "kiosks", "outcome": "ok"}.items() <= actions[
        -1
    ].items()

    text = caplog.text + "\n".join(lines)
    secrets = {
        *recorder.tokens,
        *rv_rec.tokens,
        *own_rec.tokens,
        admin["Authorization"].split()[-1],
        credential.hmac_secret.hex(),
        base64.b64encode(credential.hmac_secret).decode(),
        "REGISTRY-PW-7f3a9c",
    }
    pem = private_key_to_pem(owner_key).decode().splitlines()
    secrets.update(line for line in pem if "-----" not in line and len(line) > 20)
    assert len(recorder.tokens) >= 1 and len(own_rec.tokens) >= 1
    for secret in secrets:
        assert secret not in text, "secret leaked into the logs"


@given(st.lists(st.floats(min_value=0, max_value=4102444800, allow_nan=False), min_size=1, max_size=20))
def test_log_timestamps_are_utc_to_the_millisecond(times: list[float]) -> None:
    """``ts`` is the record's time in UTC, ``isoformat(timespec="milliseconds")``'s form,
    whatever order the records come in (the second's text is kept between them)."""
    formatter = JsonFormatter("owner")
    for created in times:
        record = logging.LogRecord("x", logging.INFO, __file__, 0, "m", None, None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        ts = json.loads(formatter.format(record))["ts"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", ts), ts
        parsed = datetime.fromisoformat(ts)
        assert parsed.utcoffset() == timedelta(0)
        assert 0 <= created - parsed.timestamp() < 0.001 + 1e-6, (created, ts)
