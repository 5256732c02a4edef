"""Voucher rows across TO2 replacements (owner.lifecycle): a lost Done2, racing sessions,
credential reuse after a lost reply, and the TO0 registrations that follow the states.

TO2 runs over HTTP against the owner app (TestClient), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from fdo.credential import DeviceCredential
from fdo.errors import ErrorCode, PeerError
from fdo.machine import Reply
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to2.device import TO2Device
from fdo.types import Guid, MsgType
from fdo.voucher import OwnershipVoucher, vouchers_to_pem
from fdo_server.auth import Role
from fdo_server.db import make_engine, unit_of_work
from fdo_server.sql import Database
from owner.app import create_app
from owner.settings import load_config
from owner.tables import OwnerVoucher, To0Work
from owner.to0 import RETIRE_WAIT_SECONDS, To0Thread, run_due
from tests.conftest import KeyPool
from tests.fdo.flow import sample_devmod
from tests.owner.helpers import BASE, RendezvousStub, World, make_world, token
from transport.client import FdoHttpClient, TransportError


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The TO0 scheduler's database (driver connections of its own)."""
    database = Database(database_url)
    yield database
    database.dispose()


class LoseDone2(httpx.BaseTransport):
    """Passes requests to the owner; the reply to the first ``lose`` TO2.Done is lost
    after the owner handled (and committed) it, as when the network or power fails."""

    def __init__(self, inner: httpx.BaseTransport, lose: int = 1) -> None:
        self.inner, self.lose = inner, lose

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith(f"/msg/{int(MsgType.TO2_DONE)}") and self.lose:
            self.lose -= 1
            response.read()
            raise httpx.ReadError("connection reset before TO2.Done2 arrived", request=request)
        return response


def device_machine(credential: DeviceCredential) -> TO2Device:
    return TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None)


def run_to2(http: TestClient, credential: DeviceCredential, *, lose: int = 0) -> TO2Device:
    with httpx.Client(base_url=BASE, transport=LoseDone2(http._transport, lose)) as client:
        machine = device_machine(credential)
        FdoHttpClient(BASE, client=client).run(machine)
    return machine


def owner_with(world: World, database_url: str, **settings: Any) -> tuple[TestClient, dict[str, str]]:
    app = create_app(world.settings(database_url, **settings))
    return TestClient(app, base_url=BASE), token(app, Role.OPERATOR)


