"""``make bench``: throughput, latency, server CPU, memory and idle CPU of the services.

For each database backend (SQLite; PostgreSQL when a server answers on 127.0.0.1:5432)
a :class:`fdo_server.stack.Stack` is started with two uvicorn workers per service, on
loopback. Simulated devices then go through the phases below, driven by
``--concurrency`` client threads of this process (the load generator):

* RSS at start  each service's supervisor and workers, once they     (bench/footprint.py)
                are all up and their RSS has stopped moving (with
                ``--admin-process`` the workers serve only devices
                and the admin plane's process is shown beside them)
* DI            device key, DI at the manufacturer               (manufacturer CPU)
* TO0           one registration per voucher at the rendezvous   (rendezvous CPU)
* TO1           TO1 only, to1d handed out                        (rendezvous CPU)
* TO1+TO2       ``--onboardings`` devices: TO1 then TO2 with     (rendezvous + owner CPU)
                P-256 / ECDH256 / A128GCM and the demo's
                ServiceInfo (fdo.download, fdo.command); the
                owner's RSS after half of them and after all
* TO1+TO2 P-384 the same with P-384 device and owner keys,       (rendezvous + owner CPU)
                ECDH384 / A256GCM
* check-in      ``--checkin-rounds`` check-ins per device with     (owner CPU)
                nothing to change, by new devices onboarded
                (unmeasured) with the bootc module against a
                group with a revision (bench/checkin_load.py)
* device client ``--client-runs`` runs of the real ``fdo device   (bench/device_client.py)
                onboard``: peak RSS and wall time
* idle          ``--idle-seconds`` with no request, after the load  (all processes of each service)
                and ``--settle-seconds`` for pending work
* RSS at end
* TO0 at scale  a second stack whose owner runs its TO0 scheduler  (bench/to0_bulk_phase.py)
                with its default settings: ``--to0-vouchers``
                vouchers imported, time until the rendezvous holds
                them all (at most ``--to0-cap`` seconds); then the
                owner's idle CPU, if they all were registered

DI, TO0 and TO1 are measured over the first ``--devices`` devices (the others needed for
the onboarding phase go through them unmeasured); the P-384 phase over ``--devices``.

TO0 is driven by the benchmark itself in the main stack: the owner's TO0 scheduler is
switched off (``FDO_OWNER_TO0_ENABLED=false``) and each voucher is registered with
:class:`fdo.to0.owner.TO0Owner` over :class:`transport.client.FdoHttpClient` and the
owner's own key, so the rendezvous CPU of exactly N registrations is measured (the
owner-side signing runs in the load generator, as it would in the owner's scheduler).

Server CPU is read from ``/proc`` for each service's uvicorn process and its workers
before and after a phase, in nanoseconds per thread (``bench/footprint.py``'s
:func:`cpu_since`; in clock ticks where a thread ended within the phase); on
PostgreSQL the CPU of the database server's processes on this machine is reported
beside it, not in it. A warm-up round of ``--warmup`` devices goes through every phase
first, unmeasured. The device's ``fdo.command`` runner is a stub (no fork per device in
the load generator); files are written under a per-device folder. The run ends with a
table of each figure of issue 15 against its target (bench/summary.py). ``--quick`` is
a smoke run with small counts.

``make bench`` compiles the project's modules and drops the interpreter's shared libraries
from the page cache (``bench/page_cache.py``) before it runs this script, so that the RSS
figures are those of an installed service whose libraries are read from disk; run both
first when running this script by hand.
"""

from __future__ import annotations

import argparse
import math
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
from device_client import DeviceClientFigures
from device_client import measure as measure_device_client
from footprint import MB, ServiceRss, cpu_mark, cpu_since, idle_cpu, service_rss, stack_rss, wait_settled
from summary import Figure, print_summary
from to0_bulk_phase import To0BulkResult, measure_to0_bulk

