"""Alternate messages of one TO2 session go to two owner app instances sharing a database.

Nothing of a session may live in process memory: every message is served by the other
instance than the previous one, and the device still onboards.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to2.device import TO2Device
from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from owner.app import create_app
from tests.conftest import KeyPool
from tests.fdo.flow import sample_devmod
from tests.owner.helpers import BASE, make_world, token
from transport.client import FdoHttpClient


class Alternating(httpx.BaseTransport):
    """Sends each request to the next of several transports in turn."""

    def __init__(self, transports: list[httpx.BaseTransport]) -> None:
        self._next = itertools.cycle(transports)
        self.used: list[int] = []
        self._ids = {id(t): i for i, t in enumerate(transports)}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = next(self._next)
        self.used.append(self._ids[id(transport)])
        return transport.handle_request(request)


def test_to2_alternating_between_two_instances(key_pool: KeyPool, tmp_path: Path, database_url: str) -> None:
    world = make_world(key_pool, tmp_path)
    settings = world.settings(database_url)
    first, second = create_app(settings), create_app(settings)
    credential, voucher = world.device()
    with TestClient(first, base_url=BASE) as one, TestClient(second, base_url=BASE) as two:
        headers = token(first, Role.OPERATOR)
        assert (
            one.post("/api/v1/vouchers", content=vouchers_to_pem([voucher]), headers=headers).status_code
            == 200
        )

        alternating = Alternating([one._transport, two._transport])
        with httpx.Client(base_url=BASE, transport=alternating) as client:
            machine = TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None)
            FdoHttpClient(BASE, client=client).run(machine)

        assert machine.done and machine.new_credential is not None
        assert len(alternating.used) >= 6 and alternating.used[:4] == [0, 1, 0, 1]
        row = two.get(f"/api/v1/vouchers/{machine.new_credential.guid}", headers=headers).json()
        assert row["state"] == "active" and row["replaces"] == str(voucher.guid)
