"""Issue 11 item 6 end to end over real HTTP: stock clients get what their modules can
carry, and the owner records what was delivered.

Group ``stock`` (model ``stock-v1``) has a public file, a file others may not read
(0640, owner ``root:app``), a unit with its file, a unit already on the image, and the
image. Each device runs DI, the owner imports its voucher and registers it by TO0, and
the device client (TO1 at the rendezvous, TO2 at the owner, all real HTTP against real
service processes) announces a chosen module list. What the device stored and ran is
recorded; what the owner sent is its onboarding record; what it recorded is the device
record through the admin API and ``fdo owner devices show``/``list``. The owner also
sends the demo actions it sends every device (``etc/motd`` by fdo.download, ``true`` by
fdo.command; :data:`fdo_server.stack.DEMO_SERVICE_INFO`), which are not the group's
assignment and not part of its delivery record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from device.credfile import read_credential, write_credential
from device.onboard import onboard
from fdo.credential import DeviceCredential
from fdo.serviceinfo import CommandDevice, DeviceModule, DownloadDevice
from fdo_cli.main import app
from fdo_server.stack import Stack
from tests.cli_tables import parse_table
from tests.device.test_apply import FAKE_BOOTC

runner = CliRunner()
IMAGE = "registry.example/stock@sha256:" + "c4" * 32
MODEL = "stock-v1"
APP = "/etc/stock/app.conf"
SECRET = "/etc/stock/secret.conf"
UNIT_FILE = "/etc/systemd/system/stock-app.service"
UNIT_TEXT = "[Service]\nExecStart=/usr/bin/true\n"
SWITCH = ["bootc", "switch", "--transport", "registry", "--apply", IMAGE]
MOTD = "etc/motd"  # the demo actions
TRUE = ["true"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stock-stack")) as running:
        with running.admin("owner") as owner:
            assert owner.post("/api/v1/groups", json={"name": "stock", "model": MODEL}).status_code < 300
            revision = {
                "image": IMAGE,
                "apply_mode": "switch",
                "config": {
                    "files": [
                        {"path": APP, "content": "a = 1\n"},
                        {"path": SECRET, "mode": "0640", "owner": "root:app", "content": "s = 2\n"},
                    ],
                    "units": [{"name": "stock-app.service", "content": UNIT_TEXT}, {"name": "sshd.service"}],
                },
            }
            resp = owner.post("/api/v1/groups/stock/revisions", json=revision)
            assert resp.status_code < 300, resp.text
        yield running


def registered(stack: Stack, serial: str) -> DeviceCredential:
    cred = stack.manufacture(serial=serial, model=MODEL)
    stack.hand_off(str(cred.guid), "ec256")
    stack.wait_for_to0(str(cred.guid))
    return cred


def onboard_with(
    stack: Stack, serial: str, modules: set[str]
) -> tuple[str, dict[str, bytes], list[list[str]]]:
    """Onboard a new device announcing ``modules``; its new GUID, files stored, commands run."""
    cred = registered(stack, serial)
    files: dict[str, bytes] = {}
    commands: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, bytes, bytes]:
        commands.append(argv)
        return 0, b"", b""

    def device_modules() -> list[DeviceModule]:
        made: list[DeviceModule] = [CommandDevice(run), DownloadDevice(files.__setitem__)]
        return [m for m in made if m.name in modules]

    result = onboard(cred, modules=device_modules, verify=stack.verify, max_attempts=1)
    assert result.active_modules <= modules
    return str(result.credential.guid), files, commands


def record(stack: Stack, guid: str) -> dict[str, Any]:
    with stack.admin("owner") as owner:
        device: dict[str, Any] = owner.get(f"/api/v1/devices/{guid}").json()
        listed = owner.get("/api/v1/devices", params={"limit": 500}).json()["items"]
    assert [d["delivery"] for d in listed if d["guid"] == guid] == [device["delivery"]]
    return device


def sent_by_owner(stack: Stack, guid: str) -> list[dict[str, Any]]:
    """What the owner's onboarding record says each module sent (file names, commands)."""
    with stack.admin("owner") as owner:
        items = owner.get("/api/v1/onboardings", params={"guid": guid}).json()["items"]
    assert len(items) == 1
    modules = items[0]["modules"]
    return [{k: m[k] for k in ("module", "name", "command") if k in m} for m in modules]