from device.modules import standard_modules
from device.onboard import onboard, run_di
from fdo.cipher import CipherSuite
from fdo.credential import DeviceCredential
from fdo.crypto import public_key_to_pem
from fdo.kex import KexSuite
from fdo.rvinfo import RVTO2Addr
from fdo.serviceinfo import DeviceModule
from fdo.serviceinfo.bootc import BootcDevice
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.voucher import OwnershipVoucher
from fdo_server.launcher import process_tree, stat_cpu_seconds
from fdo_server.stack import SERVICES, Stack, without_address_limits
from owner.settings import OwnerSettings, to2_addr_entry
from transport.client import FdoHttpClient

T = TypeVar("T")


@dataclass(frozen=True)
class Suite:
    """Device key, owner key and TO2 suites of an onboarding phase."""

    name: str
    key_type: str
    kex: KexSuite
    cipher: CipherSuite


P256 = Suite("P-256", "ec256", KexSuite.ECDH256, CipherSuite.A128GCM)
P384 = Suite("P-384", "ec384", KexSuite.ECDH384, CipherSuite.A256GCM)
#: Device numbers from here on are the P-384 phase's.
P384_BASE = 1_000_000
#: Vouchers per hand-off request (manufacturer batch extend, owner import).
HAND_OFF_BATCH = 100


def suite_of(i: int) -> Suite:
    return P384 if i >= P384_BASE else P256


POSTGRES_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Issue 15's targets.
#: Server CPU (rendezvous + owner) per TO1+TO2, P-256 / ECDH256 / A128GCM, ms.
TARGET_MS = 8.0
#: The same with P-384 keys, ECDH384 / A256GCM, ms.
P384_TARGET_MS = 10.0
#: Rendezvous CPU per TO1 and per TO0, manufacturer CPU per DI, ms.
TO1_TARGET_MS = 0.8
TO0_TARGET_MS = 1.5
DI_TARGET_MS = 2.0
#: RSS per service worker after start, and per owner worker after all onboardings, MB.
START_RSS_TARGET_MB = 60.0
OWNER_RSS_TARGET_MB = 80.0
#: The owner worker's RSS may grow by less than this from half to all onboardings, %.
OWNER_RSS_GROWTH_PCT = 5.0
#: CPU of an idle service (all its processes), ms per s.
IDLE_TARGET_MS = 0.1
#: ``fdo device onboard``: peak RSS (MB) and median wall time (s).
CLIENT_RSS_TARGET_MB = 35.0
CLIENT_WALL_TARGET_S = 0.3
#: From importing the vouchers to all registered at the rendezvous, s.
TO0_BULK_TARGET_S = 120.0
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

    def merged(self, other: PhaseResult) -> PhaseResult:
        """This phase and ``other`` (the same operations, run after it) as one."""
        return PhaseResult(
            self.name,
            self.services,
            self.ops + other.ops,
            self.wall + other.wall,
            self.latencies + other.latencies,
            {s: self.server_cpu[s] + other.server_cpu[s] for s in self.services},
            self.client_cpu + other.client_cpu,
            self.database_cpu + other.database_cpu,
        )


@dataclass
class BackendResult:
    """Everything measured on one backend."""

    phases: list[PhaseResult]
    #: Each service's processes by moment ("at start", "at end").
    rss: dict[str, dict[str, ServiceRss]]
    #: The owner's processes after so many measured P-256 onboardings.
    owner_rss: list[tuple[int, ServiceRss]]
    #: False when the workers' RSS had not settled when the "at start" figure was taken.
    settled: bool = True
    #: ms of CPU per s of each idle service after the load (None: not measured).
    idle: dict[str, float] | None = None
    idle_seconds: float = 0.0
    client: DeviceClientFigures | None = None
    to0_bulk: To0BulkResult | None = None
    #: ms of CPU per s of the idle owner with its TO0 scheduler on, once all were registered.
    to0_idle: float | None = None

    def phase(self, name: str) -> PhaseResult:
        return next(r for r in self.phases if r.name == name)


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

    cpu_before = {s: cpu_mark(stack.services[s]) for s in services}
    client_before = process_cpu()
    on_postgres = any(url.startswith("postgresql") for url in stack.database_urls.values())
    database_before = postgres_cpu() if on_postgres else 0.0
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(timed, items):
            pass
    wall = time.perf_counter() - start
    client = process_cpu() - client_before
    database = postgres_cpu() - database_before if on_postgres else 0.0
    cpu = {s: cpu_since(stack.services[s], cpu_before[s]) for s in services}
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


