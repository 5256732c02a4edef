"""From importing N vouchers to all of them registered at the rendezvous, by the owner's
TO0 scheduler on its defaults (issue 15: 10,000 in under 2 minutes).

:func:`measure` takes a running :class:`fdo_server.stack.Stack` (its owner's TO0
scheduler on) and a count, and returns the seconds from the first import request to the
moment the owner's summary shows none of them pending. The vouchers are made before the
clock starts, in this process and without the manufacturer service: DI runs in memory
against the stack's own manufacturer key, device CA and rendezvous URL
(:class:`manufacturer.settings.ManufacturerMaterial`, as the service loads them), and
each voucher is extended to the stack's owner key, as ``Stack.hand_off`` has the
manufacturer do. They are imported through the owner's admin API in chunks of
``chunk``, one after the other, as an operator's script would; each committed import
wakes the scheduler, which works through them while later chunks arrive.

Run on its own (``.venv/bin/python bench/to0_bulk.py --count 2000``) it starts a stack
with the rendezvous's per-address first-message limit off, as ``make bench`` does (every
registration comes from 127.0.0.1; with the default 20 per second per worker the
rendezvous, not the owner, would set the pace), and prints the time beside the target,
with the server CPU of the owner and the rendezvous over the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from fdo.crypto import PublicKey, generate_key, load_private_key
from fdo.di.device import DIDevice
from fdo.di.manufacturer import DIManufacturer
from fdo.machine import Reply
from fdo.rvinfo import RendezvousInfo
from fdo.voucher import OwnershipVoucher, vouchers_to_pem
from fdo_server.stack import Stack
from manufacturer.settings import ManufacturerMaterial, rendezvous_directive

TARGET_SECONDS = 120.0
TARGET_COUNT = 10_000


def _material(stack: Stack, kind: str) -> ManufacturerMaterial:
    work = stack.workdir
    key = load_private_key((work / f"manufacturer-{kind}.key").read_bytes())
    ca_key = load_private_key((work / "device-ca.key").read_bytes())
    chain = tuple(x509.load_pem_x509_certificates((work / "device-ca.pem").read_bytes()))
    rv = RendezvousInfo.of([rendezvous_directive(stack.url("rendezvous"))])
    return ManufacturerMaterial({kind: key}, ca_key, chain, rv)


def _di(material: ManufacturerMaterial, device: DIDevice, now: datetime) -> OwnershipVoucher:
    server = DIManufacturer(material, now=now)
    msg: Reply | None = device.start()
    while msg is not None:
        msg = device.receive(*server.handle(*msg))
    if server.voucher is None:
        raise RuntimeError("DI did not produce a voucher")
    return server.voucher


def make_vouchers(
    stack: Stack, count: int, *, kind: str = "ec256", tag: str = "bulk"
) -> list[OwnershipVoucher]:
    """``count`` vouchers of new devices, extended to the stack's owner key of ``kind``."""
    material = _material(stack, kind)
    owner = PublicKey.from_key(stack.owner_keys[kind].public_key())
    device_key = generate_key(kind)  # one key for all: only TO2 would use it
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        device = DIDevice(key=device_key, serial=f"{tag}-{os.getpid()}-{i}", model="to0-bulk")
        out.append(_di(material, device, now).extend(material.keys[kind], owner))
    return out


def _pending(stack: Stack) -> int:
    with stack.admin("owner") as owner:
        resp = owner.get("/api/v1/summary")
        resp.raise_for_status()
        return int(resp.json()["to0"]["pending"])


def measure(
    stack: Stack,
    count: int,
    *,
    chunk: int = 1000,
    timeout: float = 3600.0,
    vouchers: list[OwnershipVoucher] | None = None,
) -> float:
    """Seconds from importing ``count`` vouchers into the stack's owner to all of them
    registered at the rendezvous (its TO0 scheduler must be on)."""
    made = vouchers if vouchers is not None else make_vouchers(stack, count)
    bodies = [vouchers_to_pem(made[i : i + chunk]) for i in range(0, len(made), chunk)]
    before = _pending(stack)  # vouchers of earlier phases that are not registered
    t0 = time.monotonic()
    with stack.admin("owner") as owner:
        for body in bodies:
            resp = owner.post("/api/v1/vouchers", content=body, headers={"Content-Type": "text/plain"})
            if resp.status_code != 200:
                raise RuntimeError(f"owner refused an import: HTTP {resp.status_code} {resp.text[:300]}")
    while _pending(stack) > before:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{_pending(stack) - before} of {count} vouchers still not registered")
        time.sleep(1.0)  # the summary's count costs the owner a few ms: not more often
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=TARGET_COUNT)
    parser.add_argument("--chunk", type=int, default=1000, help="vouchers per import request")
    parser.add_argument("--owner-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fdo-to0-bulk-"))
    owner_env = dict(item.split("=", 1) for item in args.owner_env)
    stack = Stack(
        workdir,
        owner_env=owner_env,
        env={"rendezvous": {"FDO_RENDEZVOUS_FIRST_MESSAGE_RATE": "0", "FDO_RENDEZVOUS_MAX_CONNECTIONS": "0"}},
    )
    stack.start()
    try:
        t = time.monotonic()
        vouchers = make_vouchers(stack, args.count)
        print(f"made {args.count} vouchers in {time.monotonic() - t:.1f} s (not timed)", flush=True)
        cpu0 = {name: stack.services[name].cpu_seconds() for name in ("owner", "rendezvous")}
        seconds = measure(stack, args.count, chunk=args.chunk, vouchers=vouchers)
        cpu = {name: stack.services[name].cpu_seconds() - cpu0[name] for name in cpu0}
    finally:
        stack.stop()
    scaled = seconds * TARGET_COUNT / args.count
    print(f"import {args.count} vouchers -> all registered: {seconds:.1f} s ({args.count / seconds:.0f}/s)")
    if args.count != TARGET_COUNT:
        print(f"  at that rate {TARGET_COUNT} would take {scaled:.0f} s")
    verdict = "MET" if scaled < TARGET_SECONDS else "NOT MET"
    print(f"  target: {TARGET_COUNT} in under {TARGET_SECONDS:.0f} s: {verdict}")
    for name, used in cpu.items():
        print(f"  {name} CPU: {used:.1f} s ({1000 * used / args.count:.2f} ms per voucher)")
    # One owner and one rendezvous process, each on a core of its own at best, both on
    # the machine's two cores at worst: the time the work would take on an idle machine.
    floor = max(*cpu.values(), sum(cpu.values()) / 2) * TARGET_COUNT / args.count
    load = os.getloadavg()[0]
    print(f"  CPU-bound time for {TARGET_COUNT} on 2 idle cores: {floor:.0f} s (load average now {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
