"""The device client's own cost: peak RSS and wall time of the real ``fdo device onboard``.

:func:`measure_device_client` pre-registers devices on a running
:class:`fdo_server.stack.Stack` (DI at its manufacturer, hand-off to the owner's P-256
key, TO0 at its rendezvous driven from here, so it does not matter whether the owner's
TO0 scheduler runs), writes each credential to a file, then runs the ``fdo`` command of
this environment, ``fdo device onboard --credential FILE``, once per device, one at a
time: TO1 and TO2 (DI excluded) with the owner's ServiceInfo (the demo's: ``fdo.download``
of a file, ``fdo.command true``, which really runs), the bootc module not offered
(``--no-bootc``: this machine has no ``bootc``). The first run is a warm-up (page
cache) and not counted.

Per run: wall time from forking the process to reaping it, and its peak RSS
(``ru_maxrss`` of :func:`os.wait4`, which covers its own children too). Linux carries a
process's high-water RSS across ``exec``, and a child forked (or vforked) from this
benchmark process starts with the benchmark's RSS, so ``ru_maxrss`` of a direct child
would be the benchmark's; each run is therefore forked by a small intermediary
(:data:`MEASURE`: ``python -I -S``, a few MB), which reports the figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from device.credfile import write_credential
from fdo.rvinfo import RVTO2Addr
from fdo.to0.owner import TO0Owner
from fdo.voucher import OwnershipVoucher
from fdo_server.stack import Stack
from owner.settings import to2_addr_entry
from transport.client import FdoHttpClient

MODEL = "bench-client"

#: The intermediary: ``python -I -S -c MEASURE LOG ARGV...`` forks, points the child's
#: stdout and stderr at LOG, execs ARGV, reaps it and prints "exit-code wall-seconds
#: maxrss-KiB".
MEASURE = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss)
"""


@dataclass(frozen=True)
class ClientRun:
    wall_seconds: float
    #: Peak resident set size in bytes.
    peak_rss: int


@dataclass(frozen=True)
class DeviceClientFigures:
    runs: tuple[ClientRun, ...]

    @property
    def peak_rss_max(self) -> int:
        return max(r.peak_rss for r in self.runs)

    @property
    def peak_rss_median(self) -> float:
        return statistics.median(r.peak_rss for r in self.runs)

    @property
    def wall_median(self) -> float:
        return statistics.median(r.wall_seconds for r in self.runs)

    @property
    def wall_max(self) -> float:
        return max(r.wall_seconds for r in self.runs)


def fdo_command() -> list[str]:
    """The ``fdo`` console script beside this interpreter (else its entry point through it)."""
    script = Path(sys.executable).with_name("fdo")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from fdo_cli.main import main; main()"]


def _register(stack: Stack, serial: str, folder: Path) -> Path:
    """DI, hand-off and TO0 for one new device; returns its credential file."""
    credential = stack.manufacture(key_type="ec256", serial=serial, model=MODEL)
    voucher = OwnershipVoucher.from_pem(stack.hand_off(str(credential.guid), "ec256"))[0]
    to2 = RVTO2Addr((to2_addr_entry(stack.url("owner")),))
    machine = TO0Owner(
        voucher=voucher, owner_key=stack.owner_keys["ec256"], rv_to2_addr=to2, wait_seconds=3600
    )
    with FdoHttpClient(stack.url("rendezvous"), verify=stack.verify) as client:
        client.run(machine)
    if machine.accepted_wait_seconds is None:
        raise RuntimeError(f"TO0 of {serial} not accepted")
    path = folder / f"{serial}.cred"
    write_credential(path, credential)
    return path


def _run_client(stack: Stack, credential: Path, folder: Path) -> ClientRun:
    root = folder / (credential.stem + "-root")
    argv = [
        *fdo_command(),
        *("device", "onboard", "--credential", str(credential), "--root", str(root)),
        *("--state-dir", str(root / "state"), "--no-bootc", "--max-attempts", "1"),
        *(("--ca-bundle", str(stack.tls.ca)) if stack.tls else ()),
    ]
    log = folder / (credential.stem + ".log")
    done = subprocess.run(  # noqa: S603 - our own interpreter and program
        [sys.executable, "-I", "-S", "-c", MEASURE, str(log), *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    code, wall, maxrss = done.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"fdo device onboard exited with {code}: {log.read_text()[-2000:]}")
    return ClientRun(float(wall), int(maxrss) * 1024)  # ru_maxrss is in KiB on Linux


def measure_device_client(stack: Stack, count: int) -> DeviceClientFigures:
    """``count`` measured runs of ``fdo device onboard`` (after one warm-up) against ``stack``."""
    if count < 1:
        raise ValueError("count must be at least 1")
    with tempfile.TemporaryDirectory(prefix="fdo-bench-client-") as tmp:
        folder = Path(tmp)
        tag = os.urandom(3).hex()
        credentials = [_register(stack, f"CLIENT-{tag}-{i:04d}", folder) for i in range(count + 1)]
        _run_client(stack, credentials[0], folder)
        return DeviceClientFigures(tuple(_run_client(stack, c, folder) for c in credentials[1:]))


__all__ = ["ClientRun", "DeviceClientFigures", "fdo_command", "measure_device_client"]