def bench_backend(
    backend: str,
    urls: dict[str, str],
    *,
    devices: int,
    onboardings: int,
    warmup: int,
    concurrency: int,
    workers: int,
    checkin_rounds: int,
    client_runs: int,
    idle_seconds: float,
    settle_seconds: float,
    spy: Path | None = None,
    perf: Path | None = None,
    admin_process: bool = False,
) -> BackendResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"fdo-bench-{backend}-"))
    env = {name: without_address_limits(name) for name in SERVICES}
    if admin_process:  # each admin plane in a process of its own: the workers serve devices only
        for name in SERVICES:
            env[name][f"FDO_{name.upper()}_ADMIN_PROCESS"] = "true"
    stack = Stack(
        workdir,
        database_urls=urls,
        workers=dict.fromkeys(SERVICES, workers),
        owner_env={"FDO_OWNER_TO0_ENABLED": "false"},
        env=env,
        split_admin=admin_process,
    )
    stack.start()
    try:
        settled = wait_settled(stack, workers)
        result = BackendResult([], {"at start": stack_rss(stack)}, [], settled=settled)
        _phases(
            stack,
            workdir,
            result,
            devices=devices,
            onboardings=onboardings,
            warmup=warmup,
            concurrency=concurrency,
            checkin_rounds=checkin_rounds,
            spy=spy,
            perf=perf,
        )
        if client_runs > 0:
            result.client = measure_device_client(stack, client_runs)
            print(f"    {'client':<13} {result.client.wall_median:7.2f} s per fdo device onboard", flush=True)
        if idle_seconds > 0:
            time.sleep(settle_seconds)
            result.idle = idle_cpu(stack, idle_seconds)
            result.idle_seconds = idle_seconds
            print(f"    {'idle':<13} {idle_seconds:7.0f} s", flush=True)
        result.rss["at end"] = stack_rss(stack)
        return result
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def scheduler_defaults() -> dict[str, str]:
    """The owner's TO0 scheduler on, with its default settings (the Stack shortens the
    interval and retry for the tests; this puts back the defaults the settings define)."""
    env = {"FDO_OWNER_TO0_ENABLED": "true"}
    for name in ("to0_interval_seconds", "to0_retry_seconds"):
        field = OwnerSettings.model_fields.get(name)
        if field is not None:
            env[f"FDO_OWNER_{name.upper()}"] = str(field.default)
    return env


