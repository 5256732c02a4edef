"""Memory and idle CPU of the services' processes, for ``make bench`` (issue 15).

A service started by :class:`fdo_server.launcher.ServiceProcess` with several workers is
a process tree: uvicorn's supervisor (the first of :meth:`ServiceProcess.pids`), its
workers, and multiprocessing's resource tracker (a small helper the spawn start method
starts; told apart by its command line). With one worker uvicorn serves in the one
process, which is then the worker. RSS is ``VmRSS`` of ``/proc/PID/status``.

CPU over a window (:func:`cpu_mark`, :func:`cpu_since`: idle CPU, and each phase's server
CPU in ``bench/run.py``) is finer than what ``/proc/PID/stat`` resolves (clock ticks of
10 ms, truncated per process: 0.1 ms/s over 30 s is 3 ms, and 200 TO1s of about 0.8 ms
each on a service of three processes read up to 0.15 ms per TO1 off), so it is read in
nanoseconds from ``/proc/PID/task/TID/schedstat`` (time on CPU of each thread), summed
over every thread of every process of the tree at the end of the window less what the
same threads had at its start. Where a thread or process that was there at the start has
ended by the end (what it used in the window would be lost), or without ``schedstat``,
the window is read in clock ticks instead (:meth:`ServiceProcess.cpu_seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fdo_server.launcher import ServiceProcess
from fdo_server.stack import Stack

MB = 1024 * 1024

#: Command-line fragments of helper processes that are neither supervisor nor worker.
HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")
#: In the environment each device-plane worker starts with (``serve --admin-process``).
DEVICE_PLANE = b"FDO_SERVE_PLANE=device"


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (``VmRSS``), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None  # a zombie has no VmRSS line


def _is_admin(pid: int) -> bool:
    """The admin plane's process: under an ``..._ADMIN_PROCESS=true`` supervisor, the one
    child that does not start as a device-plane worker (``serve`` sets its plane once it
    runs, so it is not in the environment it started with)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    split = any(entry.endswith(b"_ADMIN_PROCESS=true") for entry in environ)
    return split and DEVICE_PLANE not in environ


def _is_helper(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(fragment in cmdline for fragment in HELPERS)


@dataclass(frozen=True)
class ServiceRss:
    """One service's processes at one moment, in bytes."""

    service: str
    #: uvicorn's supervisor (None when the service runs in one process).
    supervisor: int | None
    workers: tuple[int, ...]
    #: Helper processes (multiprocessing's resource tracker).
    helpers: tuple[int, ...] = ()
    #: The admin plane's process (``serve --admin-process``): the workers then serve
    #: only the device plane.
    admin: int | None = None

    @property
    def max_worker(self) -> int:
        return max(self.workers, default=0)

    @property
    def total(self) -> int:
        return (self.supervisor or 0) + sum(self.workers) + sum(self.helpers) + (self.admin or 0)


def service_rss(name: str, proc: ServiceProcess) -> ServiceRss:
    """The RSS of ``proc``'s supervisor, workers, admin process and helpers right now.

    The first process is the supervisor when workers run below it; with one worker it
    serves itself (beside the admin process and the resource tracker, if any)."""
    pids = proc.pids()
    if not pids:
        return ServiceRss(name, None, ())
    workers: list[int] = []
    helpers: list[int] = []
    admin: int | None = None
    for pid in pids[1:]:
        rss = rss_bytes(pid)
        if rss is None:
            continue
        if _is_helper(pid):
            helpers.append(rss)
        elif _is_admin(pid):
            admin = rss
        else:
            workers.append(rss)
    first = rss_bytes(pids[0])
    if not workers:  # the first process is the worker
        return ServiceRss(name, None, () if first is None else (first,), tuple(helpers), admin)
    return ServiceRss(name, first, tuple(workers), tuple(helpers), admin)


def stack_rss(stack: Stack, services: Iterable[str] | None = None) -> dict[str, ServiceRss]:
    """:func:`service_rss` of each of ``services`` (default: all) of ``stack``."""
    names = list(stack.services) if services is None else list(services)
    return {name: service_rss(name, stack.services[name]) for name in names}


def wait_settled(stack: Stack, workers: int, *, timeout: float = 30.0, interval: float = 0.5) -> bool:
    """Wait until every service has ``workers`` workers and their RSS stopped moving.

    ``/health`` answers as soon as one worker serves, while another may still be
    importing: a figure "after start" taken then would be too low. Settled means the
    total RSS of all services moved by less than 0.5 % over two intervals in a row.
    Returns False if that did not happen within ``timeout`` (the figures are then
    taken anyway).
    """
    deadline = time.monotonic() + timeout
    previous = 0
    steady = 0
    while time.monotonic() < deadline:
        now = stack_rss(stack)
        complete = all(len(r.workers) >= workers for r in now.values())
        total = sum(r.total for r in now.values())
        steady = steady + 1 if complete and previous and abs(total - previous) < 0.005 * previous else 0
        if steady >= 2:
            return True
        previous = total
        time.sleep(interval)
    return False


def thread_cpu_ns(proc: ServiceProcess) -> dict[tuple[int, int], int] | None:
    """Nanoseconds on CPU of each thread ``(pid, tid)`` of ``proc``'s processes (None
    when this kernel has no ``schedstat``)."""
    out: dict[tuple[int, int], int] = {}
    for pid in proc.pids():
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue  # gone
        for tid in tids:
            path = Path(f"/proc/{pid}/task/{tid}/schedstat")
            try:
                out[pid, tid] = int(path.read_text().split()[0])
            except FileNotFoundError:
                if not Path(f"/proc/{pid}/task/{tid}").exists():
                    continue  # the thread ended
                return None
            except OSError:
                continue
    return out


@dataclass(frozen=True)
class CpuMark:
    """What :func:`cpu_since` measures a window of a service's CPU from."""

    threads: dict[tuple[int, int], int] | None
    ticks: float


def cpu_mark(proc: ServiceProcess) -> CpuMark:
    """The start of a window of ``proc``'s CPU (module docstring)."""
    return CpuMark(thread_cpu_ns(proc), proc.cpu_seconds())


def cpu_since(proc: ServiceProcess, mark: CpuMark) -> float:
    """CPU seconds ``proc``'s processes used since ``mark``: in nanoseconds per thread
    when every thread there at ``mark`` is still there, else in clock ticks."""
    after = None if mark.threads is None else thread_cpu_ns(proc)
    if mark.threads is None or after is None or not mark.threads.keys() <= after.keys():
        return proc.cpu_seconds() - mark.ticks
    return sum(ns - mark.threads.get(key, 0) for key, ns in after.items()) / 1e9


def idle_cpu(stack: Stack, seconds: float, services: Iterable[str] | None = None) -> dict[str, float]:
    """Milliseconds of CPU per second each service's processes used over ``seconds``
    with no request from this process."""
    names = list(stack.services) if services is None else list(services)
    marks = {name: cpu_mark(stack.services[name]) for name in names}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {name: cpu_since(stack.services[name], marks[name]) / elapsed * 1000 for name in names}


__all__ = [
    "MB",
    "CpuMark",
    "cpu_mark",
    "cpu_since",
    "ServiceRss",
    "idle_cpu",
    "rss_bytes",
    "service_rss",
    "stack_rss",
    "thread_cpu_ns",
    "wait_settled",
]
