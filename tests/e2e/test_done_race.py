"""Two owner processes on one database, two TO2 sessions of one device, TO2.Done sent by
both at the same instant: exactly one gets TO2.Done2, and the device has one active
voucher (owner.lifecycle).

Each session runs on its own owner server (separate uvicorn processes sharing the
database: PostgreSQL when ``FDO_TEST_POSTGRES_URL`` is set, and a SQLite file), from
TO2.HelloDevice up to the TO2.Done it is about to send; then both threads send Done
together. The first sessions of a fresh device also race through TO2.DeviceServiceInfo,
where the owner makes the device record.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from fdo.credential import DeviceCredential
from fdo.errors import ErrorCode
from fdo.machine import Reply
from fdo.messages import ErrorMessage
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to2.device import TO2Device
from fdo.types import MsgType
from fdo_server.launcher import free_port
from fdo_server.stack import Stack
from tests.conftest import database_backends, open_database
from tests.fdo.flow import sample_devmod

SERVICES = ("manufacturer", "rendezvous", "owner")
PAIRS = 20


@pytest.fixture(scope="module", params=database_backends())
def owners(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str, str]]:
    workdir = tmp_path_factory.mktemp(f"done-race-{request.param}")
    dbs = [open_database(request.param, workdir, name) for name in SERVICES]
    urls = {name: db.__enter__() for name, db in zip(SERVICES, dbs, strict=True)}
    with Stack(workdir, database_urls=urls) as stack:
        first = stack.services["owner"]
        second = replace(first, port=free_port(), log_path=workdir / "owner-2.log", process=None)
        second.start()
        try:
            yield stack, first.url, second.url
        finally:
            second.stop()
    for db in dbs:
        db.__exit__()


class Session:
    """One TO2 session of the device against one owner, driven message by message."""

    def __init__(self, url: str, credential: DeviceCredential) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)
        self.machine = TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None)
        self.token: str | None = None
        self.error: str | None = None
        self.done_reply: int | None = None

    def exchange(self, msg: Reply) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/cbor"}
        if self.token is not None:
            headers["Authorization"] = self.token
        response = self.http.post(f"/fdo/101/msg/{int(msg[0])}", content=msg[1], headers=headers)
        self.token = response.headers.get("Authorization", self.token)
        return int(response.headers.get("Message-Type", MsgType.ERROR)), response.content

    def to_done(self) -> Reply | None:
        """Run up to the TO2.Done to send; None (and :attr:`error`) if the owner refused."""
        msg: Reply | None = self.machine.start()
        while msg is not None and msg[0] != MsgType.TO2_DONE:
            reply_type, body = self.exchange(msg)
            if reply_type == MsgType.ERROR:
                self.error = ErrorMessage.decode(body).message
                return None
            msg = self.machine.receive(reply_type, body)
        return msg

    def done(self, msg: Reply) -> None:
        reply_type, body = self.exchange(msg)
        self.done_reply = reply_type
        if reply_type == MsgType.ERROR:
            error = ErrorMessage.decode(body)
            self.error = f"{error.code}: {error.message}"
            assert error.code == ErrorCode.INVALID_JWT_TOKEN, self.error
        else:
            assert self.machine.receive(reply_type, body) is None


def race(one: Session, two: Session) -> None:
    """Both sessions up to TO2.Done concurrently, then Done from both at once."""
    ready = threading.Barrier(2, timeout=60)

    def run(session: Session) -> None:
        msg = session.to_done()
        ready.wait()
        if msg is not None:
            session.done(msg)

    threads = [threading.Thread(target=run, args=(s,)) for s in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def test_of_two_concurrent_dones_exactly_one_wins(owners: tuple[Stack, str, str], tmp_path: Path) -> None:
    stack, first, second = owners
    outcomes = []
    for n in range(PAIRS):
        credential = stack.manufacture(serial=f"RACE-{n:02d}", model="kiosk-v2")
        g0 = str(credential.guid)
        stack.hand_off(g0, "ec256")
        one, two = Session(first, credential), Session(second, credential)
        race(one, two)
        # Both reached Done (no session failed earlier, an internal error least of all).
        assert one.done_reply is not None and two.done_reply is not None, (one.error, two.error)
        replies = sorted([one.done_reply, two.done_reply])
        assert replies == [int(MsgType.TO2_DONE2), int(MsgType.ERROR)], (one.error, two.error)
        winner = one if one.done_reply == MsgType.TO2_DONE2 else two
        assert winner.machine.new_credential is not None
        g1 = str(winner.machine.new_credential.guid)
        with stack.admin("owner") as owner:
            old = owner.get(f"/api/v1/vouchers/{g0}").json()
            assert (old["state"], old["replaced_by"]) == ("replacing", g1)
            new = owner.get(f"/api/v1/vouchers/{g1}").json()
            assert (new["state"], new["replaces"]) == ("active", g0)
            done = owner.get("/api/v1/onboardings", params={"guid": g0}).json()
            assert done["total"] == 1 and done["items"][0]["new_guid"] == g1
        outcomes.append(winner.url)
    # Every voucher the owner holds: one active per device, its replaced one replacing.
    with stack.admin("owner") as owner:
        summary = owner.get("/api/v1/summary").json()["vouchers"]
    assert summary["active"] == PAIRS and summary["replacing"] == PAIRS
    assert summary["replaced"] == summary["superseded"] == 0
