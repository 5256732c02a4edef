"""The real system access behind fdo.command, fdo.download and fdo.upload."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from device.modules import FileRoot, PathEscapeError, default_devmod, run_command, standard_modules
from fdo.serviceinfo import DeviceServiceInfoDriver


def test_write_and_read_under_root(tmp_path: Path) -> None:
    root = FileRoot(tmp_path)
    root.write("/etc/app/a.conf", b"x")
    root.write("rel/b.txt", b"y")
    assert (tmp_path / "etc/app/a.conf").read_bytes() == b"x"
    assert root.read("/rel/b.txt") == b"y"
    assert root.read("missing") is None
    assert sorted(p.name for p in (tmp_path / "etc/app").iterdir()) == ["a.conf"]  # no temp left


@pytest.mark.parametrize("name", ["../x", "/etc/../../x", "a/../../x", "", "/", "a\x00b"])
def test_escaping_names_refused(tmp_path: Path, name: str) -> None:
    root = FileRoot(tmp_path / "root")
    (tmp_path / "root").mkdir()
    with pytest.raises(PathEscapeError):
        root.write(name, b"x")
    assert root.read(name) is None
    assert not (tmp_path / "x").exists()


def test_symlink_escape_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    base = tmp_path / "root"
    base.mkdir()
    (base / "link").symlink_to(outside)
    root = FileRoot(base)
    with pytest.raises(PathEscapeError):
        root.write("link/new", b"x")
    assert root.read("link/secret") is None
    assert not (outside / "new").exists()


def test_run_command_no_shell() -> None:
    code, out, err = run_command([sys.executable, "-c", "import sys; print('a;b'); sys.exit(3)"])
    assert (code, out.strip(), err) == (3, b"a;b", b"")
    with pytest.raises(OSError):
        run_command(["/nonexistent/program"])


def test_timeout_reports_124() -> None:
    code, _, _ = run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)
    assert code == 124


def test_standard_modules_and_devmod(tmp_path: Path) -> None:
    names = [m.name for m in standard_modules(tmp_path)]
    assert names == ["fdo.command", "fdo.download", "fdo.upload"]
    assert [m.name for m in standard_modules(None, run=None)] == []
    devmod = default_devmod("kiosk-v2", serial="SN-1", root=tmp_path)
    driver = DeviceServiceInfoDriver(devmod, standard_modules(tmp_path))
    assert driver.devmod.modules == ("devmod", "fdo.command", "fdo.download", "fdo.upload")
    assert devmod.device == "kiosk-v2" and devmod.os and devmod.bin
