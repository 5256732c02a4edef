"""``bench/footprint.py``'s CPU windows: nanoseconds per thread, clock ticks where a
thread ended within the window. Nothing is timed: the child process burns a known amount
of CPU (by its own thread clock) and the window must hold at least that."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from fdo_server.launcher import CLK_TCK, ServiceProcess
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from footprint import cpu_mark, cpu_since, thread_cpu_ns  # noqa: E402 - the bench folder is not a package

#: Reads commands from stdin, answers each with a line when done: ``burn S`` (S seconds of
#: CPU on the main thread), ``start`` (a thread that waits) and ``end`` (that thread ends).
CHILD = """
import sys, threading, time
stop = threading.Event()
worker = None
for line in sys.stdin:
    word, _, arg = line.strip().partition(" ")
    if word == "burn":
        until = time.thread_time() + float(arg)
        while time.thread_time() < until:
            pass
    elif word == "start":
        worker = threading.Thread(target=stop.wait)
        worker.start()
    elif word == "end":
        stop.set()
        worker.join()
    print("ok", flush=True)
"""


@pytest.fixture
def child() -> Iterator[ServiceProcess]:
    proc = ServiceProcess(name="child", factory="none", env={})
    proc.process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    yield proc
    proc.process.kill()
    proc.process.wait()


def _tell(proc: ServiceProcess, command: str) -> None:
    assert proc.process is not None and proc.process.stdin is not None and proc.process.stdout is not None
    proc.process.stdin.write(command.encode() + b"\n")
    proc.process.stdin.flush()
    assert proc.process.stdout.readline() == b"ok\n"


def test_a_window_is_read_in_nanoseconds_per_thread(child: ServiceProcess) -> None:
    if thread_cpu_ns(child) is None:
        pytest.skip("this kernel has no schedstat")
    _tell(child, "start")  # a second thread, there at both ends of the window
    mark = cpu_mark(child)
    _tell(child, "burn 0.123")
    used = cpu_since(child, mark)
    assert 0.123 <= used < 5
    # Not in whole clock ticks, as /proc/PID/stat would read it (a multiple of 10 ms by
    # chance: about one in a million).
    assert round(used * CLK_TCK, 6) != round(used * CLK_TCK)


def test_a_thread_that_ends_within_the_window_makes_it_read_in_clock_ticks(child: ServiceProcess) -> None:
    _tell(child, "start")
    mark = cpu_mark(child)
    _tell(child, "burn 0.123")
    _tell(child, "end")  # what that thread used would be lost from a sum over threads
    used = cpu_since(child, mark)
    assert used == pytest.approx(child.cpu_seconds() - mark.ticks)
    assert round(used * CLK_TCK, 6) == round(used * CLK_TCK)
    assert 0.123 - 2 / CLK_TCK <= used < 5
