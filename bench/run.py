"""``make bench``: throughput, latency and server CPU of DI, TO0, TO1, onboarding and check-in.

For each database backend (SQLite; PostgreSQL when a server answers on 127.0.0.1:5432)
a :class:`fdo_server.stack.Stack` is started with two uvicorn workers per service, on
loopback. ``--devices`` simulated devices then go through the phases below, driven by
``--concurrency`` client threads of this process (the load generator):

* DI           device key, DI at the manufacturer              (manufacturer CPU)
* TO0          one registration per voucher at the rendezvous  (rendezvous CPU)
* TO1          TO1 only, to1d handed out                        (rendezvous CPU)
* onboarding   TO1 then TO2 with P-256 / ECDH256 / A128GCM and  (rendezvous + owner CPU)
               the demo's ServiceInfo (fdo.download, fdo.command)
* check-in     ``--checkin-rounds`` check-ins per device with     (owner CPU)
               nothing to change, by new devices onboarded
               (unmeasured) with the bootc module against a
               group with a revision (bench/checkin_load.py)

TO0 is driven by the benchmark itself: the owner's TO0 scheduler is switched off
(``FDO_OWNER_TO0_ENABLED=false``) and each voucher is registered with
:class:`fdo.to0.owner.TO0Owner` over :class:`transport.client.FdoHttpClient` and the
owner's own key, so the rendezvous CPU of exactly N registrations is measured (the
owner-side signing runs in the load generator, as it would in the owner's scheduler).

Server CPU is read from ``/proc`` for each service's uvicorn process and its workers
(:meth:`fdo_server.launcher.ServiceProcess.cpu_seconds`) before and after a phase; on
PostgreSQL the CPU of the database server's processes on this machine is reported
beside it, not in it. A warm-up round of ``--warmup`` devices goes through every phase
first, unmeasured. The device's ``fdo.command`` runner is a stub (no fork per device in
the load generator); files are written under a per-device folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from checkin_load import IMAGE, MODEL, CheckinDevice, bootc_module

from device.modules import standard_modules
from device.onboard import onboard, run_di
from fdo.cipher import CipherSuite
from fdo.credential import DeviceCredential
from fdo.kex import KexSuite
from fdo.rvinfo import RVTO2Addr
from fdo.serviceinfo import DeviceModule
from fdo.serviceinfo.bootc import BootcDevice
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.voucher import OwnershipVoucher
from fdo_server.launcher import stat_cpu_seconds
from fdo_server.stack import SERVICES, Stack
from owner.settings import to2_addr_entry
from transport.client import FdoHttpClient

T = TypeVar("T")

POSTGRES_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_MS = 15.0
#: Owner CPU per check-in with nothing to change (issue 12).
CHECKIN_TARGET_MS = 1.0
#: 100,000 devices checking in every 5 minutes.
FLEET_RATE = 100_000 / 300
FLEET_CORES = 2


@dataclass
class PhaseResult:
    name: str
    services: tuple[str, ...]
    ops: int
    wall: float
    latencies: list[float]
    server_cpu: dict[str, float]
    client_cpu: float
    #: CPU seconds of this machine's PostgreSQL server processes during the phase (not
    #: part of the server CPU above; 0 on SQLite).
    database_cpu: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.wall

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        idx = min(len(data) - 1, max(0, round(q * (len(data) - 1))))
        return data[idx] * 1000

    @property
    def server_ms(self) -> float:
        return sum(self.server_cpu.values()) / self.ops * 1000

    @property
    def client_ms(self) -> float:
        return self.client_cpu / self.ops * 1000


def postgres_cpu() -> float:
    """CPU seconds used so far by this machine's PostgreSQL server processes (``/proc``)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if "(postgres)" in stat:
            total += stat_cpu_seconds(stat)
    return total


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_phase(
    stack: Stack,
    name: str,
    services: tuple[str, ...],
    items: Sequence[T],
    op: Callable[[T], object],
    concurrency: int,
) -> PhaseResult:
    latencies: list[float] = []

    def timed(item: T) -> None:
        start = time.perf_counter()
        op(item)
        latencies.append(time.perf_counter() - start)

    cpu_before = {s: stack.services[s].cpu_seconds() for s in services}
    client_before = process_cpu()
    database_before = postgres_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(timed, items):
            pass
    wall = time.perf_counter() - start
    client = process_cpu() - client_before
    database = postgres_cpu() - database_before
    cpu = {s: stack.services[s].cpu_seconds() - cpu_before[s] for s in services}
    return PhaseResult(name, services, len(items), wall, latencies, cpu, client, database)


