"""``make demo``: one kiosk from the factory to its owner's image, then an update by rollout.

Starts the manufacturer, rendezvous and owner as uvicorn servers on free local ports
with SQLite files in a temporary folder, then tells the story with the real ``fdo``
commands (each printed as ``$ fdo ...`` with what it answered):

1. the factory runs DI for a device; the voucher is extended to the owner's key and
   imported by the owner, which registers the device at the rendezvous (TO0);
2. the admin makes a group for the device's model and publishes revision 1: an image
   pinned by digest and a configuration file;
3. the device's first boot: TO1, then TO2, whose bootc ServiceInfo module delivers
   revision 1; the device applies it (with a stand-in for ``bootc``,
   :mod:`fdo_server.fake_bootc`) and checks in: the owner sees it booted on revision 1;
4. the admin publishes revision 2 and starts a rollout; the device's next check-in
   receives it, applies it and reports; the rollout completes.

Prints a summary, stops the services and exits 0 (1 if any step fails, with the
services' log tails).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fdo_server.stack import Stack

IMAGE_1 = "registry.example/kiosk@sha256:" + "1" * 64
IMAGE_2 = "registry.example/kiosk@sha256:" + "2" * 64


_RUN_FAKE_BOOTC = "import runpy\nrunpy.run_module('fdo_server.fake_bootc', run_name='__main__')\n"


class StepFailed(Exception):
    """A step of the story did not do what it should (the message says what)."""


def _fdo() -> list[str]:
    script = Path(sys.executable).parent / "fdo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fdo_cli.main"]


class Story:
    """Prints the chapters and runs the commands of the demo."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = dict(os.environ)
        self.chapters = 0

    def chapter(self, title: str) -> None:
        self.chapters += 1
        print(f"\n{self.chapters}. {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def fdo(self, *args: str, show: bool = True) -> str:
        """Run ``fdo ARGS`` as a user would; print the command and its output (unless
        ``show`` is off: a look-up the story only needs the answer of)."""
        started = time.perf_counter()
        proc = subprocess.run(  # noqa: S603 - our own CLI with the demo's arguments
            [*_fdo(), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        took = (time.perf_counter() - started) * 1000
        if show:
            print(f"   $ fdo {' '.join(args)}   ({took:.0f} ms)", flush=True)
            for line in (proc.stdout + proc.stderr).strip().splitlines():
                print(f"     {line}", flush=True)
        if proc.returncode != 0:
            raise StepFailed(f"fdo {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path


def _wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out waiting for {what}")
        time.sleep(0.2)


def run(workdir: Path, key_type: str) -> dict[str, str]:
    """The story; returns the summary lines. Raises on any failed step."""
    stack = Stack(workdir, owner_env={"FDO_OWNER_ROLLOUT_TICK_SECONDS": "0.5"})
    story = Story(workdir)
    try:
        story.chapter("The services start (uvicorn, a SQLite file each)")
        stack.start()
        for name, proc in stack.services.items():
            story.say(f"{name:<12} {proc.url}")
        device = workdir / "device"
        (device / "root").mkdir(parents=True)
        bootc = device / "bootc"
        bootc.write_text(f"#!{sys.executable}\n{_RUN_FAKE_BOOTC}")
        bootc.chmod(0o755)
        story.env.update(
            {
                "FDO_OWNER_URL": stack.url("owner"),
                "FDO_OWNER_TOKEN": stack.tokens["owner"],
                "FDO_DEVICE_CREDENTIAL": str(device / "device.cred"),
                "FDO_DEVICE_STATE_DIR": str(device / "state"),
                "FDO_DEVICE_APPLY_ROOT": str(device / "root"),
                "FDO_DEVICE_FILES_ROOT": str(device / "files"),
                "FDO_DEVICE_BOOTC": str(bootc),
                "FDO_DEVICE_HEALTH_FILE": str(device / "no-greenboot"),
                "FAKE_BOOTC_STATE": str(device / "bootc-state"),
            }
        )
        story.say("the device's paths and the owner's URL and token are in FDO_DEVICE_* and FDO_OWNER_*")

        story.chapter("The factory: DI makes the device's credential and its ownership voucher")
        story.fdo(
            "device", "di", "--url", stack.url("manufacturer"), "--key-type", key_type,
            "--serial", "KIOSK-0001", "--model", "kiosk-v2",
        )  # fmt: skip
        guid = json.loads(story.fdo("device", "show", "--json", show=False))["guid"]
        story.say(f"device GUID {guid}")
        stack.hand_off(guid, key_type)
        story.say("hand-off: the manufacturer extended the voucher to the owner's key; the owner imported it")
        stack.wait_for_to0(guid)
        story.say("TO0: the owner registered the device's GUID at the rendezvous")

        story.chapter("The admin: a group for the model, revision 1 pinned by digest")
        story.fdo("owner", "groups", "create", "kiosks", "--model", "kiosk-v*")
        config = {
            "files": [{"path": "/etc/kiosk/url", "mode": "0644", "content": "https://example.com/menu\n"}]
        }
        cfg = story.write("kiosk-config.json", json.dumps(config))
        story.fdo(
            "owner", "revisions", "publish", "kiosks", "--image", IMAGE_1, "--apply-mode", "switch",
            "--config", str(cfg),
        )  # fmt: skip

        story.chapter("First boot: TO1 finds the owner, TO2 delivers revision 1, the device applies it")
        story.fdo("device", "onboard")
        url_file = device / "root" / "etc" / "kiosk" / "url"
        story.say(f"written by the bootc module: /etc/kiosk/url = {url_file.read_text().strip()!r}")
        new_guid = json.loads(story.fdo("device", "show", "--json", show=False))["guid"]
        story.say("the device checks in: the owner learns it booted revision 1 (its report)")
        story.fdo("device", "check-in")
        story.fdo("owner", "devices", "list", "--group", "kiosks")

        story.chapter("The admin publishes revision 2 and rolls it out")
        story.fdo(
            "owner", "revisions", "publish", "kiosks", "--image", IMAGE_2, "--apply-mode", "switch",
            "--config", str(cfg),
        )  # fmt: skip
        started = story.fdo("owner", "rollouts", "start", "kiosks", "--revision", "2", "--batch-size", "1")
        rollout = started.split()[1] if started.startswith("rollout ") else "1"

        story.chapter("The device checks in, receives revision 2, applies it and says so")
        _wait("the rollout to reach the device", lambda: _desired(stack, new_guid) == 2)
        story.say("(the agent, fdo-device-agent.service, does this every 5 minutes; here once by hand)")
        story.fdo("device", "check-in")
        _wait("the rollout to complete", lambda: _rollout_state(stack, rollout) == "completed")
        story.fdo("owner", "rollouts", "show", rollout)
        story.fdo("owner", "devices", "list", "--group", "kiosks")
        record = _device(stack, new_guid)
        if record.get("booted_digest") != IMAGE_2.rpartition("@")[2]:
            raise StepFailed(f"the device did not boot revision 2: {record.get('booted_digest')}")
        return {
            "device GUID at manufacture": guid,
            "device GUID after TO2": new_guid,
            "revision 1 (TO2)": IMAGE_1,
            "revision 2 (rollout)": IMAGE_2,
            "booted now": str(record["booted_digest"]),
            "owner status": f"{record['status']}, applied revision {record['applied_revision']}",
        }
    finally:
        stack.stop()


def _device(stack: Stack, guid: str) -> dict[str, Any]:
    with stack.admin("owner") as owner:
        body: dict[str, Any] = owner.get(f"/api/v1/devices/{guid}").json()
        return body


def _desired(stack: Stack, guid: str) -> int | None:
    value = _device(stack, guid).get("desired_revision")
    return None if value is None else int(value)


def _rollout_state(stack: Stack, rollout: str) -> str | None:
    with stack.admin("owner") as owner:
        resp = owner.get(f"/api/v1/rollouts/{rollout}")
        return str(resp.json()["state"]) if resp.status_code == 200 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--key-type", default="ec256", choices=["ec256", "ec384", "rsa2048", "rsa3072"])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="fdo-demo-"))
    began = time.perf_counter()
    print(f"fdo-bootc demo: one kiosk from the factory to its owner's image (work folder {workdir})")
    try:
        summary = run(workdir, args.key_type)
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure and exits 1
        print(f"\nFAILED: {exc}", file=sys.stderr)
        for name in ("manufacturer", "rendezvous", "owner"):
            log = workdir / f"{name}.log"
            if log.exists() and log.stat().st_size:
                print(f"--- {name}.log (end) ---\n{log.read_text()[-2000:]}", file=sys.stderr)
        print(f"work folder kept: {workdir}", file=sys.stderr)
        return 1
    print("\nsummary")
    for key, value in summary.items():
        print(f"  {key:<28} {value}")
    print(f"  {'total time':<28} {time.perf_counter() - began:.1f} s")
    if args.keep:
        print(f"  {'work folder':<28} {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
