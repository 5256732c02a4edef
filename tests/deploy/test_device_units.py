"""The device units, booted by tests/deploy/unit_harness.py against the real services.

A device is made at the factory with ``fdo device di`` writing ``/etc/fdo/device.cred``
under a fake root; the owner assigns it an image by model, in each apply mode. Then the
harness boots the units the example Containerfile enables, with the fake ``bootc``:

1. boot 1 onboards (TO1, TO2, ``bootc switch``) and, when the switch reboots, is cut
   short by that reboot, as systemd's shutdown would;
2. boot 2 runs in the assigned image: the onboard unit is skipped by its conditions
   (no new TO2, credential untouched) and the report unit reports once: applied;
3. boot 3 starts nothing.

A second test starts from a device with no credential: the DI unit runs DI with the
serial and model of a fake DMI folder and the manufacturer URL of ``/etc/fdo/device.env``.
The owner has not registered yet, so onboarding cannot complete: boot goes on while it
retries in the background (one journal line per attempt); the power is cut mid-way; on
the next boot it retries again, survives a crash (Restart=on-failure), and onboards
once the voucher reaches the owner; the boot after reports; the last starts nothing.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.credfile import read_credential
from fdo_server.stack import Stack
from tests.deploy.unit_harness import Host, UnitFile, enabled_by_containerfile

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "deploy" / "device"
FDO = str(Path(sys.executable).with_name("fdo"))
CRED = "/etc/fdo/device.cred"
STATE = "/var/lib/fdo/apply"
# Images only: the units apply under the real "/" (fdo's default --apply-root), which
# the harness cannot map, so the revisions carry no configuration files.
IMAGES = {
    "stage": "registry.example/kiosk@sha256:" + "5a" * 32,
    "switch": "registry.example/kiosk@sha256:" + "5b" * 32,
    "switch-reboot": "registry.example/kiosk@sha256:" + "5c" * 32,
}


def units() -> list[UnitFile]:
    names = enabled_by_containerfile(DEVICE / "Containerfile")
    assert sorted(names) == [
        "fdo-device-agent.service",
        "fdo-device-di.service",
        "fdo-device-onboard.service",
        "fdo-device-report.service",
    ]
    return [UnitFile.load(DEVICE / name) for name in names]


_HOSTS: list[Host] = []


def make_host(tmp_path: Path) -> Host:
    assert "ln -s /usr/lib/fdo-bootc/bin/fdo /usr/bin/fdo" in (DEVICE / "Containerfile").read_text()
    tools = {name: shutil.which(name) for name in ("mkdir", "touch")}
    executables = {"/usr/bin/fdo": FDO, **{f"/usr/bin/{k}": str(v) for k, v in tools.items() if v}}
    host = Host(tmp_path, executables, time_scale=0.0)
    _HOSTS.append(host)
    return host


@pytest.fixture(autouse=True)
def _power_off_hosts() -> Iterator[None]:
    """After each test, cut every host's power: the agent (a long-running unit) and any
    retrying onboarding must not outlive the test."""
    yield
    while _HOSTS:
        _HOSTS.pop().power_off()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("units-stack")) as running:
        with running.admin("owner") as owner:
            for mode, image in IMAGES.items():
                group = {"name": f"kiosk-{mode}", "model": f"kiosk-{mode}"}
                assert owner.post("/api/v1/groups", json=group).status_code < 300
                revision = {"image": image, "apply_mode": mode}
                resp = owner.post(f"/api/v1/groups/kiosk-{mode}/revisions", json=revision)
                assert resp.status_code < 300, resp.text
        yield running


def factory_di(stack: Stack, host: Host, model: str, serial: str) -> str:
    """The factory step from docs/deploy.md, with the real CLI; returns the GUID."""
    cred = host.path(CRED)
    cred.parent.mkdir(parents=True, exist_ok=True)
    argv = [FDO, "device", "di", "--url", stack.url("manufacturer"), "--credential", str(cred)]
    argv += ["--key-type", "ec256", "--serial", serial, "--model", model]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    assert done.returncode == 0, done.stderr
    return str(read_credential(cred).guid)


def owner_record(stack: Stack, guid: str) -> dict[str, Any]:
    with stack.admin("owner") as owner:
        resp = owner.get(f"/api/v1/devices/{guid}")
    assert resp.status_code == 200, resp.text
    record: dict[str, Any] = resp.json()
    return record


def wait_for_checkin(stack: Stack, guid: str, timeout: float = 30.0) -> dict[str, Any]:
    """The device record once the agent has checked in."""
    deadline = time.monotonic() + timeout
    while (record := owner_record(stack, guid))["last_checkin_at"] is None:
        assert time.monotonic() < deadline, record
        time.sleep(0.2)
    return record


def kinds(record: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in record["events"]]


@pytest.mark.parametrize("mode", list(IMAGES))
def test_onboard_once_report_after_the_reboot_then_nothing(stack: Stack, tmp_path: Path, mode: str) -> None:
    host = make_host(tmp_path)
    guid = factory_di(stack, host, f"kiosk-{mode}", f"UNITS-{mode}")
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    base = host.booted_digest()
    digest = IMAGES[mode].rpartition("@")[2]

    # Boot 1: onboarding, bootc switch; the switch reboots unless it is only staged.
    boot1 = host.boot(units())
    assert boot1.units["fdo-device-di.service"].result == "skipped"  # the factory made the credential
    onboard = host.wait("fdo-device-onboard.service", 60)
    report = boot1.units["fdo-device-report.service"]
    assert onboard.starts == 1 and onboard.restarts == 0
    [fdo_onboard] = onboard.ran("onboard")
    switches = [c for c in host.bootc_calls() if c[:1] == ["switch"]]
    assert len(switches) == 1 and switches[0][-1] == IMAGES[mode]
    assert ("--apply" in switches[0]) == (mode == "switch")
    record = owner_record(stack, guid)
    assert kinds(record).count("onboarded") == 1
    assert host.path(f"{STATE}/assignment.cbor").is_file()
    if mode == "stage":
        assert onboard.result == "success", onboard.processes
        assert fdo_onboard.returncode == 0
        assert host.path("/var/lib/fdo/onboarded").exists()
        assert boot1.reboot_requested_by is None
        # Still the base image: reporting now would tell the owner the switch failed.
        assert report.result == "skipped" and not report.processes, report
        # It started while onboarding ran in the background (no assignment yet); had the
        # assignment been stored first, /run/fdo/onboarding would keep it skipped.
        assert report.reason.startswith("condition failed: ConditionPathExists="), report.reason
        assert record["status"] == "onboarded"
    else:
        expected = "bootc switch --apply" if mode == "switch" else "systemctl reboot"
        assert boot1.reboot_requested_by == expected
        # The reboot stops the unit before fdo writes the stamp.
        assert onboard.result == "stopped" and fdo_onboard.returncode == -signal.SIGTERM
        assert [p.key for p in onboard.processes][-1] == "ExecStart"
        assert not host.path("/var/lib/fdo/onboarded").exists()
        assert report.result == "skipped" and not report.processes  # it ran before the reboot
    credential = host.path(CRED).read_bytes()

    # Boot 2: the assigned image; no second onboarding, one report.
    boot2 = host.boot(units())
    assert host.booted_digest() == digest != base
    onboard, report = boot2.units["fdo-device-onboard.service"], boot2.units["fdo-device-report.service"]
    assert onboard.result == "skipped" and not onboard.processes
    assert "ConditionPathExists=!" in onboard.reason
    assert report.result == "success", report.processes
    assert report.starts == 1 and len(report.ran("report")) == 1
    [apply] = report.ran("apply")  # resuming the apply: already complete
    assert apply.returncode == 0 and "assignment applied: 0 action(s)" in apply.output
    assert "reported: applied" in report.ran("report")[0].output
    assert host.path(CRED).read_bytes() == credential
    record = owner_record(stack, guid)
    assert record["status"] == "applied"
    assert kinds(record).count("onboarded") == 1 and kinds(record).count("applied") == 1
    assert boot2.reboot_requested_by is None
    assert [c for c in host.bootc_calls() if c[:1] == ["switch"]] == switches
    # From this boot on the agent checks in: the owner sees what runs, nothing to apply.
    assert boot1.units["fdo-device-agent.service"].result == "skipped"  # not while onboarding
    agent = boot2.units["fdo-device-agent.service"]
    assert agent.result == "running" and agent.main is not None
    checked = wait_for_checkin(stack, guid)
    assert checked["booted_digest"] == digest and checked["applied_revision"] == 1
    assert checked["last_error"] is None and checked["checkin"] == "active"

    # Boot 3: nothing left to do but checking in.
    boot3 = host.boot(units())
    assert boot3.ran() == [] and boot3.units["fdo-device-agent.service"].result == "running"
    assert {u.result for n, u in boot3.units.items() if n != "fdo-device-agent.service"} == {"skipped"}
    assert kinds(owner_record(stack, guid)) == kinds(record)
    assert host.reboot_requests() == ([] if mode == "stage" else [expected])
    host.power_off()


def test_di_at_first_boot_then_onboarding_in_the_background_across_a_power_cut(
    stack: Stack, tmp_path: Path
) -> None:
    host = make_host(tmp_path)
    dmi = host.path("/sys/class/dmi/id")
    dmi.mkdir(parents=True)
    (dmi / "product_serial").write_text("UNITS-DMI-0001\n")
    (dmi / "product_name").write_text("kiosk-stage\n")
    env_file = host.path("/etc/fdo/device.env")
    env_file.parent.mkdir(parents=True)
    shipped = (DEVICE / "device.env").read_text()
    url = stack.url("manufacturer")
    env_file.write_text(
        shipped.replace("FDO_DEVICE_MANUFACTURER_URL=\n", f"FDO_DEVICE_MANUFACTURER_URL={url}\n")
    )

    # Boot 1: DI from DMI, then onboarding starts; the owner has no voucher yet, so TO1
    # finds no registration. Boot goes on: the start job is done while fdo retries.
    started = time.monotonic()
    boot1 = host.boot(units())
    assert time.monotonic() - started < 20
    di = boot1.units["fdo-device-di.service"]
    assert di.result == "success", di.processes
    assert "serial 'UNITS-DMI-0001' from" in di.ran("di")[0].output
    cred = read_credential(host.path(CRED))
    assert (cred.serial, cred.device_info) == ("UNITS-DMI-0001", "kiosk-stage")
    guid = str(cred.guid)
    onboard, report = boot1.units["fdo-device-onboard.service"], boot1.units["fdo-device-report.service"]
    assert onboard.result == "running"
    assert report.result == "skipped"  # not while onboarding
    onboard.wait_output("round 1 failed; retrying in")  # the next round waits about 5 s
    host.power_off()  # a power cut mid-way
    assert onboard.result == "killed"
    [cut] = onboard.ran("onboard")
    assert cut.returncode == -signal.SIGKILL
    assert f"round 1: TO1 {stack.url('rendezvous')}" in cut.output  # one line per failed attempt
    assert not host.path("/var/lib/fdo/onboarded").exists()

    # Boot 2: DI is not repeated; onboarding retries again in the background. Its process
    # crashes (SIGKILL, as the OOM killer would): Restart=on-failure starts it again. Then
    # the owner gets the voucher and registers, and the retry onboards.
    boot2 = host.boot(units())
    assert boot2.units["fdo-device-di.service"].result == "skipped"
    onboard = boot2.units["fdo-device-onboard.service"]
    assert onboard.result == "running" and onboard.main is not None
    onboard.wait_output("round 1 failed; retrying in")
    onboard.main.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (onboard.starts == 2 and onboard.main is not None):
        assert time.monotonic() < deadline, onboard
        time.sleep(0.05)
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    onboard = host.wait("fdo-device-onboard.service", 60)
    assert onboard.result == "success", onboard.processes
    assert onboard.restart_delays == [60.0]
    runs = onboard.ran("onboard")
    assert [p.returncode for p in runs] == [-signal.SIGKILL, 0]
    assert "round 1 failed; retrying in" in runs[0].output  # one line per attempt, then the wait
    assert "--max-attempts" in runs[0].argv and runs[0].argv[runs[0].argv.index("--max-attempts") + 1] == "0"
    assert kinds(owner_record(stack, guid)).count("onboarded") == 1
    assert host.path("/var/lib/fdo/onboarded").exists()

    # Boot 3: the staged image boots and is reported, and the agent starts checking in;
    # boot 4 starts nothing else.
    boot3 = host.boot(units())
    assert boot3.ran() == ["fdo-device-report.service"]
    assert boot3.units["fdo-device-agent.service"].result == "running"
    assert "reported: applied" in boot3.units["fdo-device-report.service"].ran("report")[0].output
    assert wait_for_checkin(stack, guid)["apply_state"] == "applied"
    boot4 = host.boot(units())
    assert boot4.ran() == [] and boot4.units["fdo-device-agent.service"].result == "running"
    assert kinds(owner_record(stack, guid)).count("onboarded") == 1


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    system = tmp_path / "usr" / "lib" / "systemd" / "system"
    shutil.copytree("/usr/lib/systemd/system", system, symlinks=True)  # the stock targets
    for name in ("fdo", "mkdir", "touch"):
        exe = tmp_path / "usr" / "bin" / name
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    names = enabled_by_containerfile(DEVICE / "Containerfile")
    for name in names:
        shutil.copy(DEVICE / name, system / name)
    done = subprocess.run(  # noqa: S603
        [analyze, "verify", f"--root={tmp_path}", *names], capture_output=True, text=True, check=False
    )
    # verify exits 0 on unknown keys, but warns: any output is a finding.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done
