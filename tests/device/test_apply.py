"""Applying a bootc assignment: plan order, the recording and real executors, resuming.

The real executor runs against ``tests/fakes/bootc`` (state in a folder) and a fake
``systemctl`` written here, under a temporary root folder.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from device.apply import (
    Action,
    ActionKind,
    RealExecutor,
    RecordingExecutor,
    apply,
    load_assignment,
    plan,
    read_bootc_status,
)
from fdo.serviceinfo.bootc import ApplyMode, Assignment, BootcStatus, FileItem, ImageRef, SSHKeys

FAKE_BOOTC = Path(__file__).resolve().parents[1] / "fakes" / "bootc"
DIGEST = "sha256:" + "cd" * 32
REF = f"quay.io/example/kiosk@{DIGEST}"

FAKE_SYSTEMCTL = f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
state = Path(os.environ["FAKE_SYSTEMCTL_STATE"])
state.mkdir(parents=True, exist_ok=True)
args = [a for a in sys.argv[1:] if not a.startswith("--root=")]
if args[:1] == ["enable"] and len(args) == 2:
    (state / "enabled").mkdir(exist_ok=True)
    (state / "enabled" / args[1]).touch()
elif args == ["reboot"]:
    with (state / "reboots").open("a") as f:
        f.write("reboot\\n")
else:
    print("fake systemctl: unsupported " + json.dumps(sys.argv[1:]), file=sys.stderr)
    sys.exit(1)
"""


def assignment(apply_mode: ApplyMode = ApplyMode.SWITCH_REBOOT, user: str = "root") -> Assignment:
    return Assignment(
        auth_json=b'{"auths": {}}',
        policy_json=b'{"default": [{"type": "insecureAcceptAnything"}]}',
        registries_d=(("quay.io.yaml", b"docker: {}\n"),),
        keys=(("/etc/pki/containers/kiosk.pub", b"PUBKEY\n"),),
        files=(
            FileItem(path="/etc/kiosk/config.toml", content=b"url = 'x'\n", mode=0o640),
            FileItem(path="/etc/kiosk/secret", content=b"s3cret\n", mode=0o600),
        ),
        units=("kiosk.service", "podman-auto-update.timer"),
        ssh_keys=SSHKeys(user, ("ssh-ed25519 AAAA one",)),
        image=ImageRef(ref=REF, revision=2, apply=apply_mode),
    )