def shown(stack: Stack, guid: str) -> dict[str, Any]:
    auth = ["--url", stack.url("owner"), "--token", stack.tokens["owner"]]
    out = runner.invoke(app, ["owner", "devices", "show", guid, "-o", "json", *auth])
    assert out.exit_code == 0, out.output
    listed = runner.invoke(app, ["owner", "devices", "list", *auth])
    assert listed.exit_code == 0, listed.output
    body: dict[str, Any] = json.loads(out.output)
    rows = [row for row in parse_table(listed.output)[0] if row["GUID"] == guid]
    assert len(rows) == 1
    body["list_row"] = rows[0]
    return body


def missing(item: str, part: str, needs: str | None) -> tuple[str, str, str | None]:
    return (item, part, needs)


def shortfalls(delivery: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(m["item"], m["part"], m["needs"]) for m in delivery["missing"]]


def delivered(delivery: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(d["item"], d["part"], d["via"]) for d in delivery["delivered"]]


def test_download_only_gets_the_readable_files_and_no_command(stack: Stack) -> None:
    guid, files, commands = onboard_with(stack, "DL-0001", {"fdo.download"})
    assert files == {MOTD: files[MOTD], APP: b"a = 1\n", UNIT_FILE: UNIT_TEXT.encode()}
    assert commands == []
    assert sent_by_owner(stack, guid) == [
        {"module": "fdo.download", "name": MOTD},
        {"module": "fdo.command", "command": TRUE},  # skipped: the device lacks fdo.command
        {"module": "fdo.download", "name": APP},
        {"module": "fdo.download", "name": UNIT_FILE},
    ]
    device = record(stack, guid)
    assert device["status"] == "onboarded" and device["revision"] == 1
    delivery = device["delivery"]
    assert delivery["result"] == "partial" and delivery["via"] == "stock" and delivery["revision"] == 1
    assert delivered(delivery) == [
        (f"file:{APP}", "content", "fdo.download"),
        (f"file:{UNIT_FILE}", "content", "fdo.download"),
    ]
    assert shortfalls(delivery) == [
        missing(f"file:{APP}", "mode", "fdo.command"),
        missing(f"file:{SECRET}", "content", "fdo.command"),  # not sent readable by all
        missing(f"file:{UNIT_FILE}", "mode", "fdo.command"),
        missing("unit:stock-app.service", "enable", "fdo.command"),
        missing("unit:sshd.service", "enable", "fdo.command"),
        missing(f"image:{IMAGE}", "switch", "fdo.command"),
    ]
    assert all(m["reason"] for m in delivery["missing"])
    cli = shown(stack, guid)
    assert cli["delivery"] == delivery
    assert (cli["list_row"]["ONBOARD REV"], cli["list_row"]["DELIVERY"]) == ("1", "partial(6 missing)")


def test_command_only_gets_the_switch_and_no_command_about_undelivered_files(stack: Stack) -> None:
    guid, files, commands = onboard_with(stack, "CMD-0001", {"fdo.command"})
    assert files == {}
    # No chmod/chown of files never sent; no enabling of a unit whose file was not sent.
    assert commands == [TRUE, ["systemctl", "enable", "sshd.service"], SWITCH]
    assert sent_by_owner(stack, guid) == [
        {"module": "fdo.download", "name": MOTD},  # skipped: the device lacks fdo.download
        {"module": "fdo.command", "command": TRUE},
        {"module": "fdo.command", "command": ["systemctl", "enable", "sshd.service"]},
        {"module": "fdo.command", "command": SWITCH},
    ]
    device = record(stack, guid)
    assert device["status"] == "onboarded" and device["revision"] == 1
    delivery = device["delivery"]
    assert delivery["result"] == "partial"
    assert delivered(delivery) == [
        ("unit:sshd.service", "enable", "fdo.command"),
        (f"image:{IMAGE}", "switch", "fdo.command"),
    ]
    assert shortfalls(delivery) == [
        missing(f"file:{APP}", "content", "fdo.download"),
        missing(f"file:{SECRET}", "content", "fdo.download"),
        missing(f"file:{UNIT_FILE}", "content", "fdo.download"),
        missing("unit:stock-app.service", "enable", None),  # its unit file was not delivered
    ]
    cli = shown(stack, guid)
    assert cli["delivery"] == delivery and cli["status"] == "onboarded"
    assert cli["list_row"]["DELIVERY"] == "partial(4 missing)"


