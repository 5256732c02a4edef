"""The device client's footprint: peak RSS and wall time of the real ``fdo device onboard``.

Issue 15's figure for the device: TO1 then TO2 (DI excluded) by the installed ``fdo``
command, one process per device, against our own services on this machine
(:class:`fdo_server.stack.Stack`, SQLite). go-fdo's client does the same in 11 MB and
0.065 s; the targets are under 35 MB peak RSS and under 0.3 s wall time.

:func:`prepare` gives each device its credential (DI at the manufacturer), hands its
voucher to the owner and registers it at the rendezvous (TO0, done here with the owner's
key so it does not wait for the owner's scheduler, which a benchmark may have switched
off). :func:`measure` then runs ``fdo device onboard --credential FILE --root DIR`` as a
subprocess per device and reads each run's peak RSS and CPU from ``wait4``'s rusage
(in a small launcher process: see :data:`_LAUNCHER`); the wall time is from just before
the fork to the child's exit, so it includes the
interpreter's start, the imports, TO1, TO2 (the demo's ServiceInfo: one fdo.download and
one fdo.command ``true``) and writing the new credential. The first ``warmup`` devices run
first, unmeasured (a cold page cache is not what the figure is about); they also write the
bytecode of every module, as an install has it, into a cache folder of the benchmark's own
(``PYTHONPYCACHEPREFIX``), so no run compiles source even where ``PYTHONDONTWRITEBYTECODE``
is set or the source tree is read-only.

``python bench/device_client.py [--devices N]`` starts a Stack of its own and prints the
figures beside the targets; ``bench/run.py`` imports :func:`measure` for its Stack.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from device.credfile import write_credential
from fdo.rvinfo import RVTO2Addr
from fdo.to0.owner import TO0Owner
from fdo.voucher import OwnershipVoucher
from fdo_server.stack import Stack
from transport.client import FdoHttpClient

#: Issue 15's targets for ``fdo device onboard`` (TO1+TO2).
RSS_TARGET_MB = 35.0
WALL_TARGET_S = 0.3
#: go-fdo's client on this machine (issue 15), for reference.
GO_FDO = "go-fdo's client: 11 MB, 0.065 s"


@dataclass(frozen=True, slots=True)
class Run:
    """One ``fdo device onboard`` process."""

    wall: float  # seconds, fork to exit
    cpu: float  # user + system seconds of the process (and anything it waited for)
    max_rss_kb: int


@dataclass(frozen=True, slots=True)
class DeviceClientFigures:
    runs: tuple[Run, ...]

    @property
    def peak_rss_mb(self) -> float:
        """The largest peak RSS of any run, in MiB."""
        return max(r.max_rss_kb for r in self.runs) / 1024

    @property
    def wall_median(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def wall_min(self) -> float:
        return min(r.wall for r in self.runs)

    @property
    def cpu_median(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def rss_met(self) -> bool:
        return self.peak_rss_mb < RSS_TARGET_MB

    @property
    def wall_met(self) -> bool:
        return self.wall_median < WALL_TARGET_S

    def lines(self) -> list[str]:
        """The figures beside their targets, one line each."""
        verdict = {True: "MET", False: "NOT MET"}
        return [
            f"device client (fdo device onboard, TO1+TO2, {len(self.runs)} runs): peak RSS "
            f"{self.peak_rss_mb:.1f} MB (max over runs), target < {RSS_TARGET_MB:.0f} MB: "
            f"{verdict[self.rss_met]}",
            f"device client: wall time median {self.wall_median:.3f} s, min {self.wall_min:.3f} s "
            f"(CPU median {self.cpu_median:.3f} s), target < {WALL_TARGET_S} s: {verdict[self.wall_met]}"
            f" ({GO_FDO})",
        ]


def fdo_command() -> list[str]:
    """The installed ``fdo`` console script beside this interpreter."""
    script = Path(sys.executable).parent / "fdo"
    if not script.exists():
        raise RuntimeError(f"{script} not found: install the project (make .venv/.installed)")
    return [str(script)]


def prepare(stack: Stack, count: int, folder: Path, *, key_type: str = "ec256") -> list[Path]:
    """DI, hand-off and TO0 for ``count`` devices; returns their credential files."""
    owner_key = stack.owner_keys[key_type]
    from owner.settings import to2_addr_entry

    to2_addr = RVTO2Addr((to2_addr_entry(stack.url("owner")),))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        cred = stack.manufacture(key_type=key_type, serial=f"DEVBENCH-{i:05d}", model="bench")
        pem = stack.hand_off(str(cred.guid), key_type)
        voucher = OwnershipVoucher.from_pem(pem)[0]
        machine = TO0Owner(voucher=voucher, owner_key=owner_key, rv_to2_addr=to2_addr, wait_seconds=3600)
        with FdoHttpClient(stack.url("rendezvous"), verify=stack.verify) as client:
            client.run(machine)
        if machine.accepted_wait_seconds is None:
            raise RuntimeError("TO0 not accepted")
        path = folder / f"device-{i:05d}.cred"
        write_credential(path, cred)
        files.append(path)
    return files


#: Runs the command as its own child and prints that child's wall time and rusage. The
#: peak RSS Linux reports for a child starts at its parent's RSS when it forked (kept
#: across exec), so the benchmark's own process (services' client code, over 100 MB)
#: must not be the parent: this launcher (python -I -S, about 5 MB) is.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(2, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
cpu = usage.ru_utime + usage.ru_stime
print(os.waitstatus_to_exitcode(status), wall, cpu, usage.ru_maxrss)
"""


