"""Issue 12 items 1, 2, 4, 5 over real HTTP (SQLite, and PostgreSQL when set): a device
onboards with the bootc module (fake bootc), checks in with the secret TO2 gave it,
receives a redelivered revision through ``fdo device agent`` and applies it; a refused
digest is a failed record with its step and text; wrong, revoked, replayed and admin
credentials are 401 and record nothing; a lost answer does not lock the device out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from device.credfile import read_credential, write_credential
from fdo_cli.main import app
from fdo_server.stack import Stack
from tests.conftest import database_backends, open_database
from tests.device.test_apply import FAKE_BOOTC, FAKE_SYSTEMCTL

runner = CliRunner()
IMAGE_1 = "registry.example/fleet@sha256:" + "c1" * 32
IMAGE_2 = "registry.example/fleet@sha256:" + "c2" * 32
IMAGE_3 = "registry.example/fleet@sha256:" + "c3" * 32
FDO = str(Path(sys.executable).parent / "fdo")


@pytest.fixture(scope="module", params=database_backends())
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend = request.param
    workdir = tmp_path_factory.mktemp(f"checkin-{backend}")
    names = ("manufacturer", "rendezvous", "owner")
    dbs = [open_database(backend, workdir, name) for name in names]
    urls = {name: db.__enter__() for name, db in zip(names, dbs, strict=True)}
    with Stack(workdir, database_urls=urls) as running:
        with running.admin("owner") as owner:
            assert owner.post("/api/v1/groups", json={"name": "fleet", "model": "fleet-v1"}).status_code < 300
            revision = {"image": IMAGE_1, "apply_mode": "switch", "config": {"files": []}}
            assert owner.post("/api/v1/groups/fleet/revisions", json=revision).status_code < 300
        yield running
    for db in dbs:
        db.__exit__()


class Device:
    def __init__(self, stack: Stack, folder: Path, serial: str) -> None:
        self.stack, self.folder = stack, folder
        cred = stack.manufacture(serial=serial, model="fleet-v1")
        stack.hand_off(str(cred.guid), "ec256")
        stack.wait_for_to0(str(cred.guid))
        self.cred = folder / "device.cred"
        write_credential(self.cred, cred)
        self.state = folder / "state"
        self.systemctl = folder / "systemctl.py"
        self.systemctl.write_text(FAKE_SYSTEMCTL)
        self.systemctl.chmod(0o755)
        (folder / "root").mkdir()
        self.env = {
            "FAKE_BOOTC_STATE": str(folder / "bootc"),
            "FAKE_SYSTEMCTL_STATE": str(folder / "systemctl"),
        }

    def tools(self) -> list[str]:
        return [
            "--state-dir",
            str(self.state),
            "--bootc",
            str(FAKE_BOOTC),
            "--systemctl",
            str(self.systemctl),
        ]

    def cli(self, *args: str) -> Any:
        return runner.invoke(app, list(args), env=self.env)

    def onboard(self) -> None:
        out = self.cli(
            "device", "onboard", "--credential", str(self.cred), "--root", str(self.folder / "dl"),
            "--apply-root", str(self.folder / "root"), *self.tools(),
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        self.guid = str(read_credential(self.cred).guid)

    def check_in(self) -> Any:
        args = ["device", "check-in", "--apply-root", str(self.folder / "root"), *self.tools()]
        return self.cli(*args, "--health-file", str(self.folder / "no-greenboot"))

    def record(self) -> dict[str, Any]:
        with self.stack.admin("owner") as owner:
            resp = owner.get(f"/api/v1/devices/{self.guid}")
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

    def secret(self) -> tuple[str, int]:
        state = json.loads((self.state / "checkin.json").read_text())
        return state["secret"], state["seq"]

    def bootc_state(self) -> dict[str, Any]:
        path = self.folder / "bootc" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}


def digest(image: str) -> str:
    return image.rpartition("@")[2]


def publish(stack: Stack, image: str) -> int:
    with stack.admin("owner") as owner:
        resp = owner.post(
            "/api/v1/groups/fleet/revisions", json={"image": image, "apply_mode": "switch", "config": {}}
        )
        assert resp.status_code < 300, resp.text
        return int(resp.json()["number"])


def redeliver(stack: Stack, guid: str, number: int) -> None:
    with stack.admin("owner") as owner:
        resp = owner.post(f"/api/v1/devices/{guid}/redeliver", json={"revision": number})
        assert resp.status_code == 200, resp.text
        assert resp.json()["desired_revision"] == number


def test_checkin_then_agent_applies_a_redelivered_revision(stack: Stack, tmp_path: Path) -> None:
    device = Device(stack, tmp_path, "FLEET-AGENT")
    device.onboard()
    before = device.record()
    assert before["desired_revision"] == 1 and before["last_checkin_at"] is None
    assert before["checkin"] == "active"

    out = device.check_in()
    assert out.exit_code == 0, out.output
    assert "check-in ok: applied" in out.output and "received" not in out.output
    rec = device.record()
    assert rec["last_checkin_at"] is not None and rec["booted_digest"] == digest(IMAGE_1)
    assert rec["applied_revision"] == 1 and rec["health"] == "unknown" and rec["overdue"] is False
    assert rec["status"] == "applied" and rec["last_error"] is None

    number = publish(stack, IMAGE_2)
    redeliver(stack, device.guid, number)
    agent = subprocess.Popen(  # noqa: S603 - our own CLI with test paths
        [FDO, "device", "agent", "--interval", "1", "--apply-root", str(tmp_path / "root"), *device.tools(),
         "--health-file", str(tmp_path / "no-greenboot")],
        env={**os.environ, **device.env}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rec = device.record()
            if rec["booted_digest"] == digest(IMAGE_2):
                break
            time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, log = agent.communicate(timeout=30)
    assert agent.returncode == 0, log
    assert rec["booted_digest"] == digest(IMAGE_2), log
    assert rec["applied_revision"] == number and rec["desired_revision"] == number
    assert rec["status"] == "applied" and rec["apply_state"] == "applied"
    assert f"revision {number} received, applied" in log and "stopping on SIGTERM" in log
    assert device.bootc_state()["booted"]["digest"] == digest(IMAGE_2)


def test_refused_digest_is_a_failed_record_with_step_and_text(stack: Stack, tmp_path: Path) -> None:
    device = Device(stack, tmp_path, "FLEET-FAIL")
    device.onboard()
    number = publish(stack, IMAGE_3)
    bootc = device.bootc_state()
    bootc["refuse"] = [digest(IMAGE_3)]
    (tmp_path / "bootc" / "state.json").write_text(json.dumps(bootc))
    redeliver(stack, device.guid, number)
    out = device.check_in()
    assert out.exit_code == 1, out.output
    assert f"revision {number} received, failed at" in out.output
    rec = device.record()
    assert rec["status"] == "failed" and rec["apply_state"] == "failed"
    assert "bootc-switch" in rec["last_error"]["step"]
    assert "manifest unknown" in rec["last_error"]["text"]
    assert rec["booted_digest"] != digest(IMAGE_3) and rec["desired_revision"] == number
    # Nothing new to do until an operator redelivers: the failure stays visible.
    again = device.check_in()
    assert again.exit_code == 0 and "received" not in again.output
    shown = runner.invoke(
        app,
        [
            "owner",
            "devices",
            "show",
            device.guid,
            "--url",
            stack.url("owner"),
            "--token",
            stack.tokens["owner"],
        ],
    )
    assert shown.exit_code == 0 and "manifest unknown" in shown.output
    listed = runner.invoke(
        app, ["owner", "devices", "list", "--url", stack.url("owner"), "--token", stack.tokens["owner"]]
    )
    assert listed.exit_code == 0 and "manifest unknown" in listed.output


def _post(stack: Stack, secret: str, seq: int) -> httpx.Response:
    return httpx.post(
        stack.url("owner") + "/device/v1/checkin",
        json={"seq": seq, "state": "applied", "revision": 1},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def test_refused_credentials_record_nothing_and_a_lost_answer_does_not_lock_out(
    stack: Stack, tmp_path: Path
) -> None:
    device = Device(stack, tmp_path, "FLEET-AUTH")
    device.onboard()
    assert device.check_in().exit_code == 0
    assert device.check_in().exit_code == 0  # the device used its rotated secret
    secret, seq = device.secret()
    assert seq == 2
    recorded = device.record()["last_checkin_at"]

    def refused(resp: httpx.Response) -> None:
        assert resp.status_code == 401, resp.text
        assert device.record()["last_checkin_at"] == recorded

    refused(_post(stack, secret[:-4] + "AAAA", seq + 1))  # wrong secret
    refused(_post(stack, stack.tokens["owner"], seq + 1))  # an admin token
    refused(_post(stack, secret, seq))  # replayed sequence number
    refused(_post(stack, secret, seq - 1))  # an older one
    # A lost answer: the owner rotated, the device never saw the next secret.
    lost = _post(stack, secret, seq + 1)
    assert lost.status_code == 200 and lost.json()["next_secret"] != secret
    refused_at = device.record()["last_checkin_at"]
    assert refused_at != recorded
    recorded = refused_at
    refused(_post(stack, secret, seq + 1))  # the same request again is a replay
    # The device still holds the current secret: its next check-in works.
    retry = _post(stack, secret, seq + 2)
    assert retry.status_code == 200, retry.text
    following = retry.json()["next_secret"]
    used = _post(stack, following, seq + 3)
    assert used.status_code == 200, used.text
    recorded = device.record()["last_checkin_at"]
    refused(_post(stack, secret, seq + 4))  # the old secret retired once the next was used
    refused(_post(stack, lost.json()["next_secret"], seq + 4))  # the lost one was never current
    # Revoked: the current secret stops working, and the admin sees it.
    with stack.admin("owner") as owner:
        assert owner.post(f"/api/v1/devices/{device.guid}/revoke-checkin").status_code == 200
    current = used.json()["next_secret"]
    refused(_post(stack, current, seq + 5))
    assert device.record()["checkin"] == "revoked"
    out = device.check_in()
    assert out.exit_code == 1 and "refused" in out.output


def test_an_owner_that_lost_its_last_check_in_commit_still_knows_the_device(
    stack: Stack, tmp_path: Path
) -> None:
    """A power cut can take the owner's last check-in commit (the one that made the
    device's current secret current) while the device kept the answer: the device then
    checks in with the secret before it, which the owner still holds."""
    from sqlalchemy import create_engine, text

    device = Device(stack, tmp_path, "FLEET-POWERCUT")
    device.onboard()
    assert device.check_in().exit_code == 0
    engine = create_engine(stack.database_urls["owner"])
    read = text(
        "SELECT checkin_hash, checkin_next_hash, checkin_seq, last_checkin_at "
        "FROM owner_device WHERE serial = :serial"
    )
    try:
        with engine.begin() as db:
            before = db.execute(read, {"serial": "FLEET-POWERCUT"}).one()
        assert device.check_in().exit_code == 0  # rotated: the device holds the next secret
        with engine.begin() as db:  # ... and the owner loses that commit
            db.execute(
                text(
                    "UPDATE owner_device SET checkin_hash = :h, checkin_next_hash = :n, "
                    "checkin_seq = :s, last_checkin_at = :at WHERE serial = :serial"
                ),
                {"h": before[0], "n": before[1], "s": before[2], "at": before[3], "serial": "FLEET-POWERCUT"},
            )
        out = device.check_in()
        assert out.exit_code == 0, out.output
        assert device.record()["last_checkin_at"] != before[3]
        assert device.check_in().exit_code == 0  # and on with the secret that answer gave
    finally:
        engine.dispose()


def test_check_ins_load_the_ca_bundle_once_per_process(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent checks in for as long as the device runs: each check-in reuses the
    process's TLS context (``transport.client.tls_verify``) instead of loading the CA
    bundle again (some 20 ms of CPU a time, more on a device)."""
    import ssl

    from device.agent import Host, check_in
    from transport import client

    device = Device(stack, tmp_path, "FLEET-TLS-CONTEXT")
    device.onboard()
    made: list[object] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs.get("cafile"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    monkeypatch.setattr(client, "_CONTEXTS", {})
    monkeypatch.setenv("FAKE_BOOTC_STATE", device.env["FAKE_BOOTC_STATE"])
    host = Host(root=tmp_path / "root", bootc=str(FAKE_BOOTC), systemctl=str(device.systemctl))
    for _ in range(3):
        assert check_in(device.state, host, verify=stack.verify).state == "applied"
    assert len(made) == 1, made
