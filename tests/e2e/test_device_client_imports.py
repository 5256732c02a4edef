"""What ``fdo device onboard`` loads: a real TO1 and TO2 against the services, in a fresh
interpreter, then ``sys.modules`` as it exits.

A device runs the command at every boot until it is onboarded, so what it imports is
its footprint (bench/device_client.py measures it). None of the server stack, httpx and
its dependencies (h11 aside: the client speaks HTTP/1.1 with it), typer, click, rich or
the services' command groups may come back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.credfile import write_credential
from fdo_server.stack import Stack
from tests.conftest import REPO

#: Top-level packages the device client must not load.
NOT_LOADED = (
    # the server stack
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "sqlmodel", "alembic", "psycopg", "pydantic",
    "pydantic_core", "pydantic_settings", "prometheus_client", "jinja2",
    # httpx and what it brings (but h11, which transport/client.py speaks HTTP/1.1 with)
    "httpx", "httpcore", "anyio", "sniffio", "certifi", "idna",
    # the CLI framework and its output
    "typer", "click", "rich", "pygments", "shellingham",
    # the services and their command groups
    "fdo_server", "manufacturer", "rendezvous", "owner",
)  # fmt: skip

_PROBE = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from fdo_cli.main import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack-imports")) as running:
        yield running


def test_onboard_loads_no_server_stack_no_httpx_no_typer(stack: Stack, tmp_path: Path) -> None:
    credential = stack.manufacture(key_type="ec256", serial="IMPORTS-1", model="kiosk")
    stack.hand_off(str(credential.guid), "ec256")
    stack.wait_for_to0(str(credential.guid))
    path = tmp_path / "device.cred"
    write_credential(path, credential)
    modules_file = tmp_path / "modules.json"
    argv = ["device", "onboard", "--credential", str(path), "--root", str(tmp_path / "root")]
    result = subprocess.run(  # noqa: S603 - fixed interpreter and code
        [sys.executable, "-c", _PROBE, str(modules_file), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "onboarded by " + stack.url("owner") in result.stdout
    modules: list[str] = json.loads(modules_file.read_text())
    assert "fdo.to2.device" in modules and "fdo_cli.device_onboard" in modules  # it did run
    assert sorted({m.split(".")[0] for m in modules} & set(NOT_LOADED)) == []
    assert [m for m in modules if m.startswith("cryptography.x509")] == []
    # The system's libcrypto comes only with TLS (hashlib and hmac would load it: 3.5 MB);
    # http.client and its email parser never.
    assert [m for m in modules if m in ("hashlib", "hmac", "_hashlib", "ssl", "http.client", "email")] == []
