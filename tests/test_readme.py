"""The README's admin journey runs as written, and the paths the README names exist.

The shell blocks of README.md marked ``<!-- readme-test: journey -->`` are run in order,
as one script, by one ``bash -e -o pipefail`` (a command that fails fails the test) in a
temporary folder. The test only sets environment variables: ``FDO_HOME``, the six
``FDO_<SERVICE>_PORT``/``_ADMIN_PORT`` settings (free ports) and ``PATH`` (this
interpreter's scripts first, where ``fdo`` is); it clears every other ``FDO_`` setting.
Then the block marked ``<!-- readme-test: stop -->`` runs, as a reader would stop the
services, and every port must be closed afterwards.

What the journey must have done is checked from outside it: through the owner's admin
API, with the token the README kept in ``$FDO_HOME/owner.token``, the rollout is
completed and the device applied revision 2 and booted its digest; the stand-in
``bootc``'s own state says the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.credfile import read_credential
from fdo_server.launcher import free_ports
from tests.conftest import REPO

README = REPO / "README.md"

#: A marker line, then the fenced shell block right after it.
BLOCK = re.compile(r"^<!-- readme-test: ([a-z-]+) -->\n```(?:sh|bash)\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"^<!-- readme-test: ", re.M)

PORT_SETTINGS = tuple(
    f"FDO_{service}_{kind}"
    for service in ("MANUFACTURER", "RENDEZVOUS", "OWNER")
    for kind in ("PORT", "ADMIN_PORT")
)

JOURNEY_TIMEOUT = 150.0


def readme_blocks(text: str) -> dict[str, list[str]]:
    """The marked shell blocks of a README, by tag, in the order they appear."""
    blocks: dict[str, list[str]] = {}
    for match in BLOCK.finditer(text):
        blocks.setdefault(match.group(1), []).append(match.group(2))
    found = sum(len(b) for b in blocks.values())
    markers = len(MARKER.findall(text))
    if markers != found:
        raise AssertionError(f"{markers} readme-test markers but {found} are followed by a ```sh block")
    return blocks


@dataclass
class Journey:
    """A finished run of the README's journey (the services already stopped)."""

    home: Path
    ports: dict[str, int]
    output: str
    returncode: int
    owner: dict[str, Any]

    def explain(self) -> str:
        logs = [f"--- journey (exit {self.returncode}) ---\n{self.output[-4000:]}"]
        for log in sorted(self.home.glob("*.log")):
            logs.append(f"--- {log.name} (end) ---\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(logs)


def _environment(home: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FDO_") and k != "FAKE_BOOTC_STATE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FDO_HOME"] = str(home)
    env.update({name: str(port) for name, port in ports.items()})
    return env


def _bash(script: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - bash running the README's own blocks
        ["bash", "-e", "-o", "pipefail", str(script)],  # noqa: S607 - bash from the PATH
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _kill_group(pgid: int) -> None:
    """What the journey's shell left running (its background services), by process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _owner_state(home: Path, ports: dict[str, int]) -> dict[str, Any]:
    """Rollout 1, the device (by the GUID in its credential) and revision 2, as the owner
    reports them, while the services still run."""
    token_file = home / "owner.token"
    credential = home / "device" / "device.cred"
    if not token_file.exists() or not credential.exists():
        return {}
    guid = str(read_credential(credential).guid)
    state: dict[str, Any] = {"guid": guid}
    with httpx.Client(
        base_url=f"http://127.0.0.1:{ports['FDO_OWNER_ADMIN_PORT']}/api/v1",
        headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
        timeout=10,
    ) as owner:
        for key, path in (
            ("rollout", "/rollouts/1"),
            ("device", f"/devices/{guid}"),
            ("revision", "/groups/kiosks/revisions/2"),
        ):
            resp = owner.get(path)
            state[key] = resp.json() if resp.status_code == 200 else {"status": resp.status_code}
    return state


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    if not (Path(sys.executable).parent / "fdo").exists():
        pytest.skip("the fdo script is not installed next to this interpreter")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the README's journey waits with it)")
    blocks = readme_blocks(README.read_text())
    work = tmp_path_factory.mktemp("readme")
    home = work / "fdo-home"
    ports = dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True))
    env = _environment(home, ports)
    (work / "journey.sh").write_text("\n".join(blocks["journey"]))
    (work / "stop.sh").write_text("\n".join(blocks["stop"]))

    proc = _bash(work / "journey.sh", work, env)
    try:
        output, _ = proc.communicate(timeout=JOURNEY_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        output, _ = proc.communicate()
        output += f"\n(the journey did not finish in {JOURNEY_TIMEOUT:.0f} s)"
    try:
        owner = _owner_state(home, ports) if proc.returncode == 0 else {}
    finally:
        stop = _bash(work / "stop.sh", work, env)
        stopped, _ = stop.communicate(timeout=30)
        deadline = time.monotonic() + 15
        while not all(_closed(p) for p in ports.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        still_open = [name for name, p in ports.items() if not _closed(p)]
        _kill_group(proc.pid)
    result = Journey(home, ports, output, proc.returncode, owner)
    result.output += f"\n--- stop (exit {stop.returncode}) ---\n{stopped}"
    result.owner["still_open_after_stop"] = still_open
    yield result


def test_readme_marks_a_journey_and_how_to_stop() -> None:
    blocks = readme_blocks(README.read_text())
    assert set(blocks) == {"journey", "stop"}, sorted(blocks)
    assert len(blocks["stop"]) == 1
    journey = "\n".join(blocks["journey"])
    for step in (
        "fdo manufacturer init",
        "fdo owner init",
        "fdo owner db upgrade",
        "fdo owner token create",
        "fdo owner serve",
        "fdo device di",
        "fdo keys public",
        "fdo manufacturer vouchers extend",
        "fdo owner vouchers import",
        "fdo owner groups create",
        "fdo owner revisions publish",
        "fdo device onboard",
        "fdo device check-in",
        "fdo owner rollouts start",
        "fdo owner rollouts show",
    ):
        assert step in journey, step


def test_readme_journey_runs_as_written(journey: Journey) -> None:
    assert journey.returncode == 0, journey.explain()
    assert "Traceback" not in journey.output, journey.explain()


def test_readme_journey_ends_with_the_device_on_revision_2(journey: Journey) -> None:
    owner = journey.owner
    assert owner.get("rollout", {}).get("state") == "completed", (owner, journey.explain())
    image = str(owner["revision"]["image"])
    digest = image.rpartition("@")[2]
    assert digest.startswith("sha256:"), image
    device = owner["device"]
    assert device.get("applied_revision") == 2, device
    assert device.get("booted_digest") == digest, device
    bootc = json.loads((journey.home / "device" / "bootc-state" / "state.json").read_text())
    assert bootc["booted"]["digest"] == digest, bootc
    assert (journey.home / "device" / "root" / "etc" / "kiosk" / "url").is_file()


def test_readme_stop_block_stops_every_service(journey: Journey) -> None:
    assert journey.owner["still_open_after_stop"] == [], journey.explain()
    assert "--- stop (exit 0) ---" in journey.output, journey.explain()


#: Backquoted paths inside the repository that the README names (``docs/x.md``, ``fdo/``).
_TOP = ("fdo", "transport", "manufacturer", "rendezvous", "owner", "device", "fdo_server", "fdo_cli")
REPO_PATH = re.compile(r"`((?:\.ci|bench|deploy|docs|tests|" + "|".join(_TOP) + r")/[A-Za-z0-9_./-]*)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_names_only_paths_that_exist() -> None:
    text = README.read_text()
    named = set(REPO_PATH.findall(text)) | {
        target for target in LINK.findall(text) if "://" not in target and not target.startswith("../")
    }
    assert named, "the README names no paths?"
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert missing == [], missing
