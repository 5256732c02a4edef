"""The memory floor of a service worker: the RSS its imports alone take (issue 15).

Issue 15 asks for under 60 MB RSS per service worker after start; a device-plane worker
measures 86-101 MB on SQLite and 97-111 MB on PostgreSQL (``bench/worker_memory.py``).
This script tells how much of that is imports, and how much the libraries of a leaner
worker would leave. Every figure is ``VmRSS`` of ``/proc/self/status`` in a fresh
interpreter (``sys.executable``, cwd the repo root, ``FDO_SERVE_PLANE=device`` as a
device-plane worker has), the median of ``--repeat`` interpreters:

1. the bare interpreter, then the cumulative RSS and the increment (MB and modules) of
   each library group a worker loads, imported in the order listed in ``LIBRARIES``;
2. each service's ``<service>.app`` imported alone (import only: no app is built, no
   database opened);
3. two floors per service beside the target: the stack as today (every group above,
   then ``<service>.app``, in one interpreter) and the device plane without the web
   framework, pydantic and SQLAlchemy (the event loop, HTTP parser, server, database
   driver, cryptography, CBOR, metrics and the service's FDO core modules only).

These are import floors: a running worker adds its heap on top (connections, caches,
buffers, the app and its routes), which is not included here.

    .venv/bin/python bench/import_floor.py [--backend sqlite|postgresql] [--repeat 3]

``--backend postgresql`` adds ``psycopg`` to the stack as today and swaps ``sqlite3``
for it in the lean floor; importing it needs no server.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MB = 60.0


@dataclass(frozen=True)
class Group:
    """Modules imported together and reported as one step."""

    label: str
    modules: tuple[str, ...]
    note: str = ""


ASYNCIO = Group("asyncio", ("asyncio",))
UVLOOP = Group("uvloop", ("uvloop",))
HTTPTOOLS = Group("httptools", ("httptools",))
UVICORN = Group("uvicorn", ("uvicorn", "uvicorn.protocols.http.httptools_impl"), "+ its httptools protocol")
SQLITE = Group("sqlite3", ("sqlite3",))
PSYCOPG = Group("psycopg", ("psycopg",), "mostly its own modules (9.0 MB on the system libpq)")
EC = Group("cryptography ec", ("cryptography.hazmat.primitives.asymmetric.ec",), "cryptography's own OpenSSL")
X509 = Group("cryptography.x509", ("cryptography.x509",))
CBOR2 = Group("cbor2", ("cbor2",))
PROMETHEUS = Group("prometheus_client", ("prometheus_client",))

#: Every library group a worker loads, in the order imported (psycopg is appended on
#: PostgreSQL).
LIBRARIES: tuple[Group, ...] = (
    ASYNCIO,
    UVLOOP,
    HTTPTOOLS,
    UVICORN,
    SQLITE,
    EC,
    X509,
    CBOR2,
    PROMETHEUS,
    Group("sqlalchemy (Core)", ("sqlalchemy",)),
    Group("sqlalchemy.orm", ("sqlalchemy.orm",)),
    Group("pydantic", ("pydantic",)),
    Group("pydantic_settings", ("pydantic_settings",)),
    Group("sqlmodel", ("sqlmodel",)),
    Group("starlette.applications", ("starlette.applications",)),
    Group("fastapi", ("fastapi",)),
)

#: The FDO core modules each service's device plane runs.
CORE: dict[str, tuple[str, ...]] = {
    "rendezvous": ("fdo.to0.rendezvous", "fdo.to1.rendezvous"),
    "manufacturer": ("fdo.di.manufacturer",),
    "owner": ("fdo.to2.owner", "fdo.serviceinfo.owner", "fdo.serviceinfo.devmod", "fdo.serviceinfo.bootc"),
}

#: Runs in a fresh interpreter: reads VmRSS before any import, then after each group
#: (one argument each, modules comma-separated); prints (RSS kB, modules loaded, ssl
#: loaded) per point.
_PROBE = """
import sys
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")
points = [(rss(), len(sys.modules), "ssl" in sys.modules)]
for group in sys.argv[1:]:
    for name in group.split(","):
        __import__(name)
    points.append((rss(), len(sys.modules), "ssl" in sys.modules))
