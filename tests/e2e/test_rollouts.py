"""Issue 12's must-show rollout over real HTTP: 22 device agents (threads of this process
running the real client: onboarding, apply, ``device.agent.run_agent``, each with the
fake bootc and its own state folder) onboard on revision 1; revision 2 rolls out in
batches of 5 at 80 %; two devices of batch 2 whose bootc refuses the digest pause the
rollout by itself, with both errors in ``fdo owner rollouts show`` (the real CLI) and the
device views; held by label and resumed, every other device ends on revision 2 with
its booted digest the assigned one; a rollback rollout brings a batch back to revision
1. Once with one owner process on SQLite, once with two owner processes on one
PostgreSQL database (skipped without ``FDO_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from device.agent import Host, run_agent
from device.apply import RealExecutor, apply, bootc_device, save_assignment
from device.modules import run_command, standard_modules
from device.onboard import onboard
from fdo.serviceinfo import DeviceModule
from fdo_cli.main import app
from fdo_server.stack import Stack
from tests.cli_tables import parse_table
from tests.conftest import POSTGRES_URL, open_database
from tests.device.test_apply import FAKE_BOOTC, FAKE_SYSTEMCTL

runner = CliRunner()
IMAGE_1 = "registry.example/fleet@sha256:" + "e1" * 32
IMAGE_2 = "registry.example/fleet@sha256:" + "e2" * 32
DEVICES = 22
FAILING = (5, 7)  # positions (by device id) in batch 2
INTERVAL = 1  # agent check-in interval, seconds


def digest(image: str) -> str:
    return image.rpartition("@")[2]


class Agent:
    """One device: its folder, fake bootc and systemctl, onboarding and its agent thread."""

    def __init__(self, stack: Stack, folder: Path, serial: str) -> None:
        self.stack, self.folder, self.serial = stack, folder, serial
        folder.mkdir(parents=True)
        self.state, self.root = folder / "state", folder / "root"
        self.root.mkdir()
        # Wrappers give each device's fake tools their own state folder.
        self.bootc = self._wrapper(
            "bootc.sh", f"FAKE_BOOTC_STATE={folder / 'bootc'} exec {sys.executable} -S {FAKE_BOOTC}"
        )
        (folder / "systemctl.py").write_text(FAKE_SYSTEMCTL)
        self.systemctl = self._wrapper(
            "systemctl.sh",
            f"FAKE_SYSTEMCTL_STATE={folder / 'sysd'} exec {sys.executable} -S {folder / 'systemctl.py'}",
        )
        self.log: list[str] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.guid = ""

    def _wrapper(self, name: str, line: str) -> str:
        path = self.folder / name
        path.write_text(f'#!/bin/sh\n{line} "$@"\n')
        path.chmod(0o755)
        return str(path)

    def onboard(self) -> None:
        cred = self.stack.manufacture(serial=self.serial, model="fleet-v1")
        self.stack.hand_off(str(cred.guid), "ec256")
        self.stack.wait_for_to0(str(cred.guid), timeout=60)
        made = []

        def modules() -> list[DeviceModule]:
            mods: list[DeviceModule] = list(standard_modules(self.folder / "dl", run=run_command))
            made.append(bootc_device(self.bootc))
            return [*mods, made[-1]]

        result = onboard(
            cred, modules=modules, root=self.folder / "dl", verify=self.stack.verify, max_attempts=3
        )
        self.guid = str(result.credential.guid)
        assignment = made[-1].assignment
        assert assignment is not None
        save_assignment(assignment, self.state)
        apply(assignment, RealExecutor(self.root, bootc=self.bootc, systemctl=self.systemctl), self.state)

    def start(self) -> None:
        host = Host(
            root=self.root, bootc=self.bootc, systemctl=self.systemctl, health_file=self.folder / "none"
        )
        self.thread = threading.Thread(
            target=run_agent,
            args=(self.state, host),
            kwargs={
                "verify": self.stack.verify,
                "stop": self.stop,
                "log": self.log.append,
                "interval": INTERVAL,
            },
            daemon=True,
        )
        self.thread.start()

    def refuse(self, image: str) -> None:
        path = self.folder / "bootc" / "state.json"
        state = json.loads(path.read_text())
        state["refuse"] = [digest(image)]
        (path.parent / "state.tmp").write_text(json.dumps(state))
        (path.parent / "state.tmp").replace(path)

    def booted(self) -> str:
        return str(json.loads((self.folder / "bootc" / "state.json").read_text())["booted"]["digest"])


def _variants() -> list[Any]:
    two = pytest.param(
        ("postgresql", 2),
        id="postgresql-2-owners",
        marks=pytest.mark.skipif(not POSTGRES_URL, reason="FDO_TEST_POSTGRES_URL is unset: no PostgreSQL"),
    )
    return [pytest.param(("sqlite", 1), id="sqlite-1-owner"), two]


@pytest.fixture(scope="module", params=_variants())
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, list[Agent]]]:
    backend, owners = request.param
    workdir = tmp_path_factory.mktemp(f"rollouts-{backend}")
    names = ("manufacturer", "rendezvous", "owner")
    dbs = [open_database(backend, workdir, name) for name in names]
    urls = {name: db.__enter__() for name, db in zip(names, dbs, strict=True)}
    env = {"FDO_OWNER_ROLLOUT_TICK_SECONDS": "0.3", "FDO_OWNER_CHECKIN_INTERVAL_SECONDS": "5"}
    agents: list[Agent] = []
    try:
        with Stack(workdir, database_urls=urls, workers={"owner": owners}, owner_env=env) as stack:
            with stack.admin("owner") as owner:
                assert (
                    owner.post("/api/v1/groups", json={"name": "fleet", "model": "fleet-v1"}).status_code
                    == 201
                )
                rev = {"image": IMAGE_1, "apply_mode": "switch"}
                assert owner.post("/api/v1/groups/fleet/revisions", json=rev).status_code == 201
            agents = [Agent(stack, workdir / f"dev{i:02}", f"FLEET-{i:02}") for i in range(1, DEVICES + 1)]
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(Agent.onboard, agents))
            by_guid = {a.guid: a for a in agents}
            with stack.admin("owner") as owner:
                listed = owner.get("/api/v1/devices", params={"group": "fleet"}).json()["items"]
            ordered = [by_guid[d["guid"]] for d in listed]  # device id order = batch order
            assert len(ordered) == DEVICES
            for agent in ordered:
                agent.start()
            yield stack, ordered
    finally:
        for agent in agents:
            agent.stop.set()
        for agent in agents:
            if agent.thread is not None:
                agent.thread.join(timeout=30)
        for db in dbs:
            db.__exit__()


def cli(stack: Stack, *args: str) -> str:
    out = runner.invoke(app, ["owner", *args, "--url", stack.url("owner"), "--token", stack.tokens["owner"]])
    assert out.exit_code == 0, out.output
    return out.output


def devices(stack: Stack) -> dict[str, dict[str, Any]]:
    with stack.admin("owner") as owner:
        return {d["guid"]: d for d in owner.get("/api/v1/devices", params={"group": "fleet"}).json()["items"]}


def rollout(stack: Stack, rid: int) -> dict[str, Any]:
    with stack.admin("owner") as owner:
        body: dict[str, Any] = owner.get(f"/api/v1/rollouts/{rid}").json()
        return body


def wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_rollout_pauses_on_failures_resumes_after_hold_and_rolls_back(
    fleet: tuple[Stack, list[Agent]],
) -> None:
    stack, agents = fleet
    on_1 = wait(
        "every device on revision 1",
        lambda: all(
            d["applied_revision"] == 1 and d["apply_state"] == "applied" for d in devices(stack).values()
        ),
    )
    assert on_1
    bad = [agents[i] for i in FAILING]
    for agent in bad:
        agent.refuse(IMAGE_2)
    with stack.admin("owner") as owner:
        published = owner.post(
            "/api/v1/groups/fleet/revisions", json={"image": IMAGE_2, "apply_mode": "switch"}
        )
        assert published.status_code == 201 and published.json()["behind"] == DEVICES
    started = cli(
        stack, "rollouts", "start", "fleet", "--revision", "2", "--batch-size", "5",
        "--success-threshold", "80", "--report-timeout", "2m", "--hold", "hold=yes",
    )  # fmt: skip
    rid = int(started.split()[1])
    assert "1 -> 2, 5 batch(es)" in started

    paused = wait(
        "the rollout to pause by itself", lambda: (r := rollout(stack, rid))["state"] == "paused" and r
    )
    assert paused["batch"] == 2 and bad[0].serial in paused["reason"] and bad[1].serial in paused["reason"]
    assert paused["batch_counts"][0]["counts"] == {"succeeded": 5}
    shown = cli(stack, "rollouts", "show", str(rid))
    for agent in bad:
        line = next(x for x in shown.splitlines() if agent.guid in x)
        assert "failed" in line and "bootc-switch" in line and "manifest unknown" in line
    assert re.search(r"^ *state +paused", shown, re.M)
    views = devices(stack)
    for agent in bad:
        view = views[agent.guid]
        assert view["status"] == "failed" and "manifest unknown" in view["last_error"]["text"]
        assert "bootc-switch" in view["last_error"]["step"] and view["booted_digest"] == digest(IMAGE_1)
        device_show = json.loads(cli(stack, "devices", "show", agent.guid, "-o", "json"))
        assert device_show["rollouts"][0] == {
            "rollout": rid, "revision": 2, "rollout_state": "paused", "batch": 2, "state": "failed",
            "error": device_show["rollouts"][0]["error"],
        }  # fmt: skip
        assert "manifest unknown" in device_show["rollouts"][0]["error"]["text"]

    for agent in bad:
        cli(stack, "labels", "set", agent.guid, "hold=yes")
    cli(stack, "rollouts", "resume", str(rid))
    done = wait(
        "the rollout to complete", lambda: (r := rollout(stack, rid))["state"] == "completed" and r, 90
    )
    assert done["counts"] == {"succeeded": DEVICES - 2, "held": 2}
    final = devices(stack)
    for agent in agents:
        view = final[agent.guid]
        if agent in bad:
            assert view["booted_digest"] == digest(IMAGE_1) and agent.booted() == digest(IMAGE_1)
            continue
        assert view["desired_revision"] == 2 and view["applied_revision"] == 2, view
        assert view["booted_digest"] == digest(IMAGE_2) == agent.booted(), view

    back = cli(stack, "rollouts", "rollback", str(rid))
    back_id = int(back.split()[1])
    assert "to revision 1" in back
    first = wait("a batch back on revision 1", lambda: (r := rollout(stack, back_id))["batch"] >= 2 and r)
    batch_1 = [d["guid"] for d in first["devices"] if d["batch"] == 1]
    assert len(batch_1) == 5
    views = devices(stack)
    for guid in batch_1:
        agent = next(a for a in agents if a.guid == guid)
        assert views[guid]["applied_revision"] == 1 and views[guid]["booted_digest"] == digest(IMAGE_1)
        assert agent.booted() == digest(IMAGE_1)
    aborted = cli(stack, "rollouts", "abort", str(back_id))
    assert "aborted" in aborted
    listed, footer = parse_table(cli(stack, "rollouts", "list", "--group", "fleet"))
    assert [(r["ID"], r["GROUP"], r["REVISION"], r["STATE"]) for r in listed] == [
        (str(back_id), "fleet", "2->1", "aborted"),
        (str(rid), "fleet", "1->2", "completed"),
    ]
    assert footer == "2 of 2 rollouts"
    assert not any("Traceback" in line for a in agents for line in a.log)