def warm(items: Sequence[T], op: Callable[[T], object], concurrency: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(op, items):
            pass


# ---------------------------------------------------------------------------- databases


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
    except OSError:
        return False
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(POSTGRES_BASE)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception:  # noqa: BLE001 - any failure means: no usable server
        return False
    return True


@contextmanager
def postgres_schemas() -> Iterator[dict[str, str]]:
    """A fresh schema per service; dropped afterwards."""
    import sqlalchemy

    tag = os.urandom(4).hex()
    schemas = {name: f"bench_{name}_{tag}" for name in SERVICES}
    engine = sqlalchemy.create_engine(POSTGRES_BASE)
    with engine.begin() as conn:
        for schema in schemas.values():
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield {
            name: f"{POSTGRES_BASE}?options={quote(f'-csearch_path={schema}')}"
            for name, schema in schemas.items()
        }
    finally:
        with engine.begin() as conn:
            for schema in schemas.values():
                conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


# ---------------------------------------------------------------------------- one backend


def unlimited(service: str) -> dict[str, str]:
    """The per-address rate limit and the connection limit off: every device of the
    benchmark comes from 127.0.0.1, as no real fleet does (docs/benchmarks.md)."""
    prefix = f"FDO_{service.upper()}_"
    return {f"{prefix}FIRST_MESSAGE_RATE": "0", f"{prefix}MAX_CONNECTIONS": "0"}


def bench_backend(
    backend: str,
    urls: dict[str, str],
    *,
    devices: int,
    warmup: int,
    concurrency: int,
    workers: int,
    checkin_rounds: int,
    spy: Path | None = None,
) -> list[PhaseResult]:
    workdir = Path(tempfile.mkdtemp(prefix=f"fdo-bench-{backend}-"))
    stack = Stack(
        workdir,
        database_urls=urls,
        workers=dict.fromkeys(SERVICES, workers),
        owner_env={"FDO_OWNER_TO0_ENABLED": "false"},
        env={name: unlimited(name) for name in SERVICES},
    )
    stack.start()
    try:
        return _phases(
            stack,
            workdir,
            devices=devices,
            warmup=warmup,
            concurrency=concurrency,
            checkin_rounds=checkin_rounds,
            spy=spy,
        )
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _start_spies(stack: Stack, services: tuple[str, ...], folder: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on each service (server and workers) for the phase: collapsed stacks."""
    folder.mkdir(parents=True, exist_ok=True)
    spies = []
    for name in services:
        proc = stack.services[name].process
        assert proc is not None  # noqa: S101 - started
        cmd = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(proc.pid),
            "--subprocesses",
        ]
        cmd += [
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "--gil",
            "-o",
            str(folder / f"{name}.txt"),
        ]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # noqa: S603
    time.sleep(1.0)
    return spies


def _stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)


def _phases(
    stack: Stack,
    workdir: Path,
    *,
    devices: int,
    warmup: int,
    concurrency: int,
    checkin_rounds: int,
    spy: Path | None = None,
) -> list[PhaseResult]:
    mfr_url, rv_url, owner_url = (stack.url(s) for s in SERVICES)
    owner_key = stack.owner_keys["ec256"]
    to2_addr = RVTO2Addr((to2_addr_entry(owner_url),))
    results: list[PhaseResult] = []
    ids = list(range(warmup + devices))
    warm_ids, ids = ids[:warmup], ids[warmup:]
    creds: dict[int, DeviceCredential] = {}
    vouchers: dict[int, OwnershipVoucher] = {}
    checkin_devices: dict[int, CheckinDevice] = {}

    def di(i: int) -> None:
        model = "bench" if i >= 0 else MODEL
        creds[i] = run_di(mfr_url, key_type="ec256", serial=f"BENCH-{i:06d}", model=model)

    def hand_off(i: int) -> None:
        pem = stack.hand_off(str(creds[i].guid), "ec256")
        vouchers[i] = OwnershipVoucher.from_pem(pem)[0]

    def to0(i: int) -> None:
        machine = TO0Owner(voucher=vouchers[i], owner_key=owner_key, rv_to2_addr=to2_addr, wait_seconds=3600)
        with FdoHttpClient(rv_url) as client:
            client.run(machine)
        if machine.accepted_wait_seconds is None:
            raise RuntimeError("TO0 not accepted")

    def to1(i: int) -> None:
        machine = TO1Device(creds[i])
        with FdoHttpClient(rv_url) as client:
            client.run(machine)
        if machine.to1d is None:
            raise RuntimeError("TO1 without to1d")

    def no_command(_argv: list[str]) -> tuple[int, bytes, bytes]:
        return 0, b"", b""

    def onboarding(i: int) -> None:
        root = workdir / "devices" / str(i)
        root.mkdir(parents=True, exist_ok=True)
        made: list[BootcDevice] = []

        def modules() -> list[DeviceModule]:
            mods = standard_modules(root, run=no_command)
            if i < 0:  # a check-in device: offers our bootc module too
                made.append(bootc_module())
                mods.append(made[-1])
            return mods

        onboard(creds[i], kex=KexSuite.ECDH256, cipher=CipherSuite.A128GCM, modules=modules, max_attempts=1)
        if i < 0:
            checkin_devices[i] = CheckinDevice.from_assignment(made[-1].assignment)

    phases: list[tuple[str, tuple[str, ...], Callable[[int], None], bool]] = [
        ("DI", ("manufacturer",), di, True),
        ("hand-off", ("manufacturer", "owner"), hand_off, False),
        ("TO0", ("rendezvous",), to0, True),
        ("TO1", ("rendezvous",), to1, True),
        ("TO1+TO2", ("rendezvous", "owner"), onboarding, True),
    ]
    for name, services, op, measured in phases:
        warm(warm_ids, op, concurrency)
        if measured:
            spies = _start_spies(stack, services, spy) if spy is not None and name == "TO1+TO2" else []
            result = run_phase(stack, name, services, ids, op, concurrency)
            _stop_spies(spies)
            results.append(result)
            print(f"    {name:<10} {result.ops_per_s:7.1f} ops/s", flush=True)
        else:
            warm(ids, op, concurrency)

    # Check-in: the devices have model MODEL (negative ids) and a group with a published
    # revision; onboarding them (unmeasured) gives each its check-in secret. A first
    # round (unmeasured) records "applied"; the measured rounds have nothing to change.
    with stack.admin("owner") as admin:
        admin.post("/api/v1/groups", json={"name": "bench", "model": MODEL}).raise_for_status()
        revision = {"image": IMAGE, "apply_mode": "switch", "config": {"files": []}}
        admin.post("/api/v1/groups/bench/revisions", json=revision).raise_for_status()
    fleet = [-1 - i for i in range(warmup + devices)]
    for name, _, op, _ in phases:
        if name != "TO1":  # TO1+TO2 runs TO1 anyway
            warm(fleet, op, concurrency)
    warm_fleet, fleet = fleet[:warmup], fleet[warmup:]

    def check_in(i: int) -> None:
        checkin_devices[i].check_in()

    warm([i for _ in range(2) for i in warm_fleet] + fleet, check_in, concurrency)
    rounds = [i for _ in range(checkin_rounds) for i in fleet]
    result = run_phase(stack, "check-in", ("owner",), rounds, check_in, concurrency)
    results.append(result)
    print(f"    {'check-in':<10} {result.ops_per_s:7.1f} ops/s", flush=True)
    return results


# ---------------------------------------------------------------------------- report


def print_table(backend: str, results: list[PhaseResult], concurrency: int, workers: int) -> None:
    print()
    print(f"{backend}: {workers} uvicorn workers per service, {concurrency} client threads")
    head = (
        f"  {'phase':<10} {'ops':>5} {'ops/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server CPU ms/op':>17}  {'(per service)':<32} {'loadgen CPU ms/op':>17}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        per = ", ".join(f"{s[:5]} {v / r.ops * 1000:.1f}" for s, v in r.server_cpu.items())
        print(
            f"  {r.name:<10} {r.ops:>5} {r.ops_per_s:>7.1f} {r.pct(0.5):>8.1f} {r.pct(0.99):>8.1f} "
            f"{r.server_ms:>17.2f}  {per:<32} {r.client_ms:>17.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=200, help="measured devices per phase")
    parser.add_argument("--warmup", type=int, default=16, help="unmeasured devices run first")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per service")
    parser.add_argument(
        "--checkin-rounds", type=int, default=3, help="measured check-ins per device (check-in phase)"
    )
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--spy", type=Path, help="py-spy the onboarding phase into this folder")
    args = parser.parse_args(argv)

    backends = args.backend or ["sqlite", "postgresql"]
    print(f"fdo-bootc benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, loopback HTTP")
    all_results: dict[str, list[PhaseResult]] = {}
    for backend in backends:
        print(f"  {backend} ...", flush=True)
        kw: dict[str, Any] = {
            "devices": args.devices,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "checkin_rounds": args.checkin_rounds,
            "spy": None if args.spy is None else args.spy / backend,
        }
        if backend == "sqlite":
            all_results[backend] = bench_backend(backend, {}, **kw)
        elif postgres_available():
            with postgres_schemas() as urls:
                all_results[backend] = bench_backend(backend, urls, **kw)
        else:
            print("    PostgreSQL: no server answers on 127.0.0.1:5432, skipped")

    for backend, results in all_results.items():
        print_table(backend, results, args.concurrency, args.workers)

    print()
    ok = True
    for backend, results in all_results.items():
        full = next(r for r in results if r.name == "TO1+TO2")
        met = full.server_ms < TARGET_MS
        ok = ok and met
        print(
            f"{backend}: server CPU per full TO1+TO2 onboarding (rendezvous + owner) "
            f"{full.server_ms:.2f} ms, target < {TARGET_MS:.0f} ms: {'MET' if met else 'NOT MET'}; "
            f"{full.ops_per_s:.1f} onboardings/s with {args.workers} workers per service "
            f"and the load generator ({full.client_ms:.1f} ms CPU per onboarding) on this machine"
        )
        if full.database_cpu > 0:
            print(
                f"{backend}: the database server's own processes on this machine used a further "
                f"{full.database_cpu / full.ops * 1000:.2f} ms CPU per onboarding (not counted above)"
            )
        print_checkin(backend, next(r for r in results if r.name == "check-in"), args.workers)
    return 0


def print_checkin(backend: str, r: PhaseResult, workers: int) -> None:
    """The check-in figures beside their targets and the fleet verdict."""
    met = r.server_ms < CHECKIN_TARGET_MS
    print(
        f"{backend}: owner CPU per check-in with nothing to change {r.server_ms:.2f} ms, "
        f"target < {CHECKIN_TARGET_MS:.0f} ms: {'MET' if met else 'NOT MET'}; "
        f"{r.ops_per_s:.1f} check-ins/s (p50 {r.pct(0.5):.1f} ms, p99 {r.pct(0.99):.1f} ms) with "
        f"{workers} owner workers and the load generator ({r.client_ms:.1f} ms CPU per check-in) "
        "on this machine"
    )
    ceiling = FLEET_CORES / (r.server_cpu["owner"] / r.ops)
    line = (
        f"{backend}: fleet of 100,000 devices every 5 min = {FLEET_RATE:.0f} check-ins/s; "
        f"CPU-bound ceiling of the owner on {FLEET_CORES} cores {ceiling:.0f}/s"
    )
    fits = ceiling >= FLEET_RATE
    if r.database_cpu > 0:
        db_ms = r.database_cpu / r.ops * 1000
        ceiling = FLEET_CORES / ((r.server_cpu["owner"] + r.database_cpu) / r.ops)
        line += f", with PostgreSQL on the same cores (+{db_ms:.2f} ms per check-in) {ceiling:.0f}/s"
        fits = ceiling >= FLEET_RATE
    print(f"{line}: {'FITS' if fits else 'DOES NOT FIT'} on one {FLEET_CORES}-core machine")


if __name__ == "__main__":
    sys.exit(main())
