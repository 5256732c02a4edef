"""The device units, booted by tests/deploy/unit_harness.py against the real services.

A device is made at the factory with ``fdo device di`` writing ``/etc/fdo/device.cred``
under a fake root; the owner assigns it an image by model, in each apply mode. Then the
harness boots the units the example Containerfile enables, with the fake ``bootc``:

1. boot 1 onboards (TO1, TO2, ``bootc switch``) and, when the switch reboots, is cut
   short by that reboot, as systemd's shutdown would;
2. boot 2 runs in the assigned image: the onboard unit is skipped by its conditions
   (no new TO2, credential untouched) and the report unit reports once: applied;
3. boot 3 starts nothing.

A second test crashes the onboarding process while the owner has not registered yet:
the unit restarts (Restart=on-failure), retries TO1 in-process (``--max-attempts 0``)
and onboards once the voucher reaches the owner.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
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
    assert sorted(names) == ["fdo-device-onboard.service", "fdo-device-report.service"]
    return [UnitFile.load(DEVICE / name) for name in names]


def make_host(tmp_path: Path) -> Host:
    assert "ln -s /usr/lib/fdo-bootc/bin/fdo /usr/bin/fdo" in (DEVICE / "Containerfile").read_text()
    tools = {name: shutil.which(name) for name in ("mkdir", "touch")}
    executables = {"/usr/bin/fdo": FDO, **{f"/usr/bin/{k}": str(v) for k, v in tools.items() if v}}
    return Host(tmp_path, executables, time_scale=0.0)


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
    onboard, report = boot1.units["fdo-device-onboard.service"], boot1.units["fdo-device-report.service"]
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
        assert report.reason == "condition failed: ConditionPathExists=!/run/fdo/onboarding"
        assert record["status"] == "onboarded"
    else:
        expected = "bootc switch --apply" if mode == "switch" else "systemctl reboot"
        assert boot1.reboot_requested_by == expected
        # The reboot stops the unit: ExecStartPost never runs.
        assert onboard.result == "stopped" and fdo_onboard.returncode == -signal.SIGTERM
        assert [p.key for p in onboard.processes][-1] == "ExecStart"
        assert not host.path("/var/lib/fdo/onboarded").exists()
        assert report.result == "not started"
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

    # Boot 3: nothing left to do.
    boot3 = host.boot(units())
    assert boot3.ran() == []
    assert {u.result for u in boot3.units.values()} == {"skipped"}
    assert kinds(owner_record(stack, guid)) == kinds(record)
    assert host.reboot_requests() == ([] if mode == "stage" else [expected])


def test_onboard_unit_restarts_and_retries_until_the_owner_registers(stack: Stack, tmp_path: Path) -> None:
    host = make_host(tmp_path)
    guid = factory_di(stack, host, "kiosk-stage", "UNITS-RETRY")
    result: dict[str, Any] = {}

    def boot() -> None:
        try:
            result["boot"] = host.boot(units())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=boot)
    started = time.monotonic()
    thread.start()
    # The first onboarding process: TO1 finds no registration (the voucher is still at
    # the manufacturer) and the process waits to retry. It crashes (SIGKILL, as the
    # OOM killer would): Restart=on-failure starts it again.
    deadline = time.monotonic() + 20
    while "onboard" not in host.current_argv:
        assert time.monotonic() < deadline and thread.is_alive(), result
        time.sleep(0.05)
    time.sleep(1.0)
    crashed = host.current
    assert crashed is not None and "onboard" in host.current_argv
    crashed.send_signal(signal.SIGKILL)
    # Now the owner gets the voucher and registers with the rendezvous server.
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    thread.join(timeout=60)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    elapsed = time.monotonic() - started
    onboard = result["boot"].units["fdo-device-onboard.service"]
    assert onboard.result == "success", onboard.processes
    assert onboard.starts == 2 and onboard.restart_delays == [60.0]
    runs = onboard.ran("onboard")
    assert [p.returncode for p in runs] == [-signal.SIGKILL, 0]
    assert "--max-attempts" in runs[0].argv and runs[0].argv[runs[0].argv.index("--max-attempts") + 1] == "0"
    assert kinds(owner_record(stack, guid)).count("onboarded") == 1
    assert host.path("/var/lib/fdo/onboarded").exists()
    assert elapsed < 30


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
