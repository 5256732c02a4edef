"""``FDO_DEVICE_*`` environment variables for the device commands' options, and DI from DMI.

Each variable is set (never the option) and its effect is checked: the file written
where the variable says, the identity it names, the program it names run. ``--help``
names every variable. ``di --if-missing`` (the first-boot DI unit) reads serial and
model from a fake DMI folder.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from device.credfile import read_credential
from fdo_cli.main import app
from tests.conftest import KeyPool
from tests.device.test_apply import FAKE_BOOTC, FAKE_SYSTEMCTL
from tests.device.test_apply_cli import GROUPS, bootc_world
from tests.device.world import MFR_URL, World

runner = CliRunner()

#: The variables each command's --help must name.
HELP = {
    "di": [
        "FDO_DEVICE_CREDENTIAL", "FDO_DEVICE_MANUFACTURER_URL", "FDO_DEVICE_KEY_TYPE", "FDO_DEVICE_SERIAL",
        "FDO_DEVICE_MODEL", "FDO_DEVICE_CA_BUNDLE", "FDO_DEVICE_DMI_DIR",
    ],
    "onboard": [
        "FDO_DEVICE_CREDENTIAL", "FDO_DEVICE_CA_BUNDLE", "FDO_DEVICE_FILES_ROOT", "FDO_DEVICE_MAX_ATTEMPTS",
        "FDO_DEVICE_APPLY_ROOT", "FDO_DEVICE_STATE_DIR", "FDO_DEVICE_BOOTC", "FDO_DEVICE_SYSTEMCTL",
        "FDO_DEVICE_SERIAL", "FDO_DEVICE_ONBOARDED_FILE",
    ],
    "apply": ["FDO_DEVICE_STATE_DIR", "FDO_DEVICE_APPLY_ROOT", "FDO_DEVICE_BOOTC", "FDO_DEVICE_SYSTEMCTL"],
    "report": ["FDO_DEVICE_STATE_DIR", "FDO_DEVICE_BOOTC", "FDO_DEVICE_CA_BUNDLE"],
    "show": ["FDO_DEVICE_CREDENTIAL"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FDO_DEVICE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def world(key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> World:
    return bootc_world(key_pool, monkeypatch)


@pytest.mark.parametrize("command", list(HELP))
def test_help_names_every_variable(command: str) -> None:
    out = runner.invoke(app, ["device", command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    for name in HELP[command]:
        assert f"env var: {name}" in out.output, (command, name)


def test_every_option_from_the_environment(world: World, tmp_path: Path) -> None:
    cred, state, root, files = (
        tmp_path / "c" / "device.cred",
        tmp_path / "state",
        tmp_path / "root",
        tmp_path / "dl",
    )
    stamp = tmp_path / "onboarded"
    systemctl = tmp_path / "systemctl.py"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    cred.parent.mkdir()
    root.mkdir()
    bundle = tmp_path / "ca.pem"
    base = {"FAKE_BOOTC_STATE": str(tmp_path / "bootc"), "FAKE_SYSTEMCTL_STATE": str(tmp_path / "sc")}

    # A CA bundle that does not exist is refused: the variable is read.
    env = {**base, "FDO_DEVICE_CREDENTIAL": str(cred), "FDO_DEVICE_MANUFACTURER_URL": MFR_URL}
    out = runner.invoke(app, ["device", "di"], env={**env, "FDO_DEVICE_CA_BUNDLE": str(bundle)})
    assert out.exit_code == 1 and f"CA bundle {bundle} is not a readable file" in out.output
    other = tmp_path / "ec384.cred"
    out = runner.invoke(
        app,
        ["device", "di"],
        env={**env, "FDO_DEVICE_CREDENTIAL": str(other), "FDO_DEVICE_KEY_TYPE": "ec384"},
    )
    assert out.exit_code == 0, out.output
    shown = runner.invoke(app, ["device", "show", "--json"], env={"FDO_DEVICE_CREDENTIAL": str(other)})
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["key_type"] == "ec384"
    env |= {"FDO_DEVICE_SERIAL": "ENV-SN", "FDO_DEVICE_MODEL": "kiosk-v2"}
    out = runner.invoke(app, ["device", "di"], env=env)
    assert out.exit_code == 0, out.output
    made = read_credential(cred)
    assert (made.serial, made.device_info) == ("ENV-SN", "kiosk-v2")
    world.hand_over(world.vouchers[-1])

    env = {
        **base,
        "FDO_DEVICE_CREDENTIAL": str(cred),
        "FDO_DEVICE_FILES_ROOT": str(files),
        "FDO_DEVICE_APPLY_ROOT": str(root),
        "FDO_DEVICE_STATE_DIR": str(state),
        "FDO_DEVICE_BOOTC": str(FAKE_BOOTC),
        "FDO_DEVICE_SYSTEMCTL": str(systemctl),
        "FDO_DEVICE_ONBOARDED_FILE": str(stamp),
        "FDO_DEVICE_MAX_ATTEMPTS": "1",
        "FDO_DEVICE_SERIAL": "ENV-SN-2",
    }
    out = runner.invoke(app, ["device", "onboard", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["rounds"] == 1
    assert read_credential(cred).guid != made.guid and read_credential(cred).serial == "ENV-SN-2"
    group = GROUPS["kiosk-v2"]
    assert group.image is not None
    for item in group.files:
        assert (root / item.path.lstrip("/")).read_bytes() == item.content
    assert (state / "assignment.cbor").is_file() and stamp.is_file()
    status = json.loads((tmp_path / "bootc" / "state.json").read_text())
    assert status["staged"]["digest"] == group.image.digest

    out = runner.invoke(app, ["device", "apply"], env=env)
    assert out.exit_code == 0, out.output
    assert "0 action(s), 3 already done" in out.output
    empty = tmp_path / "empty"
    out = runner.invoke(app, ["device", "report"], env={**env, "FDO_DEVICE_STATE_DIR": str(empty)})
    assert out.exit_code == 1 and f"no assignment with a status URL stored in {empty}" in out.output


def write_dmi(folder: Path, serial: str, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "product_serial").write_text(serial + "\n")
    (folder / "product_name").write_text(model + "\n")
    return folder


def test_di_if_missing_reads_dmi_once(world: World, tmp_path: Path) -> None:
    cred = tmp_path / "device.cred"
    dmi = write_dmi(tmp_path / "dmi", "PF3XK9QZ", "ThinkCentre M75q Gen 2")
    env = {"FDO_DEVICE_CREDENTIAL": str(cred), "FDO_DEVICE_DMI_DIR": str(dmi)}
    # No manufacturer URL: nothing to do, and no failure (the unit on a stock image).
    out = runner.invoke(app, ["device", "di", "--if-missing"], env=env)
    assert out.exit_code == 0 and "no manufacturer URL set" in out.output and not cred.exists()
    # Without --if-missing the URL is required.
    out = runner.invoke(app, ["device", "di"], env=env)
    assert out.exit_code == 1 and "FDO_DEVICE_MANUFACTURER_URL" in out.output

    env["FDO_DEVICE_MANUFACTURER_URL"] = MFR_URL
    out = runner.invoke(app, ["device", "di", "--if-missing"], env=env)
    assert out.exit_code == 0, out.output
    made = read_credential(cred)
    assert (made.serial, made.device_info) == ("PF3XK9QZ", "ThinkCentre M75q Gen 2")
    assert f"serial 'PF3XK9QZ' from {dmi / 'product_serial'}" in out.output
    assert len(world.vouchers) == 1

    # A credential exists: DI does not run again (the next boots).
    before = cred.read_bytes()
    out = runner.invoke(app, ["device", "di", "--if-missing"], env=env)
    assert out.exit_code == 0 and f"{cred} exists: DI skipped" in out.output
    assert cred.read_bytes() == before and len(world.vouchers) == 1
    out = runner.invoke(app, ["device", "di", "--if-missing", "--force"], env=env)
    assert out.exit_code == 1 and "contradict" in out.output


def test_di_options_win_over_dmi_and_placeholders_fall_back(world: World, tmp_path: Path) -> None:
    dmi = write_dmi(tmp_path / "dmi", "To Be Filled By O.E.M.", "kiosk-v1")
    env = {"FDO_DEVICE_MANUFACTURER_URL": MFR_URL, "FDO_DEVICE_DMI_DIR": str(dmi)}
    first = tmp_path / "a.cred"
    out = runner.invoke(app, ["device", "di", "--credential", str(first)], env=env)
    assert out.exit_code == 0, out.output
    made = read_credential(first)
    host = socket.gethostname() or "device"
    assert (made.serial, made.device_info) == (host, "kiosk-v1")
    assert "placeholder 'To Be Filled By O.E.M.'" in out.output
    second = tmp_path / "b.cred"
    args = ["device", "di", "--credential", str(second), "--serial", "OPT-1", "--model", "kiosk-v2"]
    out = runner.invoke(app, args, env={**env, "FDO_DEVICE_SERIAL": "ENV-1"})
    assert out.exit_code == 0, out.output
    assert (read_credential(second).serial, read_credential(second).device_info) == ("OPT-1", "kiosk-v2")
    unreadable = tmp_path / "nowhere"
    third = tmp_path / "c.cred"
    env["FDO_DEVICE_DMI_DIR"] = str(unreadable)
    out = runner.invoke(app, ["device", "di", "--credential", str(third)], env=env)
    assert out.exit_code == 0, out.output
    assert f"no usable {unreadable / 'product_serial'}" in out.output
