"""A manufacturer, a rendezvous and an owner as FastAPI apps, reached through TestClient.

Each app serves ``transport.server.fdo_router`` over the in-memory stores of
``tests/fdo/flow.py``. :meth:`World.factory` is an ``http_client_factory`` for the
device driver: it routes each URL to the app for its host, records every URL asked
for, and fails the URLs listed in ``fail`` with a TransportError (or whatever
exception ``fail`` maps them to).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey
from fdo.di.manufacturer import DIManufacturer
from fdo.serviceinfo import restore_standard
from fdo.to1.rendezvous import TO1Rendezvous
from fdo.to2.owner import TO2Owner
from fdo.voucher import OwnershipVoucher
from tests.conftest import KeyPool
from tests.fdo.flow import NOW, Manufacturer, Owner, Rendezvous, make_manufacturer, run_to0
from transport.client import FdoHttpClient, TransportError
from transport.server import AnyServerMachine, MemorySessionStore, ProtocolHandler, fdo_router

MFR_URL = "http://mfr.example:8039"
RV_URL = "http://rv.example:8041"  # what make_manufacturer writes into the credential
OWNER_URL = "http://owner.example:8043"  # what run_to0 registers


def _app(handlers: dict[int, ProtocolHandler]) -> TestClient:
    app = FastAPI()
    app.include_router(fdo_router(handlers, MemorySessionStore()))
    return TestClient(app, base_url="http://testserver")


@dataclass
class World:
    mfr: Manufacturer
    mfr_key: PrivateKeyT
    owner_key: PrivateKeyT
    rv: Rendezvous = field(default_factory=Rendezvous)
    owner: Owner | None = None
    vouchers: list[OwnershipVoucher] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    clients: dict[str, TestClient] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mfr = self.mfr
        self.owner = Owner({"ec256": self.owner_key}, restore=restore_standard)
        owner = self.owner

        def keep(machine: AnyServerMachine) -> None:
            assert isinstance(machine, DIManufacturer) and machine.voucher is not None
            self.vouchers.append(machine.voucher)

        self.clients = {
            "mfr.example": _app(
                {
                    10: ProtocolHandler(
                        new=lambda: DIManufacturer(mfr, now=NOW),
                        restore=lambda s: DIManufacturer.from_state(s, mfr, now=NOW),
                        on_done=keep,
                    )
                }
            ),
            "rv.example": _app(
                {
                    30: ProtocolHandler(
                        new=lambda: TO1Rendezvous(self.rv),
                        restore=lambda s: TO1Rendezvous.from_state(s, self.rv),
                    )
                }
            ),
            "owner.example": _app(
                {
                    60: ProtocolHandler(
                        new=lambda: TO2Owner(owner),
                        restore=lambda s: TO2Owner.from_state(s, owner),
                        on_done=self._replace_voucher,
                    )
                }
            ),
        }

    def _replace_voucher(self, machine: AnyServerMachine) -> None:
        """What an owner service does after TO2: keep the replacement voucher."""
        assert isinstance(machine, TO2Owner) and self.owner is not None
        if machine.new_voucher is not None:
            if machine.guid is not None:
                self.owner.vouchers.pop(machine.guid, None)
            self.owner.vouchers[machine.new_voucher.guid] = machine.new_voucher

    def factory(self, url: str) -> FdoHttpClient:
        self.asked.append(url)
        if url in self.fail:
            raise self.fail[url]
        host = urlsplit(url).hostname or ""
        client = self.clients.get(host)
        if client is None:
            raise TransportError(f"POST {url}: ConnectError: no route to {host}")
        return FdoHttpClient(url, client=client)

    def hand_over(self, voucher: OwnershipVoucher, *, register: bool = True) -> None:
        """Extend the voucher to the owner, give it to the owner and (optionally) run TO0."""
        assert self.owner is not None
        extended = voucher.extend(self.mfr_key, PublicKey.from_key(self.owner_key.public_key()))
        self.owner.vouchers[extended.guid] = extended
        if register:
            self.register(extended)

    def register(self, voucher: OwnershipVoucher | None = None) -> None:
        assert self.owner is not None
        v = voucher or next(iter(self.owner.vouchers.values()))
        run_to0(self.rv, v, self.owner_key)


def make_world(key_pool: KeyPool) -> World:
    keys = {"ec256": key_pool.get("ec256", 0), "ec384": key_pool.get("ec384", 0)}
    return World(make_manufacturer(keys), keys["ec256"], key_pool.get("ec256", 2))


def device_after_di(world: World, key_pool: KeyPool, *, register: bool = True) -> DeviceCredential:
    """DI over HTTP, then the voucher handed over to the owner."""
    from device.onboard import run_di

    cred = run_di(
        MFR_URL,
        serial="SN-1",
        model="kiosk-v2",
        key=key_pool.get("ec256", 1),
        http_client_factory=world.factory,
    )
    world.hand_over(world.vouchers[-1], register=register)
    return cred
