"""Memory of each service worker: RSS, PSS and USS right after start, and the owner's
workers as onboardings go by.

Starts the three services on SQLite (``fdo_server.stack.Stack``, the same launcher as
the benchmark and the end-to-end tests) with ``--workers`` uvicorn workers each, reads
``/proc/<pid>/smaps_rollup`` of every worker, then (``--onboardings N``) runs N devices
through DI, hand-off, TO0 and TO1+TO2 and prints the owner's workers at each
``--every`` onboardings. ``--split-admin`` serves each admin plane on a listener of its
own (``serve --admin-port``); ``--admin-process`` also serves it from a process of its
own (``FDO_<SERVICE>_ADMIN_PROCESS``).

    .venv/bin/python bench/worker_memory.py [--workers 2] [--onboardings 2000 --every 500]

Prints each figure beside its target (issue 15): every worker under 60 MB RSS at start;
the owner's under 80 MB after the onboardings, and flat over the second half. Run
``bench/page_cache.py`` first to compare with ``make bench``, which does.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from device.modules import standard_modules
from device.onboard import onboard, run_di
from fdo.cipher import CipherSuite
from fdo.credential import DeviceCredential
from fdo.kex import KexSuite
from fdo.rvinfo import RVTO2Addr
from fdo.to0.owner import TO0Owner
from fdo.voucher import OwnershipVoucher
from fdo_server.stack import SERVICES, Stack, without_address_limits
from owner.settings import to2_addr_entry
from transport.client import FdoHttpClient

START_TARGET_MB = 60.0
OWNER_TARGET_MB = 80.0


def rollup(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) of ``pid`` in MB."""
    kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            kb[name] = int(rest.split()[0])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"rss": kb.get("Rss", 0) / 1024, "pss": kb.get("Pss", 0) / 1024, "uss": uss / 1024}


def processes(stack: Stack, service: str) -> list[tuple[int, str]]:
    """Every process of ``service`` with what it is: the supervisor, a worker (both planes),
    a device-plane worker or the admin plane's process (``serve --admin-port``), or
    multiprocessing's resource tracker."""
    proc = stack.services[service].process
    assert proc is not None  # noqa: S101 - started
    out = []
    for pid in stack.services[service].pids():
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            single = stack.workers.get(service, 1) == 1  # the first process is then the worker
            split = any(e.endswith(b"_ADMIN_PROCESS=true") for e in env)  # serve sets the plane later
            if pid == proc.pid:
                kind = ("device" if split else "worker") if single else "supervisor"
            elif "resource_tracker" in cmd:
                kind = "tracker"
            elif b"FDO_SERVE_PLANE=device" in env:
                kind = "device"
            else:
                kind = "admin" if split else "worker"
            out.append((pid, kind))
    return out


def workers(stack: Stack, service: str) -> list[int]:
    return [pid for pid, kind in processes(stack, service) if kind in {"worker", "device"}]


def print_start(stack: Stack) -> None:
    print(f"{'service':<13} {'process':<11} {'pid':>7} {'RSS MB':>7} {'PSS MB':>7} {'USS MB':>7}  target")
    for service in SERVICES:
        for pid, kind in processes(stack, service):
            m = rollup(pid)
            verdict = ""
            if kind in {"worker", "device"}:
                verdict = f"< {START_TARGET_MB:.0f}: {'MET' if m['rss'] < START_TARGET_MB else 'NOT MET'}"
            sizes = f"{m['rss']:7.1f} {m['pss']:7.1f} {m['uss']:7.1f}"
            print(f"{service:<13} {kind:<11} {pid:>7} {sizes}  {verdict}")


def onboard_many(stack: Stack, count: int, every: int, concurrency: int) -> list[tuple[int, list[float]]]:
    """Run ``count`` devices end to end; the owner workers' RSS at each ``every``."""
    owner_key = stack.owner_keys["ec256"]
    to2_addr = RVTO2Addr((to2_addr_entry(stack.url("owner")),))
    root = stack.workdir / "device-root"
    root.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        cred: DeviceCredential = run_di(
            stack.url("manufacturer"), key_type="ec256", serial=f"MEM-{i:06d}", model="m"
        )
        voucher = OwnershipVoucher.from_pem(stack.hand_off(str(cred.guid), "ec256"))[0]
        machine = TO0Owner(voucher=voucher, owner_key=owner_key, rv_to2_addr=to2_addr, wait_seconds=3600)
        with FdoHttpClient(stack.url("rendezvous")) as client:
            client.run(machine)
        onboard(
            cred,
            kex=KexSuite.ECDH256,
            cipher=CipherSuite.A128GCM,
            modules=lambda: standard_modules(root, run=lambda _argv: (0, b"", b"")),
            max_attempts=1,
        )

    marks: list[tuple[int, list[float]]] = []
    done = 0
    with ThreadPoolExecutor(concurrency) as pool:
        while done < count:
            batch = min(every, count - done)
            list(pool.map(one, range(done, done + batch)))
            done += batch
            rss = [rollup(pid)["rss"] for pid in workers(stack, "owner")]
            marks.append((done, rss))
            print(
                f"  after {done:>5} onboardings: owner workers RSS {', '.join(f'{r:.1f}' for r in rss)} MB",
                flush=True,
            )
    return marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split-admin", action="store_true", help="the admin plane on a listener of its own")
    parser.add_argument("--admin-process", action="store_true", help="... and in a process of its own")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after start")
    parser.add_argument("--onboardings", type=int, default=0)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--malloc-arena-max", type=int, help="glibc MALLOC_ARENA_MAX for the services")
    args = parser.parse_args(argv)
    limits = {name: without_address_limits(name) for name in SERVICES}
    if args.admin_process:
        for name, env in limits.items():
            env[f"FDO_{name.upper()}_ADMIN_PROCESS"] = "true"
    if args.malloc_arena_max:
        for env in limits.values():
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    workdir = Path(tempfile.mkdtemp(prefix="fdo-mem-"))
    stack = Stack(
        workdir,
        workers=dict.fromkeys(SERVICES, args.workers),
        owner_env={"FDO_OWNER_TO0_ENABLED": "false"},
        env=limits,
        split_admin=args.split_admin or args.admin_process,
    )
    stack.start()
    try:
        time.sleep(args.settle)
        arenas = args.malloc_arena_max or "default"
        split = "admin process" if args.admin_process else ("admin listener" if args.split_admin else "no")
        print(f"{args.workers} workers per service, SQLite, split admin: {split}, arenas {arenas}")
        print_start(stack)
        if args.onboardings:
            marks = onboard_many(stack, args.onboardings, args.every, args.concurrency)
            last = marks[-1][1]
            half = [rss for n, rss in marks if n * 2 >= args.onboardings][0]
            worst = max(last)
            print(
                f"owner worker after {args.onboardings}: {worst:.1f} MB (< {OWNER_TARGET_MB:.0f}: "
                f"{'MET' if worst < OWNER_TARGET_MB else 'NOT MET'}); growth over the second half "
                f"{worst - max(half):+.1f} MB"
            )
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