def test_neither_module_gets_nothing_and_is_not_recorded_onboarded_with_the_revision(
    stack: Stack,
) -> None:
    guid, files, commands = onboard_with(stack, "NONE-0001", set())
    assert files == {} and commands == []
    assert sent_by_owner(stack, guid) == [  # both skipped: the device lacks their modules
        {"module": "fdo.download", "name": MOTD},
        {"module": "fdo.command", "command": TRUE},
    ]
    device = record(stack, guid)
    assert device["status"] == "undelivered"
    assert device["revision"] is None and device["assigned_revision"] == 1
    delivery = device["delivery"]
    assert delivery["result"] == "none" and delivered(delivery) == []
    assert len(delivery["missing"]) == 6  # three files, two units, the image
    onboarded = [e for e in device["events"] if e["kind"] == "onboarded"]
    assert len(onboarded) == 1 and "revision" not in onboarded[0]["detail"]
    assert onboarded[0]["detail"]["delivery"] == "none" and onboarded[0]["detail"]["assigned_revision"] == 1
    cli = shown(stack, guid)
    assert cli["status"] == "undelivered" and cli["delivery"] == delivery
    row = cli["list_row"]
    assert (row["STATUS"], row["ONBOARD REV"], row["DELIVERY"]) == ("undelivered", "-", "none")


def test_stock_client_with_both_modules_gets_everything(stack: Stack) -> None:
    guid, files, commands = onboard_with(stack, "BOTH-0001", {"fdo.download", "fdo.command"})
    assert set(files) == {MOTD, APP, SECRET, UNIT_FILE}
    assert commands == [
        TRUE,
        ["chmod", "0644", APP],
        ["chmod", "0640", SECRET],
        ["chown", "root:app", SECRET],
        ["chmod", "0644", UNIT_FILE],
        ["systemctl", "enable", "stock-app.service"],
        ["systemctl", "enable", "sshd.service"],
        SWITCH,
    ]
    delivery = record(stack, guid)["delivery"]
    assert delivery["result"] == "full" and delivery["missing"] == []


def test_cli_modules_option_and_our_full_client(stack: Stack, tmp_path: Path) -> None:
    # `fdo device onboard --modules fdo.download`: what a technician runs to see what a
    # download-only stock client gets (no command can run on this machine).
    cred = tmp_path / "dl.cred"
    write_credential(cred, registered(stack, "CLI-DL-0001"))
    root = tmp_path / "root"
    argv = ["device", "onboard", "--credential", str(cred), "--root", str(root), "--json"]
    out = runner.invoke(app, [*argv, "--modules", "fdo.download"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["active_modules"] == ["fdo.download"]
    assert (root / APP.lstrip("/")).read_text() == "a = 1\n" and not (root / SECRET.lstrip("/")).exists()
    assert record(stack, str(read_credential(cred).guid))["delivery"]["result"] == "partial"

    bad = runner.invoke(app, [*argv, "--modules", "fdo.download,fdo.shell"])
    assert bad.exit_code != 0 and "unknown module 'fdo.shell'" in bad.output

    # Our own client (bootc module): full once the device acknowledged every item.
    cred = tmp_path / "full.cred"
    write_credential(cred, registered(stack, "CLI-FULL-0001"))
    plan = tmp_path / "plan.json"
    full = [
        "device", "onboard", "--credential", str(cred), "--root", str(root), "--dry-run", str(plan),
        "--bootc", str(FAKE_BOOTC), "--state-dir", str(tmp_path / "s"),
    ]  # fmt: skip
    out = runner.invoke(app, full)
    assert out.exit_code == 0, out.output
    device = record(stack, str(read_credential(cred).guid))
    delivery = device["delivery"]
    assert device["status"] == "onboarded" and device["revision"] == 1
    assert delivery["result"] == "full" and delivery["via"] == "bootc" and delivery["missing"] == []
    items = [d["item"] for d in delivery["delivered"]]
    assert items == [
        f"file:{APP}",
        f"file:{SECRET}",
        f"file:{UNIT_FILE}",
        "unit:stock-app.service",
        "unit:sshd.service",
        "report",
        f"image:{IMAGE}",
    ]