class Host:
    """A temporary root folder, a fake bootc and a fake systemctl."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp / "root"
        self.root.mkdir()
        self.bootc_state = tmp / "bootc"
        self.systemctl_state = tmp / "systemctl"
        self.state_dir = tmp / "apply-state"
        self.systemctl = tmp / "systemctl.py"
        self.systemctl.write_text(FAKE_SYSTEMCTL)
        self.systemctl.chmod(0o755)
        monkeypatch.setenv("FAKE_BOOTC_STATE", str(self.bootc_state))
        monkeypatch.setenv("FAKE_SYSTEMCTL_STATE", str(self.systemctl_state))

    def executor(self) -> RealExecutor:
        return RealExecutor(self.root, bootc=str(FAKE_BOOTC), systemctl=str(self.systemctl))

    def bootc_calls(self) -> list[list[str]]:
        log = self.bootc_state / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def reboots(self) -> int:
        path = self.systemctl_state / "reboots"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def end_state(self) -> dict[str, object]:
        files = {
            str(p.relative_to(self.root)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes())
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }
        dirs = {
            str(p.relative_to(self.root)): stat.S_IMODE(p.stat().st_mode)
            for p in sorted(self.root.rglob("*"))
            if p.is_dir()
        }
        enabled = sorted(p.name for p in (self.systemctl_state / "enabled").glob("*"))
        status = read_bootc_status(str(FAKE_BOOTC))
        return {"files": files, "dirs": dirs, "enabled": enabled, "bootc": status}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(tmp_path, monkeypatch)


def test_plan_order() -> None:
    actions = plan(assignment(user="core"))
    kinds = [a.kind for a in actions]
    assert kinds == [ActionKind.WRITE_FILE] * 6 + [ActionKind.ENABLE_UNIT] * 2 + [
        ActionKind.WRITE_FILE,
        ActionKind.BOOTC_SWITCH,
        ActionKind.REBOOT,
    ]
    paths = [a.path for a in actions if a.kind == ActionKind.WRITE_FILE]
    assert paths == [
        "/etc/ostree/auth.json",
        "/etc/containers/policy.json",
        "/etc/containers/registries.d/quay.io.yaml",
        "/etc/pki/containers/kiosk.pub",
        "/etc/kiosk/config.toml",
        "/etc/kiosk/secret",
        "/var/home/core/.ssh/authorized_keys",
    ]
    assert len({a.id for a in actions}) == len(actions)
    assert plan(assignment(ApplyMode.STAGE))[-1].kind == ActionKind.BOOTC_SWITCH


def test_recording_executor_writes_json_plan_without_secrets(tmp_path: Path) -> None:
    recorder = RecordingExecutor()
    result = apply(assignment(ApplyMode.STAGE), recorder, tmp_path / "state")
    assert len(result.performed) == len(recorder.actions) == 10
    out = tmp_path / "plan.json"
    recorder.write(out)
    data = json.loads(out.read_text())
    assert [d["action"] for d in data][-1] == "bootc-switch"
    assert data[-1] | {"id": None} == {
        "id": None,
        "action": "bootc-switch",
        "image": REF,
        "digest": DIGEST,
        "transport": "registry",
        "revision": 2,
        "apply": "stage",
    }
    assert data[0]["path"] == "/etc/ostree/auth.json" and data[0]["mode"] == "0600"
    assert "auths" not in out.read_text()  # contents are hashed, never copied


def test_real_executor_against_fake_bootc(host: Host) -> None:
    before = read_bootc_status(str(FAKE_BOOTC))
    assert before.is_bootc and before.digest != DIGEST
    result = apply(assignment(ApplyMode.STAGE), host.executor(), host.state_dir)
    assert len(result.performed) == 10
    config = host.root / "etc/kiosk/config.toml"
    assert config.read_bytes() == b"url = 'x'\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((host.root / "etc/ostree/auth.json").stat().st_mode) == 0o600
    keys = host.root / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA one\n"
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    status = read_bootc_status(str(FAKE_BOOTC))
    assert status.staged_digest == DIGEST and status.staged_image == REF
    assert status.has(DIGEST)
    assert sorted(p.name for p in (host.systemctl_state / "enabled").iterdir()) == [
        "kiosk.service",
        "podman-auto-update.timer",
    ]
    assert host.reboots() == 0
    assert load_assignment(host.state_dir) == assignment(ApplyMode.STAGE)

    # a second run does nothing
    calls = len(host.bootc_calls())
    again = apply(assignment(ApplyMode.STAGE), host.executor(), host.state_dir)
    assert again.performed == [] and len(again.skipped) == 10
    assert len(host.bootc_calls()) == calls


def test_switch_apply_boots_the_image(host: Host) -> None:
    apply(assignment(ApplyMode.SWITCH), host.executor(), host.state_dir)
    status = read_bootc_status(str(FAKE_BOOTC))
    assert status.digest == DIGEST and status.staged_digest is None


def test_switch_skipped_when_already_staged(host: Host) -> None:
    executor = host.executor()
    executor.run(Action(id="x", kind=ActionKind.BOOTC_SWITCH, image=ImageRef(ref=REF)))
    result = apply(assignment(ApplyMode.STAGE), executor, host.state_dir)
    switch = [a for a in result.skipped if "bootc-switch" in a]
    assert len(switch) == 1
    assert sum(c[:1] == ["switch"] for c in host.bootc_calls()) == 1


def test_a_new_assignment_starts_over(host: Host) -> None:
    apply(assignment(ApplyMode.STAGE), host.executor(), host.state_dir)
    other = Assignment(files=(FileItem(path="/etc/kiosk/config.toml", content=b"v2\n"),))
    result = apply(other, host.executor(), host.state_dir)
    assert len(result.performed) == 1
    assert (host.root / "etc/kiosk/config.toml").read_bytes() == b"v2\n"


def test_not_a_bootc_host_fails_the_switch(host: Host) -> None:
    host.bootc_state.mkdir()
    (host.bootc_state / "state.json").write_text(json.dumps({"bootc": False}))
    assert read_bootc_status(str(FAKE_BOOTC)) == BootcStatus(is_bootc=False)
    from device.apply import ApplyError

    with pytest.raises(ApplyError, match="exit code 1"):
        apply(assignment(ApplyMode.STAGE), host.executor(), host.state_dir)
    assert (host.root / "etc/kiosk/secret").exists()  # everything before the switch was applied


class PowerCut(Exception):
    pass


class Interrupting:
    """A RealExecutor that "loses power" at its ``step``-th action, before or after running it."""

    def __init__(self, inner: RealExecutor, step: int, after: bool) -> None:
        self.inner = inner
        self.step = step
        self.after = after
        self.count = 0

    def bootc_status(self) -> BootcStatus | None:
        return self.inner.bootc_status()

    def run(self, action: Action) -> None:
        hit = self.count == self.step
        self.count += 1
        if hit and not self.after:
            raise PowerCut(action.id)
        self.inner.run(action)
        if hit:
            raise PowerCut(action.id)


N_STEPS = len(plan(assignment()))


@pytest.fixture(scope="module")
def reference_end_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    mp = pytest.MonkeyPatch()
    try:
        host = Host(tmp_path_factory.mktemp("reference"), mp)
        apply(assignment(), host.executor(), host.state_dir)
        assert host.reboots() == 1
        return host.end_state()
    finally:
        mp.undo()


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("step", range(N_STEPS))
def test_interrupted_apply_reaches_the_same_end_state(
    host: Host, step: int, after: bool, reference_end_state: dict[str, object]
) -> None:
    with pytest.raises(PowerCut):
        apply(assignment(), Interrupting(host.executor(), step, after), host.state_dir)
    # the next start: the assignment comes back from the state folder
    stored = load_assignment(host.state_dir)
    assert stored == assignment()
    apply(stored, host.executor(), host.state_dir)
    assert host.end_state() == reference_end_state
    assert sum(c[:1] == ["switch"] for c in host.bootc_calls()) == 1
    is_reboot_step = plan(assignment())[step].kind == ActionKind.REBOOT
    # the reboot is recorded before it runs: a cut just before it is itself the reboot
    assert host.reboots() == (0 if is_reboot_step and not after else 1)
    final = apply(stored, host.executor(), host.state_dir)
    assert final.performed == []