def run_once(command: Sequence[str], credential: Path, root: Path, env: dict[str, str]) -> Run:
    """One ``fdo device onboard``; raises RuntimeError when it fails."""
    argv = [*command, "device", "onboard", "--credential", str(credential), "--root", str(root)]
    argv += ["--max-attempts", "1"]
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    done = subprocess.run([*launcher, *argv], capture_output=True, text=True, env=env, check=False)  # noqa: S603
    try:
        code, wall, cpu, rss = done.stdout.split()
    except ValueError:
        raise RuntimeError(f"the launcher failed: {done.stderr[-500:]}") from None
    if code != "0":
        raise RuntimeError(f"fdo device onboard failed ({code}): {done.stderr[-500:]}")
    return Run(wall=float(wall), cpu=float(cpu), max_rss_kb=int(rss))


def measure(
    stack: Stack,
    count: int,
    *,
    warmup: int = 1,
    workdir: Path | None = None,
    command: Sequence[str] | None = None,
) -> DeviceClientFigures:
    """Prepare ``warmup + count`` devices on ``stack``, onboard each with ``fdo device
    onboard`` in a process of its own, and return the ``count`` measured runs."""
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="fdo-devbench-")) if workdir is None else workdir
    try:
        creds = prepare(stack, warmup + count, folder / "credentials")
        cmd = list(command) if command is not None else fdo_command()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FDO_DEVICE_")}
        # Bytecode as an installed package has it (pip compiles at install), kept out of
        # the source tree: the warm-up run writes it under the work folder.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
        if isinstance(stack.verify, str):
            env["FDO_DEVICE_CA_BUNDLE"] = stack.verify
        runs = []
        for i, cred in enumerate(creds):
            root = folder / "roots" / str(i)
            root.mkdir(parents=True, exist_ok=True)
            run = run_once(cmd, cred, root, env)
            if i >= warmup:
                runs.append(run)
        return DeviceClientFigures(tuple(runs))
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=10, help="measured runs")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first")
    parser.add_argument("--tls", action="store_true", help="serve the Stack over HTTPS (throw-away CA)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fdo-devbench-stack-"))
    stack = Stack(workdir, tls_ca=args.tls)
    stack.start()
    try:
        figures = measure(stack, args.devices, warmup=args.warmup, workdir=workdir / "devices")
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for run in figures.runs:
        print(f"  run: wall {run.wall:.3f} s, CPU {run.cpu:.3f} s, peak RSS {run.max_rss_kb / 1024:.1f} MB")
    for line in figures.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
