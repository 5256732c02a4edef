"""The interpreter's shared libraries out of the page cache, before ``make bench`` measures.

A worker's RSS counts the pages of the shared libraries it has mapped (clean file pages,
shared with every process that maps them, which the kernel may drop at any time). How
many pages one fault maps depends on how the file came into the page cache: on this
machine's kernel (6.18, ext4) a file that was just written, as ``pip install`` writes
the libraries of a new virtual environment, is cached in large folios, and a fault maps
a whole folio; a file read from disk by the faults themselves, as after a reboot, is
mapped in smaller pieces. The same code so started its workers 1.3 MB larger on SQLite
and 2.2-2.7 MB larger on PostgreSQL in the first ``make bench`` after a new virtual
environment than in every later one, nearly all of it cryptography's Rust library
(``docs/benchmarks.md``, issue 15, seventeenth round).

:func:`drop_libraries` writes back and drops from the page cache every shared object of
the interpreter (its virtual environment's packages, its ``lib-dynload``, ``libpython``),
so that each run measures them as read from disk. Pages a running process has mapped are
not dropped, so it runs before the benchmark imports any of them: ``make bench`` runs
this script first (``python bench/page_cache.py``), and so should anyone who runs
``bench/run.py`` or ``bench/worker_memory.py`` by hand and compares their RSS figures.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path


def is_shared_object(path: Path) -> bool:
    """``name.so`` or ``name.so.VERSION``."""
    name = path.name
    return name.endswith(".so") or ".so." in name


def interpreter_libraries() -> Iterator[Path]:
    """This interpreter's shared objects: in site-packages (pure and platform) at any
    depth, and at the top of the standard library's ``lib-dynload`` and of the folder of
    ``libpython``."""
    paths = sysconfig.get_paths()
    packages = {paths["purelib"], paths["platlib"]}
    dirs = packages | {os.path.join(paths["stdlib"], "lib-dynload")}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        dirs.add(libdir)
    roots = sorted(Path(d) for d in dirs if os.path.isdir(d))
    return shared_objects(roots, recurse=[Path(d) for d in packages])


def shared_objects(roots: Iterable[Path], *, recurse: Iterable[Path] = ()) -> Iterator[Path]:
    """The shared objects in ``roots`` (in the folders of ``recurse`` at any depth)."""
    deep = {Path(r) for r in recurse}
    for root in roots:
        found = root.rglob("*") if root in deep else root.glob("*")
        for path in found:
            if is_shared_object(path) and path.is_file() and not path.is_symlink():
                yield path


def drop(path: Path) -> bool:
    """Write ``path``'s dirty pages back and drop its pages from the page cache (those
    no process has mapped); False where the system does not allow it."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fdatasync(fd)  # a dirty page is not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def drop_libraries() -> int:
    """:func:`drop` every one of :func:`interpreter_libraries`; how many were dropped."""
    return sum(drop(path) for path in interpreter_libraries())


def main() -> int:
    count = drop_libraries()
    print(f"page cache: {count} shared libraries of {sys.prefix} dropped (read from disk, as after a reboot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
