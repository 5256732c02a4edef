"""``make demo``: the whole journey of one device, over real HTTP, on SQLite.

Starts the manufacturer, rendezvous and owner as uvicorn servers on free local ports
with SQLite files in a temporary folder, then: DI at the manufacturer, the hand-off
(voucher extended to the owner's key and imported by the owner), the owner's TO0 with
the rendezvous, and the device's first boot (TO1, then TO2 with ServiceInfo). Prints a
summary, stops the services and exits 0 (1 if any step fails).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fdo_server.stack import Stack

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--key-type", default="ec256", choices=["ec256", "ec384", "rsa2048", "rsa3072"])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="fdo-demo-"))
    steps: list[tuple[str, float]] = []

    def step(name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = fn()
        steps.append((name, time.perf_counter() - start))
        print(f"  ok  {name} ({(time.perf_counter() - start) * 1000:.0f} ms)", flush=True)
        return result

    began = time.perf_counter()
    print(f"fdo-bootc demo: work folder {workdir}")
    stack = Stack(workdir)
    try:
        step("start manufacturer, rendezvous and owner (uvicorn, SQLite)", stack.start)
        for name, proc in stack.services.items():
            print(f"      {name:<12} {proc.url}")
        cred = step(
            f"DI: device {args.key_type} key, credential from the manufacturer",
            lambda: stack.manufacture(key_type=args.key_type, serial="DEMO-0001", model="kiosk-v2"),
        )
        first_guid = str(cred.guid)
        step(
            "hand-off: voucher extended to the owner's key and imported",
            lambda: stack.hand_off(first_guid, args.key_type),
        )
        step("TO0: owner registered with the rendezvous", lambda: stack.wait_for_to0(first_guid))
        result = step("first boot: TO1 at the rendezvous, TO2 with the owner", lambda: stack.onboard(cred))
        motd = (workdir / "device-root" / "etc" / "motd").read_text()
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure and exits 1
        print(f"FAILED: {exc}", file=sys.stderr)
        stack.stop()
        for name in ("manufacturer", "rendezvous", "owner"):
            log = workdir / f"{name}.log"
            if log.exists() and log.stat().st_size:
                print(f"--- {name}.log ---\n{log.read_text()[-2000:]}", file=sys.stderr)
        return 1
    finally:
        stack.stop()

    print()
    print("summary")
    print(f"  device GUID at manufacture  {first_guid}")
    print(f"  device GUID after TO2       {result.credential.guid}  (replacement credential)")
    print(f"  rendezvous used             {result.rv_url}")
    print(f"  owner used                  {result.owner_url}")
    print(f"  ServiceInfo modules         {', '.join(sorted(result.active_modules)) or '-'}")
    print(f"  file delivered (etc/motd)   {motd.strip()!r}")
    print(f"  total time                  {time.perf_counter() - began:.2f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
