"""``bench/page_cache.py``: which files are the interpreter's shared libraries, and that
one just written leaves the page cache (as read by util-linux's ``fincore``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from page_cache import drop, interpreter_libraries, is_shared_object, shared_objects  # noqa: E402 - the bench folder is not a package


def test_shared_objects_are_told_by_name() -> None:
    for name in ("_rust.abi3.so", "libpq-e9b5c9ac.so.5.18", "libpython3.11.so.1.0"):
        assert is_shared_object(Path(name)), name
    for name in ("codec.py", "so.txt", "notes.sox", "README"):
        assert not is_shared_object(Path(name)), name


def test_the_packages_are_searched_at_any_depth_the_other_folders_at_the_top(tmp_path: Path) -> None:
    packages, dynload = tmp_path / "site-packages", tmp_path / "lib-dynload"
    (packages / "pkg" / "sub").mkdir(parents=True)
    (dynload / "deeper").mkdir(parents=True)
    libraries = [
        packages / "pkg" / "sub" / "a.so",
        packages / "b.so.1",
        dynload / "c.so",
        dynload / "deeper" / "d.so",
    ]
    for path in libraries:
        path.write_bytes(b"\x7fELF")
    (packages / "pkg" / "code.py").write_text("")
    (packages / "link.so").symlink_to(packages / "b.so.1")  # the file itself is dropped once
    found = {p.relative_to(tmp_path) for p in shared_objects([packages, dynload], recurse=[packages])}
    assert found == {
        Path("site-packages/pkg/sub/a.so"),
        Path("site-packages/b.so.1"),
        Path("lib-dynload/c.so"),
    }


def test_the_interpreters_libraries_are_found_in_its_packages_and_beside_it() -> None:
    names = {p.name for p in interpreter_libraries()}
    assert any(name.startswith("_rust.abi3") for name in names)  # cryptography's, deep in site-packages
    assert any(name.startswith("_ssl.") for name in names)  # the standard library's lib-dynload


def _resident(path: Path) -> int:
    out = subprocess.run(  # noqa: S603 - fixed tool and arguments
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],  # noqa: S607 - util-linux
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.strip())


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fs = line.split()[:3]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, kind = mount, fs
    return kind


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux's fincore is not installed")
def test_a_library_just_written_leaves_the_page_cache(tmp_path: Path) -> None:
    if _file_system(tmp_path) == "tmpfs":
        pytest.skip("a tmpfs keeps its pages in memory: nothing to drop")
    library = tmp_path / "libjust-written.so.1"
    library.write_bytes(os.urandom(4 * 1024 * 1024))  # dirty pages, in the cache
    assert _resident(library) > 0
    assert drop(library)
    assert _resident(library) == 0
    assert not drop(tmp_path / "gone.so")  # a file that cannot be opened is reported, not raised
