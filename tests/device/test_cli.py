"""``fdo device``: show, di and onboard through typer's CliRunner."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import device.onboard
from device.credfile import read_credential, write_credential
from fdo import codec
from fdo.credential import DeviceCredential
from fdo_cli.main import app
from tests.conftest import KeyPool
from tests.device.test_credfile import make_credential
from tests.device.world import MFR_URL, World, make_world

runner = CliRunner()


def test_show_text_and_json_without_secrets(tmp_path: Path, key_pool: KeyPool) -> None:
    cred = make_credential(key_pool)
    path = tmp_path / "cred.bin"
    write_credential(path, cred)
    text = runner.invoke(app, ["device", "show", "--credential", str(path)])
    assert text.exit_code == 0, text.output
    assert str(cred.guid) in text.output and "http://rv.example:8041" in text.output
    out = runner.invoke(app, ["device", "show", "--credential", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["guid"] == str(cred.guid) and data["device_info"] == "kiosk-v2"
    assert data["format"] == "fdo-bootc" and data["key_type"] == "ec256"
    assert data["rendezvous"][0]["urls"] == ["http://rv.example:8041"]
    as_yaml = runner.invoke(app, ["device", "show", "--credential", str(path), "-o", "yaml"])
    assert as_yaml.exit_code == 0 and yaml.safe_load(as_yaml.output) == data
    assert (
        runner.invoke(app, ["device", "show", "--credential", str(path), "-o", "table"]).output == text.output
    )
    for output in (text.output, out.output):
        assert cred.hmac_secret.hex() not in output and "PRIVATE" not in output


def test_show_go_dc_bin(vectors_dir: Path) -> None:
    out = runner.invoke(app, ["device", "show", "--credential", str(vectors_dir / "go-fdo/dc.bin"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["format"] == "fdo-rs" and data["device_info"] == "go.fdo.example"


def test_show_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"junk")
    out = runner.invoke(app, ["device", "show", "--credential", str(path)])
    assert out.exit_code == 1
    assert out.output.startswith("error: ") and out.output.count("\n") == 1


@pytest.fixture
def world(key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> World:
    w = make_world(key_pool)
    monkeypatch.setattr(device.onboard, "default_client_factory", lambda **kw: w.factory)
    monkeypatch.setattr("device.onboard.time.sleep", lambda s: None)
    return w


def test_di_then_onboard(world: World, tmp_path: Path) -> None:
    path = tmp_path / "cred.bin"
    out = runner.invoke(
        app,
        ["device", "di", "--url", MFR_URL, "--credential", str(path), "--serial", "SN-9", "--model", "m1"],
    )
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cred: DeviceCredential = read_credential(path)
    assert cred.device_info == "m1" and cred.serial == "SN-9"
    shown = runner.invoke(app, ["device", "show", "--credential", str(path), "--json"])
    assert json.loads(shown.output)["serial"] == "SN-9"
    again = runner.invoke(app, ["device", "di", "--url", MFR_URL, "--credential", str(path)])
    assert again.exit_code == 1 and "--force" in again.output

    world.hand_over(world.vouchers[-1])
    out = runner.invoke(
        app,
        ["device", "onboard", "--credential", str(path), "--root", str(tmp_path / "root"), "--json"],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["previous_guid"] == str(cred.guid) and data["guid"] != str(cred.guid)
    assert str(read_credential(path).guid) == data["guid"]
    assert world.owner is not None and world.owner.seen_devmod[-1].sn == "SN-9"
    assert read_credential(path).serial == "SN-9"


@pytest.mark.parametrize("where", ["missing-folder", "parent-is-a-file", "a-folder"])
def test_di_checks_the_credential_path_before_asking_the_manufacturer(
    world: World, tmp_path: Path, where: str
) -> None:
    made = len(world.vouchers)
    if where == "missing-folder":
        path = tmp_path / "nope" / "cred.bin"
    elif where == "a-folder":
        path = tmp_path / "cred.bin"
        path.mkdir()
    else:  # (tests run as root here, so a read-only folder would not stop a write)
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "cred.bin"
    out = runner.invoke(app, ["device", "di", "--url", MFR_URL, "--credential", str(path)])
    assert out.exit_code == 1, out.output
    [line] = out.output.strip().splitlines()
    assert line.startswith("error: ") and str(path) in line
    assert len(world.vouchers) == made  # the manufacturer made no voucher


def test_onboard_serial_option_for_a_credential_without_one(world: World, tmp_path: Path) -> None:
    path = tmp_path / "cred.bin"
    out = runner.invoke(
        app, ["device", "di", "--url", MFR_URL, "--credential", str(path), "--serial", "SN-9"]
    )
    assert out.exit_code == 0, out.output
    # As a file written before the serial was kept: the 8-element layout.
    write_credential(path, dataclasses.replace(read_credential(path), serial=None))
    assert len(codec.decode(path.read_bytes())) == 8
    text = runner.invoke(app, ["device", "show", "--credential", str(path)])
    assert "serial       - (not kept" in text.output
    world.hand_over(world.vouchers[-1])
    out = runner.invoke(
        app,
        [
            "device",
            "onboard",
            "--credential",
            str(path),
            "--root",
            str(tmp_path / "root"),
            "--serial",
            "SN-OVR",
        ],
    )
    assert out.exit_code == 0, out.output
    assert world.owner is not None and world.owner.seen_devmod[-1].sn == "SN-OVR"
    assert read_credential(path).serial == "SN-OVR"  # kept from now on


def test_onboard_failure_is_one_line(world: World, tmp_path: Path, key_pool: KeyPool) -> None:
    path = tmp_path / "cred.bin"
    write_credential(path, make_credential(key_pool))  # its owner is not registered anywhere
    before = path.read_bytes()
    out = runner.invoke(app, ["device", "onboard", "--credential", str(path), "--max-attempts", "2"])
    assert out.exit_code == 1
    # One line per failed attempt and per wait as it happens, then one line for why it
    # stopped; each thing said once ("peer error 6: ..." once per attempt).
    lines = out.output.splitlines()
    assert lines[-1] == "error: onboarding failed after 2 round(s)"
    attempts = [line for line in lines if line.startswith("round ") and ": TO1 " in line]
    assert [line.split(":")[0] for line in attempts] == ["round 1", "round 2"]
    assert all(line.count("peer error 6") == 1 for line in attempts)
    assert [line for line in lines if "retrying in" in line] == [lines[1]]
    assert lines[1].startswith("round 1 failed; retrying in ") and len(lines) == 4
    assert path.read_bytes() == before


@pytest.mark.parametrize("serial", ["", "x" * 256, "a\x00b"])
def test_onboard_serial_option_is_checked(tmp_path: Path, key_pool: KeyPool, serial: str) -> None:
    path = tmp_path / "cred.bin"
    write_credential(path, make_credential(key_pool))
    out = runner.invoke(app, ["device", "onboard", "--credential", str(path), "--serial", serial])
    assert (
        out.exit_code == 1
        and out.output == "error: --serial must be 1 to 255 characters, without NUL (as DI accepts)\n"
    )
