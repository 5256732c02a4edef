"""Idle CPU of each service: ``python -m bench.idle_cpu [--workers 2] [--window 30] [--repeats 3]``.

Starts the three services (:class:`fdo_server.stack.Stack`, SQLite, ``--workers`` each),
lets them settle, then reads the CPU time of every process of each service (the
supervisor and its workers) before and after ``--window`` seconds with no requests;
prints ms of CPU per second of wall time per service for each repeat, beside the
issue 15 target (under 0.1 ms/s). The CPU time is the scheduler's run time of every
thread (``/proc/PID/task/TID/schedstat``, nanoseconds), since ``/proc/PID/stat`` counts
in clock ticks (10 ms: 0.33 ms/s over 30 s, coarser than the target).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from fdo_server.stack import SERVICES, Stack

TARGET_MS_PER_S = 0.1


def run_ns(pids: list[int]) -> int:
    """Nanoseconds the threads of ``pids`` have run on a CPU (threads alive now)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError):
                total += int(stat.read_text().split()[0])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument(
        "--owner-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an owner setting over the stack's (the stack polls TO0 every 0.3 s)",
    )
    args = parser.parse_args()
    owner_env = dict(item.split("=", 1) for item in args.owner_env)
    with tempfile.TemporaryDirectory(prefix="fdo-idle-") as work:
        stack = Stack(Path(work), workers=dict.fromkeys(SERVICES, args.workers), env={"owner": owner_env})
        with stack:
            time.sleep(args.settle)
            for repeat in range(1, args.repeats + 1):
                pids = {name: stack.services[name].pids() for name in SERVICES}
                before = {name: run_ns(pids[name]) for name in SERVICES}
                start = time.monotonic()
                time.sleep(args.window)
                wall = time.monotonic() - start
                figures = []
                for name in SERVICES:
                    used = (run_ns(pids[name]) - before[name]) / 1e9
                    figures.append(f"{name} {1000 * used / wall:.3f} ms/s ({len(pids[name])} pids)")
                line = f"repeat {repeat}: " + ", ".join(figures) + f"; target < {TARGET_MS_PER_S} ms/s"
                print(line, flush=True)


if __name__ == "__main__":
    main()
