"""Issue 4 end to end over real HTTP: an admin assigns images to groups, devices get them.

Group ``kiosk`` selects model ``kiosk-v2`` (image A, one config file); the default group
has image B. A ``kiosk-v2`` device and another device each run DI, then
``fdo device onboard --dry-run PLAN.json``: each plan holds its group's file, then
``bootc switch`` with its group's digest. Then the same with the real executor against
the fake ``bootc`` under a temporary root, and ``fdo device report`` marks the device
applied on the owner. A stock client (no bootc module) gets the image via fdo.command,
and a new revision reaches the next device only.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from device.credfile import write_credential
from fdo.serviceinfo import CommandDevice, DownloadDevice
from fdo.to2.device import TO2Device
from fdo_cli.main import app
from fdo_server.stack import Stack
from tests.device.test_apply import FAKE_BOOTC, FAKE_SYSTEMCTL
from tests.fdo.flow import sample_devmod
from transport.client import FdoHttpClient

runner = CliRunner()
IMAGE_A = "registry.example/kiosk@sha256:" + "a1" * 32
IMAGE_B = "registry.example/base@sha256:" + "b2" * 32
IMAGE_A2 = "registry.example/kiosk@sha256:" + "a3" * 32
KIOSK_CONF = "[kiosk]\nurl = https://example.com/\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("bootc-stack")) as running:
        with running.admin("owner") as owner:
            assert owner.post("/api/v1/groups", json={"name": "kiosk", "model": "kiosk-v2"}).status_code < 300
            revision = {
                "image": IMAGE_A,
                "apply_mode": "switch",
                "config": {
                    "files": [{"path": "/etc/kiosk/kiosk.conf", "mode": "0640", "content": KIOSK_CONF}]
                },
            }
            resp = owner.post("/api/v1/groups/kiosk/revisions", json=revision)
            assert resp.status_code < 300, resp.text
            assert (
                owner.post("/api/v1/groups", json={"name": "default", "is_default": True}).status_code < 300
            )
            base = {"image": IMAGE_B, "apply_mode": "switch", "config": {"files": []}}
            assert owner.post("/api/v1/groups/default/revisions", json=base).status_code < 300
        yield running


def device_with_credential(stack: Stack, tmp_path: Path, model: str, serial: str) -> Path:
    cred = stack.manufacture(serial=serial, model=model)
    stack.hand_off(str(cred.guid), "ec256")
    stack.wait_for_to0(str(cred.guid))
    path = tmp_path / f"{serial}.cred"
    write_credential(path, cred)
    return path


def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKE_BOOTC_STATE", str(tmp_path / "bootc"))
    monkeypatch.setenv("FAKE_SYSTEMCTL_STATE", str(tmp_path / "systemctl"))
    systemctl = tmp_path / "systemctl.py"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    return systemctl


@pytest.mark.parametrize(
    ("model", "files", "image"),
    [("kiosk-v2", ["/etc/kiosk/kiosk.conf"], IMAGE_A), ("other-v1", [], IMAGE_B)],
)
def test_plan_holds_the_groups_files_then_the_switch(
    stack: Stack, tmp_path: Path, model: str, files: list[str], image: str
) -> None:
    cred = device_with_credential(stack, tmp_path, model, f"PLAN-{model}")
    plan = tmp_path / "plan.json"
    out = runner.invoke(
        app,
        [
            "device", "onboard", "--credential", str(cred), "--root", str(tmp_path / "dl"),
            "--dry-run", str(plan), "--bootc", str(FAKE_BOOTC), "--state-dir", str(tmp_path / "state"),
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    actions = json.loads(plan.read_text())
    switch = [a for a in actions if a["action"] == "bootc-switch"]
    writes = [a["path"] for a in actions if a["action"] == "write-file"]
    assert writes == files
    assert len(switch) == 1 and switch[0]["digest"] == image.rpartition("@")[2]
    assert actions.index(switch[0]) > max(
        (actions.index(a) for a in actions if a["action"] == "write-file"), default=-1
    )


def test_real_apply_and_report(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    systemctl = fake_tools(tmp_path, monkeypatch)
    cred = device_with_credential(stack, tmp_path, "kiosk-v2", "APPLY-0001")
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    out = runner.invoke(
        app,
        [
            "device", "onboard", "--credential", str(cred), "--root", str(tmp_path / "dl"),
            "--apply-root", str(root), "--state-dir", str(state),
            "--bootc", str(FAKE_BOOTC), "--systemctl", str(systemctl),
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    conf = root / "etc" / "kiosk" / "kiosk.conf"
    assert conf.read_text() == KIOSK_CONF and stat.S_IMODE(conf.stat().st_mode) == 0o640
    bootc_state = json.loads((tmp_path / "bootc" / "state.json").read_text())
    assert bootc_state["booted"]["digest"] == IMAGE_A.rpartition("@")[2]

    out = runner.invoke(app, ["device", "report", "--state-dir", str(state), "--bootc", str(FAKE_BOOTC)])
    assert out.exit_code == 0, out.output
    assert "applied" in out.output
    from device.credfile import read_credential

    guid = str(read_credential(cred).guid)
    with stack.admin("owner") as owner:
        record = owner.get(f"/api/v1/devices/{guid}").json()
    assert record["status"] == "applied"
    assert [e["kind"] for e in record["events"]][-1] == "applied"


def test_wrong_digest_is_reported_failed(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemctl = fake_tools(tmp_path, monkeypatch)
    cred = device_with_credential(stack, tmp_path, "kiosk-v2", "FAIL-0001")
    state = tmp_path / "state"
    out = runner.invoke(
        app,
        [
            "device", "onboard", "--credential", str(cred), "--root", str(tmp_path / "dl"),
            "--apply-root", str(tmp_path), "--state-dir", str(state),
            "--bootc", str(FAKE_BOOTC), "--systemctl", str(systemctl),
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    # Something else booted: the owner must show the device failed, not done.
    rollback = runner.invoke(app, ["device", "report", "--state-dir", str(state), "--bootc", "/bin/false"])
    assert rollback.exit_code == 0, rollback.output
    assert "failed" in rollback.output


def test_stock_client_gets_the_image_through_fdo_command(stack: Stack, tmp_path: Path) -> None:
    from fdo.credential import DeviceCredential

    cred: DeviceCredential = stack.manufacture(serial="STOCK-0001", model="kiosk-v2")
    stack.hand_off(str(cred.guid), "ec256")
    stack.wait_for_to0(str(cred.guid))
    commands: list[list[str]] = []
    files: dict[str, bytes] = {}

    def run(argv: list[str]) -> tuple[int, bytes, bytes]:
        commands.append(argv)
        return 0, b"", b""

    from fdo.serviceinfo import DeviceServiceInfoDriver

    driver = DeviceServiceInfoDriver(
        sample_devmod("kiosk-v2"), [CommandDevice(run), DownloadDevice(files.__setitem__)]
    )
    machine = TO2Device(cred, service_info=driver, to1d=None)
    with httpx.Client(base_url=stack.url("owner")) as client:
        FdoHttpClient(stack.url("owner"), client=client).run(machine)
    assert machine.done
    assert files.get("/etc/kiosk/kiosk.conf") == KIOSK_CONF.encode()
    switches = [c for c in commands if c[:2] == ["bootc", "switch"]]
    assert switches and switches[-1][-1] == IMAGE_A


def test_new_revision_reaches_the_next_device_only(stack: Stack, tmp_path: Path) -> None:
    first = device_with_credential(stack, tmp_path, "kiosk-v2", "REV-0001")
    plan1 = tmp_path / "plan1.json"
    args = ["--root", str(tmp_path / "dl"), "--bootc", str(FAKE_BOOTC), "--state-dir", str(tmp_path / "s1")]
    out = runner.invoke(
        app, ["device", "onboard", "--credential", str(first), "--dry-run", str(plan1), *args]
    )
    assert out.exit_code == 0, out.output
    from device.credfile import read_credential

    first_guid = str(read_credential(first).guid)
    with stack.admin("owner") as owner:
        before = owner.get(f"/api/v1/devices/{first_guid}").json()
        resp = owner.post("/api/v1/groups/kiosk/revisions", json={"image": IMAGE_A2, "apply_mode": "switch"})
        assert resp.status_code < 300, resp.text
        # Onboarded devices and no rollout policy: the target stays until a rollout
        # of the new revision starts (docs/rollouts.md); from then on the next
        # onboarding device gets it.
        published = resp.json()
        assert published["behind"] >= 1 and published["target_revision"] == before["desired_revision"]
        started = owner.post("/api/v1/groups/kiosk/rollouts", json={"revision": published["number"]})
        assert started.status_code == 201, started.text

    second = device_with_credential(stack, tmp_path, "kiosk-v2", "REV-0002")
    plan2 = tmp_path / "plan2.json"
    out = runner.invoke(
        app, ["device", "onboard", "--credential", str(second), "--dry-run", str(plan2), *args]
    )
    assert out.exit_code == 0, out.output
    digest = [a["digest"] for a in json.loads(plan2.read_text()) if a["action"] == "bootc-switch"]
    assert digest == [IMAGE_A2.rpartition("@")[2]]
    with stack.admin("owner") as owner:
        after = owner.get(f"/api/v1/devices/{first_guid}").json()
    assert after["revision"] == before["revision"]
