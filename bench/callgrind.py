"""Instructions instead of seconds: a bench script's server side counted by callgrind.

CPU time on a shared (virtual) machine varies by a fifth from run to run, which hides the
few per cent one change to the code makes. valgrind's callgrind counts the instructions a
process runs instead, and that count is the same from run to run (to about 0.1 %)
whatever else the machine does. A script that offers ``--instructions``
(``bench/profile_onboarding.py``, ``bench/profile_messages.py``) runs itself again under
callgrind (:func:`rerun`) with instrumentation off; in that run it wraps each server-side
call in :func:`counted` (a one-item ``functools.reduce``, whose C function callgrind's
``--toggle-collect`` watches) and switches instrumentation on (:func:`start`) once its
warm-up is over, so only the server's work on the measured operations is counted: user
space of that process (machines, sessions, the driver), not the kernel or a database
server. About 50 times slower than running natively.

With ``FDO_BENCH_CALLGRIND_OUT=FILE`` in the environment, callgrind's profile is kept in
FILE (else discarded), for ``callgrind_annotate FILE`` to split the count by C function and
library (the interpreter, OpenSSL, SQLite).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

#: Set in the environment of the run under callgrind.
UNDER_CALLGRIND = "FDO_BENCH_UNDER_CALLGRIND"
#: Where callgrind's profile goes, when set (else nowhere).
OUT_FILE = "FDO_BENCH_CALLGRIND_OUT"
#: The C function inside which callgrind counts: each counted call runs inside one.
COUNTED = "functools_reduce"


def active() -> bool:
    """Whether this process is the run under callgrind."""
    return bool(os.environ.get(UNDER_CALLGRIND))


def counted(func: Callable[P, T]) -> Callable[P, T]:
    """``func``, each call inside :data:`COUNTED`."""

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        out: list[T] = []
        functools.reduce(lambda _acc, _item: out.append(func(*args, **kwargs)), (0,), None)
        return out[0]

    return call


def start() -> None:
    """Switch callgrind's instrumentation of this process on (counting starts)."""
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)  # noqa: S603, S607


def rerun(script: str, argv: list[str], count: int, unit: str) -> int:
    """Run ``script`` with ``argv`` again under callgrind; print its count per ``unit``
    (``count`` of them measured). The exit status."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    out = os.environ.get(OUT_FILE) or os.devnull
    folder = os.path.dirname(os.path.abspath(out))
    if out != os.devnull and not os.access(folder, os.W_OK):
        print(f"{OUT_FILE}={out}: cannot write a file in {folder}", file=sys.stderr)
        return 2
    command = [
        valgrind,
        "--tool=callgrind",
        "--instr-atstart=no",
        "--collect-atstart=no",
        f"--toggle-collect={COUNTED}",
        f"--callgrind-out-file={out}",
        sys.executable,
        script,
        *argv,
    ]
    print(f"running {count} {unit}s under callgrind (about 50 times slower than natively)", flush=True)
    done = subprocess.run(  # noqa: S603 - our own command line
        command, env={**os.environ, UNDER_CALLGRIND: "1"}, capture_output=True, text=True, check=False
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
        return done.returncode or 1
    per = int(found.group(1)) / count
    print(f"server side: {per / 1e6:.3f} million instructions per {unit} ({count} counted)")
    return 0
