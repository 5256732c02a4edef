"""The protocol core and the device CLI import without the server stack.

Each check runs in a fresh interpreter, so modules other tests imported do not hide a
stray import.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SERVER_STACK = ("fastapi", "starlette", "sqlalchemy", "sqlmodel", "httpx", "uvicorn")

_PROBE = """
import importlib, json, pkgutil, sys
imported = []
for name in {roots!r}:
    module = importlib.import_module(name)
    imported.append(name)
    if {walk!r} and hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, name + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
stack = {stack!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in stack)
print(json.dumps({{"imported": imported, "loaded": loaded}}))
"""


def _probe(roots: list[str], *, walk: bool) -> dict[str, list[str]]:
    code = _PROBE.format(roots=roots, walk=walk, stack=SERVER_STACK)
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_fdo_core_imports_without_server_stack() -> None:
    out = _probe(["fdo"], walk=True)
    assert "fdo.to2.owner" in out["imported"] and "fdo.serviceinfo.device" in out["imported"]
    assert out["loaded"] == []


def test_device_cli_imports_without_server_stack() -> None:
    out = _probe(["fdo_cli.main"], walk=False)
    assert out["imported"] == ["fdo_cli.main"]
    assert out["loaded"] == []
