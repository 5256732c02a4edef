"""``make bench`` (``bench/run.py``) runs end to end in a tiny configuration on SQLite and
closes with the summary of each figure against its target. No value is checked: speed is
what the benchmark reports, not what a test asserts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.conftest import REPO

#: Every figure of issue 15's table (the TO0 row names its voucher count) and the
#: check-in's of issue 12.
FIGURES = (
    "RSS per worker after start, manufacturer",
    "RSS per worker after start, rendezvous",
    "RSS per worker after start, owner",
    "RSS per owner worker after 6 onboardings",
    "owner worker RSS growth, 3 to 6 onboardings",
    "idle CPU after the load, manufacturer",
    "idle CPU after the load, rendezvous",
    "idle CPU after the load, owner",
    "idle CPU, owner with TO0 scheduler on",
    "server CPU per TO1+TO2, P-256/ECDH256/A128GCM",
    "server CPU per TO1+TO2, P-384/ECDH384/A256GCM",
    "rendezvous CPU per TO1",
    "rendezvous CPU per TO0",
    "manufacturer CPU per DI",
    "fdo device onboard, peak RSS",
    "fdo device onboard, wall time (median)",
    "20 vouchers imported to all registered (TO0)",
    "owner CPU per check-in, nothing to change",
)

#: One worker per service, a few devices, a 1 s idle window, 20 vouchers and a 2 s cap on
#: their registration (unless all are registered within it, the phase ends at the cap:
#: NOT MET, no hanging).
TINY = [
    *("--backend", "sqlite", "--devices", "3", "--warmup", "1", "--onboardings", "6"),
    *("--checkin-rounds", "1", "--client-runs", "1", "--idle-seconds", "1", "--settle-seconds", "0"),
    *("--to0-vouchers", "20", "--to0-cap", "2", "--concurrency", "2", "--workers", "1"),
]


def test_bench_runs_and_prints_each_figure_against_its_target() -> None:
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, "bench/run.py", *TINY], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    summary = out[out.index("Summary: each figure against its target") :]
    for figure in FIGURES:
        row = re.search(rf"^  {re.escape(figure)} +sqlite +.+ +< [0-9.]+ \S+ +(MET|NOT MET)$", summary, re.M)
        assert row is not None, f"{figure}\n{summary}"
    for table in ("phase ", "RSS in MB", "idle CPU over 1 s", "fdo device onboard (TO1+TO2, 1 runs)"):
        assert table in out, table
    assert "Traceback" not in done.stderr


def test_bench_with_admin_processes_measures_the_device_workers_apart() -> None:
    """``--admin-process``: each service's admin plane in a process of its own; the workers
    measured are the device workers, and the admin process has its own column."""
    tiny = [a for a in TINY]
    tiny[tiny.index("--to0-vouchers") + 1] = "0"
    tiny[tiny.index("--client-runs") + 1] = "0"
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, "bench/run.py", *tiny, "--admin-process"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "admin planes in processes of their own" in out
    for service in ("manufacturer", "rendezvous", "owner"):
        # supervisor (none: one worker serves itself), worker max, workers, helpers, admin
        start = re.search(rf"^  at start +{service} +\S+ +([0-9.]+) +.+ +\S+ +([0-9.]+)$", out, re.M)
        assert start is not None, f"{service}\n{out[-3000:]}"
        worker, admin = float(start.group(1)), float(start.group(2))
        assert worker < admin  # the device worker loads no admin stack
        assert f"RSS per device worker after start, {service}" in out


def test_make_bench_compiles_the_project_and_drops_the_libraries_before_it_measures() -> None:
    """Where ``PYTHONDONTWRITEBYTECODE`` is set, a worker that compiles its modules from
    source starts larger than one of an installed wheel (compiled when installed), and one
    whose libraries pip has just written larger than one that reads them from disk
    (bench/page_cache.py): the memory figures would depend on neither the environment's
    setting nor when it was made."""
    make = shutil.which("make")
    assert make is not None
    done = subprocess.run(  # noqa: S603 - make, as a user runs it
        [make, "-n", "bench", "STAMP="], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    commands = done.stdout.splitlines()
    compiles = [i for i, line in enumerate(commands) if "-m compileall" in line and " owner " in line]
    drops = [i for i, line in enumerate(commands) if "bench/page_cache.py" in line]
    runs = [i for i, line in enumerate(commands) if "bench/run.py" in line]
    assert compiles and drops and runs and compiles[0] < runs[0] and drops[0] < runs[0], done.stdout
