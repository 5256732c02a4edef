"""Handing a device on (resale) over real HTTP: two owners, one rendezvous, one manufacturer.

The device does DI, its voucher goes to owner A and it onboards with A. Then A's
operator extends the device's current voucher (the replacement when credential reuse is
off, the imported one when it is on) to owner B's key with ``fdo owner vouchers
extend``; B imports the PEM, registers it with the rendezvous by TO0, and the device,
with the credential it holds, onboards with B. After the hand-on A refuses TO2 for the
GUID with an FDO error, keeps no TO0 work for it, has audited it, and refuses a second
hand-on; a key of the wrong kind was refused before anything changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fdo.credential import DeviceCredential
from fdo.crypto import KEY_KINDS, PrivateKeyT, generate_key, private_key_to_pem, public_key_to_pem, spki_der
from fdo.errors import ErrorCode, PeerError
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to2.device import TO2Device
from fdo.voucher import OwnershipVoucher
from fdo_cli.main import app as fdo_app
from fdo_server.auth import Role, create_token
from fdo_server.db import make_engine, unit_of_work
from fdo_server.launcher import ServiceProcess, free_port
from fdo_server.migrate import upgrade
from fdo_server.stack import Stack
from tests.cli_tables import parse_table
from tests.conftest import database_backends, open_database
from tests.fdo.flow import sample_devmod
from transport.client import FdoHttpClient

CASES = [(backend, reuse) for backend in database_backends() for reuse in (False, True)]
_serial = itertools.count(1)
runner = CliRunner()


@dataclass
class SecondOwner:
    """Owner B: its own keys, database and admin token, served under uvicorn."""

    workdir: Path
    database_url: str
    env: dict[str, str]
    keys: dict[str, PrivateKeyT] = field(default_factory=dict)
    token: str = ""
    process: ServiceProcess | None = None

    def __enter__(self) -> SecondOwner:
        self.workdir.mkdir(parents=True, exist_ok=True)
        files = {}
        for kind in KEY_KINDS:
            self.keys[kind] = generate_key(kind)
            path = self.workdir / f"owner-b-{kind}.key"
            path.write_bytes(private_key_to_pem(self.keys[kind]))
            files[kind] = str(path)
        engine = make_engine(self.database_url)
        try:
            upgrade(engine, "owner")
            with unit_of_work(engine) as db:
                self.token = create_token(db, "owner-b-bootstrap", Role.ADMIN)
        finally:
            engine.dispose()
        port = free_port()
        self.process = ServiceProcess(
            name="owner-b",
            factory="owner.app:app_from_env",
            env={
                "FDO_OWNER_DATABASE_URL": self.database_url,
                "FDO_OWNER_KEYS": json.dumps(files),
                "FDO_OWNER_TO2_URLS": json.dumps([f"http://127.0.0.1:{port}"]),
                "FDO_OWNER_TO0_RETRY_SECONDS": "1",
                **self.env,
            },
            port=port,
            log_path=self.workdir / "owner-b.log",
        )
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def url(self) -> str:
        assert self.process is not None
        return self.process.url

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


@pytest.fixture(scope="module", params=CASES, ids=[f"{b}-{'reuse' if r else 'replace'}" for b, r in CASES])
def owners(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, SecondOwner, bool]]:
    backend, reuse = request.param
    workdir = tmp_path_factory.mktemp(f"resale-{backend}-{reuse}")
    names = ("manufacturer", "rendezvous", "owner", "owner_b")
    dbs = [open_database(backend, workdir, name) for name in names]
    urls = {name: db.__enter__() for name, db in zip(names, dbs, strict=True)}
    env = {"FDO_OWNER_CREDENTIAL_REUSE": "true" if reuse else "false"}
    try:
        with (
            Stack(workdir, database_urls=urls, owner_env=env) as stack,
            SecondOwner(workdir / "owner-b", urls["owner_b"], env) as b,
        ):
            yield stack, b, reuse
    finally:
        for db in dbs:
            db.__exit__()


def _wait_for_to0(client: httpx.Client, guid: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = client.get(f"/api/v1/vouchers/{guid}").json()
        if (info.get("to0") or {}).get("registered_until"):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"TO0 did not complete for {guid}: {info}")
        time.sleep(0.1)


def _to2_directly(url: str, credential: DeviceCredential) -> None:
    """A TO2 with ``credential`` straight to the owner at ``url`` (no TO1)."""
    machine = TO2Device(credential, service_info=DeviceServiceInfoDriver(sample_devmod(), []), to1d=None)
    FdoHttpClient(url, timeout=30.0).run(machine)


def test_device_is_handed_on_to_a_second_owner(
    owners: tuple[Stack, SecondOwner, bool], tmp_path: Path
) -> None:
    stack, b, reuse = owners
    serial = f"RESALE-{next(_serial):04d}"
    credential = stack.manufacture(key_type="ec256", serial=serial, model="kiosk-v2")
    stack.hand_off(str(credential.guid), "ec256")
    stack.wait_for_to0(str(credential.guid))

    # First life: the device onboards with owner A.
    first = stack.onboard(credential, root=tmp_path / "root-a", run=lambda argv: (0, b"", b""))
    assert first.owner_url == stack.url("owner") and first.reused == reuse
    held = first.credential  # what the device keeps for its next onboarding
    current = str(held.guid)
    assert (current == str(credential.guid)) == reuse

    a_args = ["--url", stack.url("owner"), "--token", stack.tokens["owner"]]
    b_key = tmp_path / "owner-b-ec256.pub"
    b_key.write_bytes(public_key_to_pem(b.keys["ec256"].public_key()))
    out = tmp_path / "handed-on.pem"

    # A key of another kind than the voucher's is refused and changes nothing.
    wrong = tmp_path / "owner-b-ec384.pub"
    wrong.write_bytes(public_key_to_pem(b.keys["ec384"].public_key()))
    cmd = ["owner", "vouchers", "extend", current, "--owner-key", str(wrong), "--out", str(out), *a_args]
    result = runner.invoke(fdo_app, cmd)
    assert result.exit_code == 1 and "HTTP 422" in result.output and "ec384" in result.output
    assert not out.exists()
    with stack.admin("owner") as a:
        assert a.get(f"/api/v1/vouchers/{current}").json()["state"] == "active"

    # A hands the device's current voucher on to B's key.
    cmd = ["owner", "vouchers", "extend", current, "--owner-key", str(b_key), "--out", str(out), *a_args]
    result = runner.invoke(fdo_app, cmd)
    assert result.exit_code == 0, result.output
    assert f"{current}: handed on" in result.output
    (voucher,) = OwnershipVoucher.from_pem(out.read_text())
    voucher.verify(owner_key=b.keys["ec256"].public_key())
    # Reuse: manufacturer's entry to A, then A's to B. Replacement: A's entry to itself
    # (made at TO2.Done), then A's to B.
    assert str(voucher.guid) == current and len(voucher.entries) == 2

    b_fingerprint = hashlib.sha256(spki_der(b.keys["ec256"].public_key())).hexdigest()
    with stack.admin("owner") as a:
        row = a.get(f"/api/v1/vouchers/{current}").json()
        assert row["state"] == "handed_on" and row["to0"] is None
        assert row["entries"] == len(voucher.entries) and row["owner_key_fingerprint"] == b_fingerprint
        assert a.get(f"/api/v1/vouchers/{current}/pem").text == out.read_text()
        entries = a.get("/api/v1/audit", params={"action": "voucher.hand_on"}).json()["items"]
        assert [(e["target"], e["detail"]["owner_key_fingerprint"]) for e in entries] == [
            (current, b_fingerprint)
        ]
        assert a.get("/api/v1/summary").json()["vouchers"]["handed_on"] == 1
    # ... and no longer answers TO2 for it, with an FDO error.
    with pytest.raises(PeerError) as refused:
        _to2_directly(stack.url("owner"), held)
    assert refused.value.peer_code == ErrorCode.RESOURCE_NOT_FOUND
    # A second hand-on is refused, naming the state.
    again = tmp_path / "again.pem"
    cmd = ["owner", "vouchers", "extend", current, "--owner-key", str(b_key), "--out", str(again), *a_args]
    result = runner.invoke(fdo_app, cmd)
    assert result.exit_code == 1 and "HTTP 409" in result.output and "handed_on" in result.output
    assert not again.exists()
    result = runner.invoke(fdo_app, ["owner", "vouchers", "list", *a_args])
    assert result.exit_code == 0, result.output
    assert [r["STATE"] for r in parse_table(result.output)[0] if r["GUID"] == current] == ["handed_on"]
    result = runner.invoke(fdo_app, ["owner", "vouchers", "show", current, "-o", "json", *a_args])
    assert result.exit_code == 0 and json.loads(result.output)["state"] == "handed_on"

    # B imports the voucher and registers it with the rendezvous by TO0.
    b_args = ["--url", b.url, "--token", b.token]
    result = runner.invoke(fdo_app, ["owner", "vouchers", "import", str(out), *b_args])
    assert result.exit_code == 0, result.output
    with b.admin() as client:
        assert _wait_for_to0(client, current)["state"] == "active"

    # Second life: the device, with the credential it holds, finds B and onboards.
    second = stack.onboard(held, root=tmp_path / "root-b", run=lambda argv: (0, b"", b""))
    assert second.owner_url == b.url and second.previous_guid == current
    with b.admin() as client:
        done = client.get("/api/v1/onboardings", params={"guid": current}).json()["items"]
        assert [d["guid"] for d in done] == [current]
        # Replacement: B keeps the imported voucher usable until the device confirms.
        assert client.get(f"/api/v1/vouchers/{current}").json()["state"] == (
            "active" if reuse else "replacing"
        )
    with stack.admin("owner") as a:  # A saw only the first onboarding
        assert a.get("/api/v1/onboardings", params={"guid": current}).json()["total"] == 1