print(repr(points))
"""

Point = tuple[int, int, bool]


def probe(groups: Sequence[Sequence[str]]) -> list[Point]:
    """RSS (kB), module count and whether ``ssl`` is loaded: bare, then after each group."""
    env = {**os.environ, "FDO_SERVE_PLANE": "device"}
    args = [",".join(group) for group in groups]
    done = subprocess.run(  # noqa: S603 - our interpreter, our probe
        [sys.executable, "-c", _PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe of {args} failed:\n{done.stderr}")
    points: list[Point] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return points


def medians(runs: Sequence[Sequence[Point]]) -> list[tuple[float, float, bool]]:
    """Per point: the median RSS in MB and module count over ``runs``, ``ssl`` if any run had it."""
    return [
        (
            statistics.median(run[i][0] for run in runs) / 1024,
            statistics.median(run[i][1] for run in runs),
            any(run[i][2] for run in runs),
        )
        for i in range(len(runs[0]))
    ]


def verdict(mb: float) -> str:
    return f"< {TARGET_MB:.0f}: {'MET' if mb < TARGET_MB else 'NOT MET'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per figure (median)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    postgres = args.backend == "postgresql"
    libraries = (*LIBRARIES, PSYCOPG) if postgres else LIBRARIES
    driver = PSYCOPG if postgres else SQLITE
    lean = (ASYNCIO, UVLOOP, HTTPTOOLS, UVICORN, driver, EC, X509, CBOR2, PROMETHEUS)
    full_groups = [group.modules for group in libraries]
    lean_groups = [group.modules for group in lean]

    full: dict[str, list[list[Point]]] = {service: [] for service in CORE}
    alone: dict[str, list[list[Point]]] = {service: [] for service in CORE}
    floor: dict[str, list[list[Point]]] = {service: [] for service in CORE}
    for _ in range(args.repeat):
        for service, core in CORE.items():
            full[service].append(probe([*full_groups, (f"{service}.app",)]))
            alone[service].append(probe([(f"{service}.app",)]))
            floor[service].append(probe([*lean_groups, core]))

    backend = "PostgreSQL" if postgres else "SQLite"
    print(
        f"Import floor of a service worker, {backend}: VmRSS of a fresh interpreter after import "
        f"(FDO_SERVE_PLANE=device), median of {args.repeat}"
    )
    chain = medians([run for runs in full.values() for run in runs])
    print(f"{'library group':<28} {'+modules':>8} {'+MB':>6} {'RSS MB':>7}")
    bare_mb, bare_modules, _ = chain[0]
    print(f"{'python interpreter (bare)':<28} {bare_modules:>8.0f} {'':>6} {bare_mb:>7.1f}")
    for group, before, after in zip(libraries, chain[:-2], chain[1:-1], strict=True):
        note = group.note
        if group is ASYNCIO:
            note = f"ssl loaded: {'yes (the system OpenSSL)' if after[2] else 'no'}"
        added = f"{after[1] - before[1]:>+8.0f} {after[0] - before[0]:>+6.1f} {after[0]:>7.1f}"
        print(f"{group.label:<28} {added}  {note}".rstrip())

    print("service modules imported alone (import only: no app built, no database opened)")
    for service in CORE:
        mb, modules, _ = medians(alone[service])[-1]
        print(f"  {service + '.app':<26} {modules:>8.0f} {'':>6} {mb:>7.1f}")

    print(f"floors per worker against the target (RSS after start < {TARGET_MB:.0f} MB)")
    print("  import floors: a running worker adds its heap (connections, caches, buffers), not included")
    lean_names = " + ".join(group.label for group in lean)
    print(f"  lean = {lean_names} + the service's FDO core, in one interpreter")
    for service, core in CORE.items():
        today = medians(full[service])[-1][0]
        points = medians(floor[service])
        lean_mb, core_mb = points[-1][0], points[-1][0] - points[-2][0]
        lines = (
            (f"stack as today (libraries above + {service}.app)", today),
            ("device plane without the web framework, pydantic and SQLAlchemy (lean)", lean_mb),
        )
        for label, mb in lines:
            print(f"  {service:<13} {label:<72} {mb:6.1f} MB  {verdict(mb)}")
        print(f"  {'':<13}   of which the FDO core ({', '.join(core)}): {core_mb:+.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
