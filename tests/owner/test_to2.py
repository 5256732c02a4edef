"""TO2 over HTTP against the owner app: ServiceInfo modules, replacement voucher, reuse, bad device."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fdo.credential import DeviceCredential
from fdo.errors import ErrorCode, PeerError
from fdo.serviceinfo import CommandDevice, DeviceServiceInfoDriver, DownloadDevice
from fdo.to2.device import TO2Device
from fdo.types import Guid
from fdo.voucher import OwnershipVoucher, vouchers_to_pem
from fdo_cli.main import app as fdo_app
from fdo_server.auth import Role
from owner.app import create_app
from tests.cli_tables import parse_table
from tests.conftest import KeyPool
from tests.fdo.flow import sample_devmod
from tests.owner.helpers import BASE, World, make_world, token
from transport.client import FdoHttpClient


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


def service_info_file(tmp_path: Path) -> Path:
    (tmp_path / "motd").write_bytes(b"welcome\n" * 300)
    path = tmp_path / "si.toml"
    path.write_text(
        '[[download]]\npath = "/etc/motd"\nsource = "motd"\n\n'
        '[[command]]\ncommand = "/usr/bin/echo"\nargs = ["hello"]\n'
    )
    return path


@dataclasses.dataclass
class DeviceSide:
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    commands: list[list[str]] = dataclasses.field(default_factory=list)

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def run(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        self.commands.append(argv)
        return 0, b"hello\n", b""

    def machine(self, credential: DeviceCredential) -> TO2Device:
        driver = DeviceServiceInfoDriver(
            sample_devmod(), [DownloadDevice(self.write), CommandDevice(self.run)]
        )
        return TO2Device(credential, service_info=driver, to1d=None)


def onboard(
    world: World, database_url: str, tmp_path: Path, *, reuse: bool
) -> tuple[TestClient, DeviceSide, TO2Device, OwnershipVoucher, dict[str, str]]:
    app = create_app(
        world.settings(database_url, credential_reuse=reuse, service_info=service_info_file(tmp_path))
    )
    http = TestClient(app, base_url=BASE)
    credential, voucher = world.device()
    headers = token(app, Role.OPERATOR)
    assert (
        http.post("/api/v1/vouchers", content=vouchers_to_pem([voucher]), headers=headers).status_code == 200
    )
    device = DeviceSide()
    machine = device.machine(credential)
    FdoHttpClient(BASE, client=http).run(machine)
    assert machine.done and machine.new_credential is not None
    return http, device, machine, voucher, headers


def test_to2_replaces_credential_and_links_vouchers(
    world: World, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, device, machine, voucher, headers = onboard(world, database_url, tmp_path, reuse=False)
    assert device.files == {"/etc/motd": b"welcome\n" * 300}
    assert device.commands == [["/usr/bin/echo", "hello"]]
    new = machine.new_credential
    assert new is not None and new.guid != voucher.guid

    old_row = http.get(f"/api/v1/vouchers/{voucher.guid}", headers=headers).json()
    new_row = http.get(f"/api/v1/vouchers/{new.guid}", headers=headers).json()
    # Until the device shows it holds the new credential, the old one stays usable
    # (and registered): the Done2 reply may have been lost (owner.lifecycle).
    assert old_row["state"] == "replacing" and old_row["replaced_by"] == str(new.guid)
    assert new_row["state"] == "active" and new_row["replaces"] == str(voucher.guid)
    assert old_row["to0"] is not None and new_row["to0"] is not None

    (record,) = http.get("/api/v1/onboardings", headers=headers).json()["items"]
    assert record["guid"] == str(voucher.guid) and record["new_guid"] == str(new.guid)
    for either in (voucher.guid, new.guid):
        found = http.get("/api/v1/onboardings", params={"guid": str(either)}, headers=headers).json()
        assert found["total"] == 1 and found["items"] == [record]
    other = http.get("/api/v1/onboardings", params={"guid": str(Guid(os.urandom(16)))}, headers=headers)
    assert other.json() == {"total": 0, "offset": 0, "items": []}
    assert http.get("/api/v1/onboardings", params={"guid": "nope"}, headers=headers).status_code == 400
    assert record["devmod"]["os"] == "Linux"
    download, command = record["modules"]
    assert download["module"] == "fdo.download" and download["ok"] is True
    assert command["module"] == "fdo.command" and command["exitcode"] == 0 and command["stdout"] == "hello\n"

    # The same through `fdo owner devices onboardings`.
    monkeypatch.setattr(httpx, "request", lambda method, url, timeout, **kw: http.request(method, url, **kw))
    token = headers["Authorization"].removeprefix("Bearer ")
    argv = ["owner", "devices", "onboardings", "--url", BASE, "--token", token, "--guid", str(new.guid)]
    result = CliRunner().invoke(fdo_app, argv)
    assert result.exit_code == 0, result.output
    rows, footer = parse_table(result.output)
    assert [(r["GUID"], r["NEW GUID"], r["MODULES"]) for r in rows] == [
        (str(voucher.guid), str(new.guid), "fdo.download=ok, fdo.command=ok")
    ]
    assert footer == "1 of 1 onboardings"
    result = CliRunner().invoke(fdo_app, ["owner", "status", "--url", BASE, "--token", token])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "devices   new=0  onboarding=0  onboarded=1  undelivered=0  applied=0  failed=0"
    assert lines[1] == "vouchers  active=1  replacing=1  replaced=0  superseded=0  handed_on=0"
    assert lines[2].startswith("TO0       pending=") and "failing=0" in lines[2]


def test_to2_credential_reuse(world: World, database_url: str, tmp_path: Path) -> None:
    http, device, machine, voucher, headers = onboard(world, database_url, tmp_path, reuse=True)
    assert machine.reused and machine.new_credential is not None
    assert machine.new_credential.guid == voucher.guid
    row = http.get(f"/api/v1/vouchers/{voucher.guid}", headers=headers).json()
    assert row["state"] == "active" and row["replaced_by"] is None
    assert http.get("/api/v1/vouchers", headers=headers).json()["total"] == 1
    (record,) = http.get("/api/v1/onboardings", headers=headers).json()["items"]
    assert record["new_guid"] is None and len(device.commands) == 1


def test_to2_wrong_device_key(world: World, database_url: str) -> None:
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    credential, voucher = world.device()
    headers = token(app, Role.OPERATOR)
    assert (
        http.post("/api/v1/vouchers", content=vouchers_to_pem([voucher]), headers=headers).status_code == 200
    )
    impostor = dataclasses.replace(credential, private_key=world.pool.get("ec256", 99))
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=http).run(DeviceSide().machine(impostor))
    assert info.value.peer_code == ErrorCode.INVALID_MESSAGE_ERROR
    assert http.get("/api/v1/onboardings", headers=headers).json()["items"] == []


def test_to2_unknown_device(world: World, database_url: str) -> None:
    http = TestClient(create_app(world.settings(database_url)), base_url=BASE)
    credential, _ = world.device()
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=http).run(DeviceSide().machine(credential))
    assert info.value.peer_code == ErrorCode.RESOURCE_NOT_FOUND