def bench_to0_bulk(
    backend: str,
    urls: dict[str, str],
    result: BackendResult,
    *,
    count: int,
    cap: float,
    workers: int,
    idle_seconds: float,
    settle_seconds: float,
) -> None:
    """TO0 at scale on a stack of its own whose owner runs its TO0 scheduler."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fdo-bench-to0-{backend}-"))
    stack = Stack(
        workdir,
        database_urls=urls,
        workers=dict.fromkeys(SERVICES, workers),
        owner_env=scheduler_defaults(),
        env={name: without_address_limits(name) for name in SERVICES},
    )
    print(f"    {'TO0 at scale':<13} {count:,} vouchers, at most {cap:.0f} s", flush=True)
    stack.start()
    try:
        wait_settled(stack, workers)
        result.to0_bulk = measure_to0_bulk(stack, count, cap=cap)
        if result.to0_bulk.finished and idle_seconds > 0:
            time.sleep(settle_seconds)
            result.to0_idle = idle_cpu(stack, idle_seconds, ("owner",))["owner"]
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


def _start_perf(stack: Stack, services: tuple[str, ...], folder: Path) -> list[subprocess.Popen[bytes]]:
    """Linux perf on every process of the services for the phase (user and kernel): a
    ``perf.data`` to read with ``perf report --sort dso,sym``."""
    folder.mkdir(parents=True, exist_ok=True)
    pids = []
    for name in services:
        proc = stack.services[name].process
        assert proc is not None  # noqa: S101 - started
        pids += process_tree(proc.pid)
    cmd = ["perf", "record", "-F", "1999", "-p", ",".join(map(str, pids)), "-o", str(folder / "perf.data")]
    perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    time.sleep(1.0)
    return [perf]


def _stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)


def _phases(
    stack: Stack,
    workdir: Path,
    out: BackendResult,
    *,
    devices: int,
    onboardings: int,
    warmup: int,
    concurrency: int,
    checkin_rounds: int,
    spy: Path | None = None,
    perf: Path | None = None,
) -> None:
    mfr_url, rv_url, owner_url = (stack.url(s) for s in SERVICES)
    to2_addr = RVTO2Addr((to2_addr_entry(owner_url),))
    creds: dict[int, DeviceCredential] = {}
    vouchers: dict[int, OwnershipVoucher] = {}
    checkin_devices: dict[int, CheckinDevice] = {}

    def di(i: int) -> None:
        model = "bench" if i >= 0 else MODEL
        creds[i] = run_di(mfr_url, key_type=suite_of(i).key_type, serial=f"BENCH-{i:06d}", model=model)

    def hand_off(batch: Sequence[int]) -> None:
        """The manufacturer extends a batch of vouchers (one suite) to the owner's key;
        the owner imports them."""
        owner_key = stack.owner_keys[suite_of(batch[0]).key_type]
        ids = {str(creds[i].guid): i for i in batch}
        body = {"guids": list(ids), "owner_key_pem": public_key_to_pem(owner_key.public_key()).decode()}
        with stack.admin("manufacturer") as mfr:
            resp = mfr.post("/api/v1/vouchers/extend", json=body)
            resp.raise_for_status()
        extended = resp.json()
        with stack.admin("owner") as owner:
            resp = owner.post(
                "/api/v1/vouchers", content=extended["pem"], headers={"Content-Type": "text/plain"}
            )
            if resp.status_code != 200:
                raise RuntimeError(f"owner refused vouchers: {resp.text[:500]}")
        for item in extended["vouchers"]:
            vouchers[ids[item["guid"]]] = OwnershipVoucher.from_pem(item["pem"])[0]

    def to0(i: int) -> None:
        owner_key = stack.owner_keys[suite_of(i).key_type]
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

        suite = suite_of(i)
        onboard(creds[i], kex=suite.kex, cipher=suite.cipher, modules=modules, max_attempts=1)
        if i < 0:
            checkin_devices[i] = CheckinDevice.from_assignment(made[-1].assignment)

    def hand_off_all(group: Sequence[int]) -> None:
        batches = [group[k : k + HAND_OFF_BATCH] for k in range(0, len(group), HAND_OFF_BATCH)]
        warm(batches, hand_off, concurrency)

    def measure(
        name: str, services: tuple[str, ...], items: Sequence[int], op: Callable[[int], None]
    ) -> None:
        result = run_phase(stack, name, services, items, op, concurrency)
        out.phases.append(result)
        print(f"    {name:<13} {result.ops_per_s:7.1f} ops/s", flush=True)

    # P-256: DI, TO0 and TO1 measured over the first `devices`, TO1+TO2 over `onboardings`
    # (the owner's RSS taken after half of them and after all).
    ids = list(range(warmup + max(devices, onboardings)))
    warm_ids, ids = ids[:warmup], ids[warmup:]
    measured, rest = ids[:devices], ids[devices:]
    warm(warm_ids, di, concurrency)
    measure("DI", ("manufacturer",), measured, di)
    warm(rest, di, concurrency)
    hand_off_all(warm_ids + ids)
    warm(warm_ids, to0, concurrency)
    measure("TO0", ("rendezvous",), measured, to0)
    warm(rest, to0, concurrency)
    warm(warm_ids, to1, concurrency)
    measure("TO1", ("rendezvous",), measured, to1)
    warm(warm_ids, onboarding, concurrency)
    onboard_ids = ids[:onboardings]
    half = len(onboard_ids) // 2
    spies = _start_spies(stack, ("rendezvous", "owner"), spy) if spy is not None else []
    spies += _start_perf(stack, ("rendezvous", "owner"), perf) if perf is not None else []
    first = run_phase(stack, "TO1+TO2", ("rendezvous", "owner"), onboard_ids[:half], onboarding, concurrency)
    out.owner_rss.append((half, service_rss("owner", stack.services["owner"])))
    second = run_phase(stack, "TO1+TO2", ("rendezvous", "owner"), onboard_ids[half:], onboarding, concurrency)
    out.owner_rss.append((len(onboard_ids), service_rss("owner", stack.services["owner"])))
    _stop_spies(spies)
    full = first.merged(second)
    out.phases.append(full)
    print(f"    {'TO1+TO2':<13} {full.ops_per_s:7.1f} ops/s", flush=True)

    # P-384: device key ec384, owner key ec384, ECDH384, A256GCM.
    p384 = [P384_BASE + k for k in range(warmup + devices)]
    warm(p384, di, concurrency)
    hand_off_all(p384)
    warm(p384, to0, concurrency)
    warm(p384[:warmup], onboarding, concurrency)
    measure("TO1+TO2 P-384", ("rendezvous", "owner"), p384[warmup:], onboarding)

    # Check-in: the devices have model MODEL (negative ids) and a group with a published
    # revision; onboarding them (unmeasured) gives each its check-in secret. A first
    # round (unmeasured) records "applied"; the measured rounds have nothing to change.
    with stack.admin("owner") as admin:
        admin.post("/api/v1/groups", json={"name": "bench", "model": MODEL}).raise_for_status()
        revision = {"image": IMAGE, "apply_mode": "switch", "config": {"files": []}}
        admin.post("/api/v1/groups/bench/revisions", json=revision).raise_for_status()
    fleet = [-1 - i for i in range(warmup + devices)]
    warm(fleet, di, concurrency)
    hand_off_all(fleet)
    warm(fleet, to0, concurrency)
    warm(fleet, onboarding, concurrency)
    warm_fleet, fleet = fleet[:warmup], fleet[warmup:]

    def check_in(i: int) -> None:
        checkin_devices[i].check_in()

    warm([i for _ in range(2) for i in warm_fleet] + fleet, check_in, concurrency)
    rounds = [i for _ in range(checkin_rounds) for i in fleet]
    measure("check-in", ("owner",), rounds, check_in)


# ---------------------------------------------------------------------------- report


def print_table(backend: str, results: list[PhaseResult], concurrency: int, workers: int) -> None:
    print()
    print(f"{backend}: {workers} uvicorn workers per service, {concurrency} client threads")
    head = (
        f"  {'phase':<13} {'ops':>5} {'ops/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server CPU ms/op':>17}  {'(per service)':<32} {'loadgen CPU ms/op':>17}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        per = ", ".join(f"{s[:5]} {v / r.ops * 1000:.1f}" for s, v in r.server_cpu.items())
        print(
            f"  {r.name:<13} {r.ops:>5} {r.ops_per_s:>7.1f} {r.pct(0.5):>8.1f} {r.pct(0.99):>8.1f} "
            f"{r.server_ms:>17.2f}  {per:<32} {r.client_ms:>17.2f}"
        )


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value / MB:.1f}"


def print_memory(backend: str, result: BackendResult) -> None:
    """RSS of each service's supervisor, workers and helpers at start, after the
    onboardings (owner) and at the end."""
    print()
    print(f"{backend}: RSS in MB (VmRSS); workers: the largest, then each")
    head = (
        f"  {'when':<34} {'service':<13} {'supervisor':>10} {'worker max':>10}  "
        f"{'workers':<20} {'helpers':>8} {'admin':>6}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    rows: list[tuple[str, ServiceRss]] = []
    start = "at start" + ("" if result.settled else " (not settled)")
    rows += [(start, r) for r in result.rss["at start"].values()]
    rows += [(f"after {n:,} onboardings", r) for n, r in result.owner_rss]
    rows += [("at end", r) for r in result.rss.get("at end", {}).values()]
    for when, r in rows:
        each = ", ".join(_mb(w) for w in r.workers)
        helpers = ", ".join(_mb(h) for h in r.helpers) or "–"
        print(
            f"  {when:<34} {r.service:<13} {_mb(r.supervisor):>10} {_mb(r.max_worker):>10}  "
            f"{each:<20} {helpers:>8} {_mb(r.admin):>6}"
        )


def print_extras(backend: str, result: BackendResult) -> None:
    """Idle CPU, the device client and TO0 at scale, each on a line."""
    if result.idle is not None:
        per = ", ".join(f"{name} {value:.3f}" for name, value in result.idle.items())
        print(
            f"{backend}: idle CPU over {result.idle_seconds:.0f} s after the load, ms per s "
            f"(all processes of each service): {per}"
        )
    if result.client is not None:
        c = result.client
        print(
            f"{backend}: fdo device onboard (TO1+TO2, {len(c.runs)} runs): peak RSS {c.peak_rss_mb:.1f} MB, "
            f"wall time median {c.wall_median:.3f} s (min {c.wall_min:.3f} s), "
            f"CPU median {c.cpu_median:.3f} s"
        )
    if result.to0_bulk is not None:
        b = result.to0_bulk
        line = (
            f"{backend}: TO0 at scale, owner's scheduler with its defaults: {b.count:,} vouchers imported "
            f"in {b.import_seconds:.1f} s; "
        )
        if b.finished:
            line += f"all registered at the rendezvous {b.seconds:.1f} s after the import began"
        else:
            rate = b.registered / b.seconds if b.seconds > 0 else 0.0
            line += f"{b.registered:,} registered when the cap of {b.cap:.0f} s ran out ({rate:.1f} per s"
            line += f", all in ~{b.count / rate:.0f} s at that rate)" if rate > 0 else ")"
        print(line)
        if result.to0_idle is not None:
            print(
                f"{backend}: idle owner with its TO0 scheduler on, all registered: "
                f"{result.to0_idle:.3f} ms per s"
            )


def figures(result: BackendResult) -> list[Figure]:
    """Each figure of issue 15 (and the check-in's of issue 12) with its target."""
    out: list[Figure] = []
    for name, r in result.rss["at start"].items():
        who = "device worker" if r.admin is not None else "worker"
        rss = r.max_worker / MB
        out.append(Figure(f"RSS per {who} after start, {name}", rss, START_RSS_TARGET_MB, "MB", digits=1))
    if result.owner_rss:
        n, last = result.owner_rss[-1]
        out.append(
            Figure(
                f"RSS per owner worker after {n:,} onboardings",
                last.max_worker / MB,
                OWNER_RSS_TARGET_MB,
                "MB",
                digits=1,
            )
        )
        half, first = result.owner_rss[0]
        growth = (last.max_worker - first.max_worker) / first.max_worker * 100 if first.max_worker else None
        out.append(
            Figure(
                f"owner worker RSS growth, {half:,} to {n:,} onboardings",
                growth,
                OWNER_RSS_GROWTH_PCT,
                "%",
                digits=1,
            )
        )
    for name in SERVICES:
        value = None if result.idle is None else result.idle[name]
        out.append(Figure(f"idle CPU after the load, {name}", value, IDLE_TARGET_MS, "ms/s", digits=3))
    note, failed = "", False
    if result.to0_bulk is not None and not result.to0_bulk.finished:
        note, failed = "registration unfinished", True
    out.append(
        Figure(
            "idle CPU, owner with TO0 scheduler on",
            result.to0_idle,
            IDLE_TARGET_MS,
            "ms/s",
            note=note,
            failed=failed,
            digits=3,
        )
    )
    phases = {r.name: r for r in result.phases}
    for label, name, target in (
        ("server CPU per TO1+TO2, P-256/ECDH256/A128GCM", "TO1+TO2", TARGET_MS),
        ("server CPU per TO1+TO2, P-384/ECDH384/A256GCM", "TO1+TO2 P-384", P384_TARGET_MS),
        ("rendezvous CPU per TO1", "TO1", TO1_TARGET_MS),
        ("rendezvous CPU per TO0", "TO0", TO0_TARGET_MS),
        ("manufacturer CPU per DI", "DI", DI_TARGET_MS),
    ):
        out.append(Figure(label, phases[name].server_ms if name in phases else None, target, "ms"))
    client = result.client
    out.append(
        Figure(
            "fdo device onboard, peak RSS",
            None if client is None else client.peak_rss_mb,
            CLIENT_RSS_TARGET_MB,
            "MB",
            digits=1,
        )
    )
    out.append(
        Figure(
            "fdo device onboard, wall time (median)",
            None if client is None else client.wall_median,
            CLIENT_WALL_TARGET_S,
            "s",
            digits=3,
        )
    )
    bulk = result.to0_bulk
    if bulk is None:
        out.append(
            Figure("vouchers imported to all registered (TO0)", None, TO0_BULK_TARGET_S, "s", digits=1)
        )
    else:
        note = "" if bulk.finished else f"cap; {bulk.registered:,} of {bulk.count:,} registered"
        out.append(
            Figure(
                f"{bulk.count:,} vouchers imported to all registered (TO0)",
                bulk.seconds,
                TO0_BULK_TARGET_S,
                "s",
                note=note,
                failed=not bulk.finished,
                digits=1,
            )
        )
    if "check-in" in phases:
        out.append(
            Figure(
                "owner CPU per check-in, nothing to change",
                phases["check-in"].server_ms,
                CHECKIN_TARGET_MS,
                "ms",
            )
        )
    return out


#: ``--quick``: a smoke run (about a minute per backend); any flag given still wins.
QUICK = {
    "devices": 20,
    "warmup": 4,
    "onboardings": 40,
    "checkin_rounds": 1,
    "client_runs": 2,
    "idle_seconds": 5.0,
    "settle_seconds": 1.0,
    "to0_vouchers": 200,
    "to0_cap": 15.0,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=200, help="measured devices of DI, TO0, TO1, P-384")
    parser.add_argument(
        "--onboardings", type=int, default=2000, help="measured P-256 TO1+TO2 onboardings (owner RSS at half)"
    )
    parser.add_argument("--warmup", type=int, default=16, help="unmeasured devices run first")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per service")
    parser.add_argument(
        "--checkin-rounds", type=int, default=3, help="measured check-ins per device (check-in phase)"
    )
    parser.add_argument(
        "--client-runs", type=int, default=10, help="measured runs of fdo device onboard (0: skip)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="idle CPU window after the load (0: skip)"
    )
    parser.add_argument(
        "--settle-seconds", type=float, default=5.0, help="wait after the load before the idle window"
    )
    parser.add_argument(
        "--to0-vouchers", type=int, default=10_000, help="vouchers of the TO0-at-scale phase (0: skip)"
    )
    parser.add_argument(
        "--to0-cap",
        type=float,
        default=TO0_BULK_TARGET_S,
        help="give the TO0-at-scale phase up (NOT MET) after this many seconds (default: its target)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run with small counts")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--spy", type=Path, help="py-spy the onboarding phase into this folder")
    parser.add_argument(
        "--perf", type=Path, help="Linux perf (user and kernel) on the onboarding phase into this folder"
    )
    parser.add_argument(
        "--admin-process",
        action="store_true",
        help="serve each admin plane from a process of its own (serve --admin-process): the workers "
        "measured then serve only devices; the admin process's RSS is shown beside them",
    )
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.perf is not None and shutil.which("perf") is None:
        parser.error("--perf needs Linux perf on the PATH (Debian: apt-get install linux-perf)")
    if args.onboardings < 2 or args.devices < 1 or args.warmup < 0:
        parser.error("--onboardings must be at least 2, --devices at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = args.backend or ["sqlite", "postgresql"]
    mode = "admin planes in processes of their own" if args.admin_process else "both planes in every worker"
    print(
        f"fdo-bootc benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, loopback HTTP, "
        f"{args.workers} workers per service, {mode}"
    )
    all_results: dict[str, BackendResult] = {}
    kw: dict[str, Any] = {
        "devices": args.devices,
        "onboardings": args.onboardings,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "checkin_rounds": args.checkin_rounds,
        "client_runs": args.client_runs,
        "idle_seconds": args.idle_seconds,
        "settle_seconds": args.settle_seconds,
        "admin_process": args.admin_process,
    }
    bulk: dict[str, Any] = {
        "count": args.to0_vouchers,
        "cap": args.to0_cap,
        "workers": args.workers,
        "idle_seconds": args.idle_seconds,
        "settle_seconds": args.settle_seconds,
    }
    for backend in backends:
        print(f"  {backend} ...", flush=True)
        began = time.monotonic()
        spy = None if args.spy is None else args.spy / backend
        perf = None if args.perf is None else args.perf / backend
        if backend == "sqlite":
            result = all_results[backend] = bench_backend(backend, {}, spy=spy, perf=perf, **kw)
            if args.to0_vouchers > 0:
                bench_to0_bulk(backend, {}, result, **bulk)
        elif postgres_available():
            with postgres_schemas() as urls:
                result = all_results[backend] = bench_backend(backend, urls, spy=spy, perf=perf, **kw)
            if args.to0_vouchers > 0:
                with postgres_schemas() as urls:
                    bench_to0_bulk(backend, urls, result, **bulk)
        else:
            print("    PostgreSQL: no server answers on 127.0.0.1:5432, skipped")
            continue
        print(f"  {backend}: {time.monotonic() - began:.0f} s", flush=True)

    for backend, result in all_results.items():
        print_table(backend, result.phases, args.concurrency, args.workers)

    for backend, result in all_results.items():
        print()
        for name, suite, target in (("TO1+TO2", P256, TARGET_MS), ("TO1+TO2 P-384", P384, P384_TARGET_MS)):
            full = result.phase(name)
            print(
                f"{backend}: server CPU per full TO1+TO2 onboarding, {suite.name}/{suite.kex.name}/"
                f"{suite.cipher.name} (rendezvous + owner) {full.server_ms:.2f} ms, "
                f"target < {target:.0f} ms: "
                f"{'MET' if full.server_ms < target else 'NOT MET'}; "
                f"{full.ops_per_s:.1f} onboardings/s with {args.workers} workers per service "
                f"and the load generator ({full.client_ms:.1f} ms CPU per onboarding) on this machine"
            )
            if full.database_cpu > 0:
                print(
                    f"{backend}: the database server's own processes on this machine used a further "
                    f"{full.database_cpu / full.ops * 1000:.2f} ms CPU per onboarding (not counted above)"
                )
        print_checkin(backend, result.phase("check-in"), args.workers)
        print_extras(backend, result)
    for backend, result in all_results.items():
        print_memory(backend, result)
    print_summary({backend: figures(result) for backend, result in all_results.items()})
    return 0


def _ceiling(ops: int, cpu_seconds: float) -> float:
    """Operations per second ``FLEET_CORES`` cores can do at ``cpu_seconds`` per ``ops``
    (a run too short to register a clock tick of CPU has no ceiling to show)."""
    return FLEET_CORES * ops / cpu_seconds if cpu_seconds > 0 else math.inf


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
    ceiling = _ceiling(r.ops, r.server_cpu["owner"])
    line = (
        f"{backend}: fleet of 100,000 devices every 5 min = {FLEET_RATE:.0f} check-ins/s; "
        f"CPU-bound ceiling of the owner on {FLEET_CORES} cores {ceiling:.0f}/s"
    )
    fits = ceiling >= FLEET_RATE
    if r.database_cpu > 0:
        db_ms = r.database_cpu / r.ops * 1000
        ceiling = _ceiling(r.ops, r.server_cpu["owner"] + r.database_cpu)
        line += f", with PostgreSQL on the same cores (+{db_ms:.2f} ms per check-in) {ceiling:.0f}/s"
        fits = ceiling >= FLEET_RATE
    print(f"{line}: {'FITS' if fits else 'DOES NOT FIT'} on one {FLEET_CORES}-core machine")


if __name__ == "__main__":
    sys.exit(main())
