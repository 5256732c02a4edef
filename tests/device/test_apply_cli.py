"""``fdo device onboard`` with the bootc module: DI, TO2 carrying a group's assignment, then
``--dry-run PLAN.json`` or a real apply against the fake bootc under a temporary root.

The owner picks the assignment by the model the device reports (a stand-in for the
owner's groups, built elsewhere).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

import device.onboard
from fdo.serviceinfo import CommandOwner, DownloadOwner, OwnerModule, UploadOwner, module_restorer
from fdo.serviceinfo.bootc import ApplyMode, Assignment, BootcOwner, FileItem, ImageRef
from fdo.serviceinfo.devmod import Devmod
from fdo.types import Guid
from fdo_cli.main import app
from tests.conftest import KeyPool
from tests.device.test_apply import FAKE_BOOTC, FAKE_SYSTEMCTL
from tests.device.world import MFR_URL, World, make_world

runner = CliRunner()

GROUPS = {
    "kiosk-v1": Assignment(
        files=(FileItem(path="/etc/kiosk/v1.toml", content=b"v = 1\n"),),
        image=ImageRef(ref="quay.io/example/kiosk@sha256:" + "11" * 32, revision=1),
    ),
    "kiosk-v2": Assignment(
        files=(
            FileItem(path="/etc/kiosk/app.toml", content=b"v = 2\n", mode=0o640),
            FileItem(path="/etc/kiosk/large.bin", content=os.urandom(20_000), mode=0o600),
        ),
        image=ImageRef(ref="quay.io/example/kiosk@sha256:" + "22" * 32, revision=2, apply=ApplyMode.STAGE),
    ),
}


def bootc_world(key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> World:
    """A device world whose owner hands every device its model's GROUPS assignment
    through the bootc module (no sleeping between onboarding rounds)."""
    w = make_world(key_pool)
    monkeypatch.setattr(device.onboard, "default_client_factory", lambda **kw: w.factory)
    monkeypatch.setattr("device.onboard.time.sleep", lambda s: None)

    def modules(guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
        return [BootcOwner(GROUPS[devmod.device])]

    assert w.owner is not None
    w.owner.modules = modules
    w.owner.restore = module_restorer(BootcOwner, CommandOwner, DownloadOwner, UploadOwner)
    return w


@pytest.fixture
def world(key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> World:
    return bootc_world(key_pool, monkeypatch)


def di(world: World, path: Path, model: str) -> None:
    out = runner.invoke(
        app,
        ["device", "di", "--url", MFR_URL, "--credential", str(path), "--serial", "SN-1", "--model", model],
    )
    assert out.exit_code == 0, out.output
    world.hand_over(world.vouchers[-1])


@pytest.mark.parametrize("model", ["kiosk-v1", "kiosk-v2"])
def test_onboard_dry_run_writes_the_groups_plan(world: World, tmp_path: Path, model: str) -> None:
    cred = tmp_path / "cred.bin"
    di(world, cred, model)
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
    group = GROUPS[model]
    assert group.image is not None
    assert [a["action"] for a in actions] == ["write-file"] * len(group.files) + ["bootc-switch"]
    assert [a["path"] for a in actions[:-1]] == [f.path for f in group.files]
    assert actions[-1]["digest"] == group.image.digest
    # A dry run onboards: it says so, and keeps the assignment for a later real apply.
    assert "dry run: the device is onboarded (credential replaced)" in out.output
    assert f"assignment stored in {tmp_path / 'state'}, nothing applied" in out.output
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["assignment.cbor"]


def test_dry_run_then_apply_switches_the_image(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BOOTC_STATE", str(tmp_path / "bootc"))
    cred, state, root = tmp_path / "cred.bin", tmp_path / "state", tmp_path / "root"
    root.mkdir()
    di(world, cred, "kiosk-v1")
    before = cred.read_bytes()
    common = ["--state-dir", str(state), "--bootc", str(FAKE_BOOTC)]
    dry = ["device", "onboard", "--credential", str(cred), "--root", str(tmp_path / "dl")]
    out = runner.invoke(app, [*dry, "--dry-run", str(tmp_path / "plan.json"), *common])
    assert out.exit_code == 0, out.output
    assert cred.read_bytes() != before  # the credential was replaced: a dry run onboards
    assert not (tmp_path / "bootc" / "state.json").exists()  # but nothing was applied
    assert not (root / "etc").exists()

    out = runner.invoke(app, ["device", "apply", "--root", str(root), *common])
    assert out.exit_code == 0, out.output
    assert "assignment applied: 2 action(s), 0 already done" in out.output
    group = GROUPS["kiosk-v1"]
    assert group.image is not None
    status = json.loads((tmp_path / "bootc" / "state.json").read_text())
    assert status["staged"]["image"] == group.image.ref
    assert status["staged"]["digest"] == group.image.digest
    assert (root / "etc" / "kiosk" / "v1.toml").read_bytes() == b"v = 1\n"


def test_onboard_applies_with_the_real_executor(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BOOTC_STATE", str(tmp_path / "bootc"))
    monkeypatch.setenv("FAKE_SYSTEMCTL_STATE", str(tmp_path / "systemctl"))
    systemctl = tmp_path / "systemctl.py"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    cred = tmp_path / "cred.bin"
    di(world, cred, "kiosk-v2")
    root = tmp_path / "root"
    root.mkdir()
    args = [
        "device", "onboard", "--credential", str(cred), "--root", str(tmp_path / "dl"), "--json",
        "--apply-root", str(root), "--state-dir", str(tmp_path / "state"),
        "--bootc", str(FAKE_BOOTC), "--systemctl", str(systemctl),
    ]  # fmt: skip
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["assignment"] is True and len(data["applied"]) == 3
    group = GROUPS["kiosk-v2"]
    for f in group.files:
        path = root / f.path.lstrip("/")
        assert path.read_bytes() == f.content
        assert stat.S_IMODE(path.stat().st_mode) == f.mode
    status = json.loads((tmp_path / "bootc" / "state.json").read_text())
    assert group.image is not None
    assert status["staged"]["digest"] == group.image.digest

    # resuming from the state folder finds nothing left to do
    again = runner.invoke(
        app,
        [
            "device", "apply", "--state-dir", str(tmp_path / "state"), "--root", str(root),
            "--bootc", str(FAKE_BOOTC), "--systemctl", str(systemctl),
        ],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "0 action(s), 3 already done" in again.output
