"""Owner test helpers: keys on disk, vouchers extended to the owner, apps and tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey, private_key_to_pem
from fdo.to0.rendezvous import TO0Rendezvous
from fdo.voucher import OwnershipVoucher
from fdo_server.auth import Role, create_token
from fdo_server.db import unit_of_work
from owner.settings import OwnerSettings
from tests.conftest import KeyPool, migrated
from tests.fdo.flow import Manufacturer, Rendezvous, make_manufacturer, run_di
from transport.server import AnyServerMachine, MemorySessionStore, ProtocolHandler, fdo_router

BASE = "http://testserver"


@dataclass
class World:
    mfr: Manufacturer
    owner_keys: dict[str, PrivateKeyT]
    key_files: dict[str, Path]
    pool: KeyPool
    serial: int = 0

    def device_unextended(self) -> tuple[DeviceCredential, OwnershipVoucher]:
        """A fresh P-256 device (DI) and its voucher, not yet extended."""
        self.serial += 1
        return run_di(self.mfr, self.pool.get("ec256", 10 + self.serial), f"SN-{self.serial}")

    def device(self) -> tuple[DeviceCredential, OwnershipVoucher]:
        """A fresh device whose voucher is extended to our P-256 owner key."""
        credential, voucher = self.device_unextended()
        owner = PublicKey.from_key(self.owner_keys["ec256"].public_key())
        return credential, voucher.extend(self.mfr.keys["ec256"], owner)

    def settings(self, database_url: str, *, migrate: bool = True, **extra: object) -> OwnerSettings:
        """Owner settings on ``database_url``, migrated to head first unless ``migrate`` is off."""
        values: dict[str, object] = {
            "database_url": migrated(database_url, "owner") if migrate else database_url,
            "keys": self.key_files,
            "to2_urls": ["http://owner.example:8043"],
            "to0_enabled": False,
        }
        values.update(extra)
        return OwnerSettings.model_validate(values)


def make_world(pool: KeyPool, tmp_path: Path) -> World:
    mfr = make_manufacturer({"ec256": pool.get("ec256", 0), "ec384": pool.get("ec384", 0)})
    owner_keys = {"ec256": pool.get("ec256", 3), "ec384": pool.get("ec384", 3)}
    files = {}
    for kind, key in owner_keys.items():
        path = tmp_path / f"owner-{kind}.pem"
        path.write_bytes(private_key_to_pem(key))
        files[kind] = path
    return World(mfr, owner_keys, files, pool)


def token(app: FastAPI, role: Role) -> dict[str, str]:
    with unit_of_work(app.state.engine) as db:
        value = create_token(db, f"test-{role}", role)
    return {"Authorization": f"Bearer {value}"}


def form_csrf(page: str) -> str:
    """The CSRF token of the first form on a console page."""
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def ui_sign_in(http: httpx.Client, token: str) -> str:
    """Sign ``http`` in to the owner's status page with admin ``token``, as a browser does
    (the sign-in form, its CSRF token); the status page it lands on."""
    csrf = form_csrf(http.get("/ui").text)
    response = http.post("/ui/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui", response.text
    page = http.get("/ui")
    assert page.status_code == 200 and "Devices by status" in page.text, page.text
    return page.text


@dataclass
class RendezvousStub:
    """A TO0 rendezvous server (in memory) that counts registrations per GUID."""

    rv: Rendezvous = field(default_factory=lambda: Rendezvous(max_wait_seconds=3600))
    count: dict[str, int] = field(default_factory=dict)
    app: FastAPI = field(default_factory=FastAPI)

    def __post_init__(self) -> None:
        def register(machine: AnyServerMachine) -> None:
            assert isinstance(machine, TO0Rendezvous) and machine.registration is not None
            self.rv.registrations[machine.registration.guid] = machine.registration
            key = str(machine.registration.guid)
            self.count[key] = self.count.get(key, 0) + 1

        rv = self.rv
        handlers = {
            20: ProtocolHandler(
                new=lambda: TO0Rendezvous(rv),
                restore=lambda s: TO0Rendezvous.from_state(s, rv),
                on_done=register,
            )
        }
        self.app.include_router(fdo_router(handlers, MemorySessionStore()))

    def client(self) -> TestClient:
        return TestClient(self.app)