def states(http: TestClient, headers: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """GUID -> (state, replaced_by) of every voucher the owner holds."""
    items = http.get("/api/v1/vouchers", headers=headers).json()["items"]
    return {v["guid"]: (v["state"], v["replaced_by"]) for v in items}


def to0_rows(database_url: str) -> dict[str, To0Work]:
    with unit_of_work(make_engine(database_url)) as db:
        rows = db.exec(select(OwnerVoucher, To0Work).join(To0Work)).all()
        return {str(OwnershipVoucher.decode(v.raw).guid): w for v, w in rows}


def imported(world: World, http: TestClient, headers: dict[str, str]) -> tuple[DeviceCredential, str]:
    credential, voucher = world.device()
    resp = http.post("/api/v1/vouchers", content=vouchers_to_pem([voucher]), headers=headers)
    assert resp.status_code == 200 and [r["status"] for r in resp.json()["results"]] == ["imported"]
    return credential, str(voucher.guid)


def test_lost_done2_then_the_old_credential_onboards(world: World, database_url: str) -> None:
    http, headers = owner_with(world, database_url)
    credential, g0 = imported(world, http, headers)

    # TO2.Done is committed, Done2 never arrives: the device keeps its credential.
    with pytest.raises(TransportError, match="Done2 arrived"):
        run_to2(http, credential, lose=1)
    ((g1, (state, by)),) = [(g, s) for g, s in states(http, headers).items() if g != g0]
    assert state == "active" and states(http, headers)[g0] == ("replacing", g1)

    # The device runs TO2 again with the credential it holds: it completes, and the
    # replacement it never took up is superseded.
    again = run_to2(http, credential)
    assert again.done and again.new_credential is not None
    g2 = str(again.new_credential.guid)
    assert states(http, headers) == {
        g0: ("replacing", g2),
        g1: ("superseded", None),
        g2: ("active", None),
    }
    work = to0_rows(database_url)
    assert set(work) == {g0, g1, g2}  # g1's row stays until its registration is retired
    onboardings = http.get("/api/v1/onboardings", params={"guid": g0}, headers=headers).json()
    assert [(o["guid"], o["new_guid"]) for o in onboardings["items"]] == [(g0, g1), (g0, g2)]

    # The voucher it never took up no longer onboards anyone.
    stale = dataclasses.replace(credential, guid=Guid(uuid.UUID(g1).bytes))
    with pytest.raises(PeerError) as refused:
        run_to2(http, stale)
    assert refused.value.peer_code == ErrorCode.RESOURCE_NOT_FOUND

    # Its first proven contact under g2 confirms it: with credential reuse on (the same
    # database), that TO2 hands out nothing new, and g0 is replaced for good.
    reuse, _ = owner_with(world, database_url, migrate=False, credential_reuse=True)
    confirmed = run_to2(reuse, again.new_credential)
    assert confirmed.reused
    assert states(http, headers) == {
        g0: ("replaced", g2),
        g1: ("superseded", None),
        g2: ("active", None),
    }
    with pytest.raises(PeerError) as gone:
        run_to2(http, credential)
    assert gone.value.peer_code == ErrorCode.RESOURCE_NOT_FOUND


def test_reuse_after_a_lost_done2_reactivates_the_previous_voucher(world: World, database_url: str) -> None:
    http, headers = owner_with(world, database_url)
    credential, g0 = imported(world, http, headers)
    with pytest.raises(TransportError):
        run_to2(http, credential, lose=1)
    (g1,) = set(states(http, headers)) - {g0}

    reuse, _ = owner_with(world, database_url, migrate=False, credential_reuse=True)
    machine = run_to2(reuse, credential)
    assert machine.reused and machine.new_credential is not None and str(machine.new_credential.guid) == g0
    assert states(http, headers) == {g0: ("active", None), g1: ("superseded", None)}


def step_to_done(client: FdoHttpClient, machine: TO2Device) -> Reply:
    """Run ``machine`` up to the TO2.Done it is about to send."""
    msg: Reply | None = machine.start()
    while msg is not None and msg[0] != MsgType.TO2_DONE:
        reply_type, reply = client._exchange(*msg)
        msg = machine.receive(reply_type, reply)
    assert msg is not None
    return msg


def test_of_two_sessions_reaching_done_one_wins(world: World, database_url: str) -> None:
    http, headers = owner_with(world, database_url)
    credential, g0 = imported(world, http, headers)
    one, two = FdoHttpClient(BASE, client=http), FdoHttpClient(BASE, client=http)
    first, second = device_machine(credential), device_machine(credential)
    done_first, done_second = step_to_done(one, first), step_to_done(two, second)

    reply_type, reply = one._exchange(*done_first)
    assert reply_type == MsgType.TO2_DONE2
    assert first.receive(reply_type, reply) is None and first.new_credential is not None
    reply_type, reply = two._exchange(*done_second)
    assert reply_type == MsgType.ERROR
    with pytest.raises(PeerError) as lost:
        second.receive(reply_type, reply)
    assert lost.value.peer_code == ErrorCode.INVALID_JWT_TOKEN
    assert "the voucher changed during this session" in str(lost.value)

    # Nothing of the loser is stored: one replacement, one onboarding record.
    winner = str(first.new_credential.guid)
    assert states(http, headers) == {g0: ("replacing", winner), winner: ("active", None)}
    assert http.get("/api/v1/onboardings", headers=headers).json()["total"] == 1
    assert set(to0_rows(database_url)) == {g0, winner}


def test_to0_retires_the_registration_of_a_voucher_that_is_gone(
    world: World, database_url: str, database: Database
) -> None:
    http, headers = owner_with(world, database_url)
    credential, g0 = imported(world, http, headers)
    config = load_config(world.settings(database_url, migrate=False))
    stub = RendezvousStub()
    waits: list[int] = []

    def factory(url: str) -> FdoHttpClient:
        return FdoHttpClient(url, client=stub.client())

    t0 = datetime.now(UTC)  # the app stamps work rows with its own (real) clock
    assert run_due(database, config, now=t0, worker_id="w", http_factory=factory) == 1
    waits.append(stub.rv.registrations[next(iter(stub.rv.registrations))].wait_seconds)

    # Lost Done2, TO2 again: g1 is superseded; g0 stays registered (still usable).
    with pytest.raises(TransportError):
        run_to2(http, credential, lose=1)
    machine = run_to2(http, credential)
    assert machine.new_credential is not None
    g2 = str(machine.new_credential.guid)
    (g1,) = set(states(http, headers)) - {g0, g2}
    # g1 and g2 were never registered: g1's row goes without a TO0, g2 is registered;
    # g0 is not due before its renewal.
    assert run_due(database, config, now=t0 + timedelta(seconds=60), worker_id="w", http_factory=factory) == 2
    assert set(to0_rows(database_url)) == {g0, g2}
    assert set(stub.count) == {g0, g2}

    # The device confirms g2 (a TO2 with reuse): g0's live registration is retired with a
    # registration that expires at once, then its work row is deleted.
    reuse, _ = owner_with(world, database_url, migrate=False, credential_reuse=True)
    run_to2(reuse, machine.new_credential)
    assert states(http, headers)[g0] == ("replaced", g2)
    assert (
        run_due(database, config, now=t0 + timedelta(seconds=120), worker_id="w", http_factory=factory) == 1
    )
    retired = [r for g, r in stub.rv.registrations.items() if str(g) == g0]
    assert [r.wait_seconds for r in retired] == [RETIRE_WAIT_SECONDS] and waits == [3600]
    assert set(to0_rows(database_url)) == {g2}


def test_a_to2_wakes_the_to0_scheduler_after_its_commit(
    world: World, database_url: str, database: Database
) -> None:
    """TO2.Done adds the replacement's work row: the sleeping scheduler registers it then."""
    http, headers = owner_with(world, database_url)
    credential, g0 = imported(world, http, headers)
    config = load_config(world.settings(database_url, migrate=False, to0_interval_seconds=0))
    stub = RendezvousStub()
    timeouts: queue.Queue[float | None] = queue.Queue()

    def waiter(event: threading.Event, timeout: float | None) -> None:
        timeouts.put(timeout)
        event.wait()  # only a wake (or stop) ends the sleep

    thread = To0Thread(
        database,
        config,
        worker_id="w",
        http_factory=lambda url: FdoHttpClient(url, client=stub.client()),
        wait=waiter,
    )
    thread.start()
    try:
        assert timeouts.get(timeout=30) is not None  # g0 registered; asleep until its renewal
        assert set(stub.count) == {g0}
        machine = run_to2(http, credential)
        assert machine.new_credential is not None
        timeouts.get(timeout=30)  # woken by the TO2's commit
        assert set(stub.count) == {g0, str(machine.new_credential.guid)}
    finally:
        thread.stop()
