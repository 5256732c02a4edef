"""End to end over real HTTP: a lost TO2.Done2, and a device that runs FDO again.

The three services run as uvicorn servers (SQLite, and PostgreSQL when
``FDO_TEST_POSTGRES_URL`` is set); devices reach the owner through a small HTTP proxy
(the owner's TO2 address registered by TO0 is the proxy's) that can swallow the reply to
TO2.Done after passing the request on. The device is the ``fdo device onboard`` command,
run as a user would, on a credential file.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.credfile import read_credential, write_credential
from fdo.voucher import OwnershipVoucher
from fdo_server.launcher import free_port
from fdo_server.stack import Stack
from tests.conftest import database_backends, open_database

FDO = str(Path(sys.executable).parent / "fdo")
SERVICES = ("manufacturer", "rendezvous", "owner")


class Proxy:
    """Forwards FDO requests to the owner; swallows the next ``lose`` TO2.Done2 replies
    (the owner handled TO2.Done; the device sees the connection close without a reply).
    ``after_done2`` (optional) is called right after a TO2.Done2 reply (Message-Type 71)
    was passed on to the device (the crash test kills the owner there)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target = ""
        self.lose = 0
        self.after_done2: Callable[[], None] | None = None
        self.forwarded: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")
                }
                reply = httpx.post(proxy.target + self.path, content=body, headers=headers, timeout=30)
                proxy.forwarded.append(self.path)
                if self.path.endswith("/msg/70") and proxy.lose:
                    proxy.lose -= 1
                    self.close_connection = True
                    return  # no reply at all: as a cut cable or a power loss looks
                self.send_response(reply.status_code)
                for name in ("Content-Type", "Message-Type", "Authorization"):
                    if name in reply.headers:
                        self.send_header(name, reply.headers[name])
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)
                self.wfile.flush()
                if reply.headers.get("Message-Type") == "71" and proxy.after_done2 is not None:
                    proxy.after_done2()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module", params=database_backends())
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Proxy]]:
    workdir = tmp_path_factory.mktemp(f"lost-done2-{request.param}")
    dbs = [open_database(request.param, workdir, name) for name in SERVICES]
    urls = {name: db.__enter__() for name, db in zip(SERVICES, dbs, strict=True)}
    with Proxy() as proxy:
        owner_env = {"FDO_OWNER_TO2_URLS": f'["{proxy.url}"]'}
        with Stack(workdir, database_urls=urls, owner_env=owner_env) as stack:
            proxy.target = stack.url("owner")
            yield stack, proxy
    for db in dbs:
        db.__exit__()


def device_onboard(stack: Stack, credential: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``fdo device onboard`` as a device runs it (no bootc here)."""
    argv = [FDO, "device", "onboard", "--credential", str(credential), "--no-bootc", "--max-attempts", "1"]
    argv += ["--root", str(credential.parent / "root"), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603


def new_device(stack: Stack, folder: Path, serial: str) -> tuple[Path, str]:
    credential = stack.manufacture(serial=serial, model="kiosk-v2")
    guid = str(credential.guid)
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    folder.mkdir()
    path = folder / "credential.bin"
    write_credential(path, credential)
    return path, guid


def vouchers(stack: Stack, *guids: str) -> dict[str, tuple[str, str | None]]:
    with stack.admin("owner") as owner:
        rows = [owner.get(f"/api/v1/vouchers/{g}").json() for g in guids]
    return {r["guid"]: (r["state"], r["replaced_by"]) for r in rows}


def test_a_lost_done2_does_not_strand_the_device(world: tuple[Stack, Proxy], tmp_path: Path) -> None:
    stack, proxy = world
    path, g0 = new_device(stack, tmp_path / "device", "LOST-1")
    before = path.read_bytes()

    proxy.lose = 1
    first = device_onboard(stack, path)
    assert first.returncode == 1, first.stderr
    assert first.stderr.splitlines()[-1] == "error: onboarding failed after 1 round(s)"
    assert path.read_bytes() == before  # the device keeps the credential it holds
    assert proxy.forwarded[-1].endswith("/msg/70")
    with stack.admin("owner") as owner:
        (onboarding,) = owner.get("/api/v1/onboardings", params={"guid": g0}).json()["items"]
    g1 = onboarding["new_guid"]
    assert vouchers(stack, g0, g1) == {g0: ("replacing", g1), g1: ("active", None)}

    # The next `fdo device onboard`, with the credential the device still holds, completes.
    second = device_onboard(stack, path)
    assert second.returncode == 0, second.stderr
    held = read_credential(path)
    g2 = str(held.guid)
    assert g2 not in (g0, g1) and f"GUID {g0} -> {g2}; credential updated" in second.stdout

    # One active voucher for the device, and it is the one the device's credential matches.
    assert vouchers(stack, g0, g1, g2) == {
        g0: ("replacing", g2),
        g1: ("superseded", None),
        g2: ("active", None),
    }
    with stack.admin("owner") as owner:
        pem = owner.get(f"/api/v1/vouchers/{g2}/pem").text
    (voucher,) = OwnershipVoucher.from_pem(pem)
    voucher.verify(hmac_secret=held.hmac_secret, owner_key=stack.owner_keys["ec256"].public_key())
    assert voucher.header.guid == held.guid


def registration(stack: Stack, guid: str) -> dict[str, Any] | None:
    with stack.admin("rendezvous") as rv:
        items = rv.get("/api/v1/registrations", params={"limit": 1000}).json()["items"]
    return next((r for r in items if r["guid"] == guid), None)


def test_the_replacement_credential_onboards_again(world: tuple[Stack, Proxy], tmp_path: Path) -> None:
    stack, _ = world
    path, g0 = new_device(stack, tmp_path / "device", "AGAIN-1")
    old = tmp_path / "old-credential.bin"
    old.write_bytes(path.read_bytes())
    first = device_onboard(stack, path)
    assert first.returncode == 0, first.stderr
    g1 = str(read_credential(path).guid)

    # The owner registers the new GUID by TO0 (to0_replacements, on by default) ...
    assert stack.wait_for_to0(g1)["to0"]["registered_until"]
    reg = registration(stack, g1)
    assert reg is not None and reg["live"]

    # ... so the device, reset to its FDO credential or simply running FDO again, finds
    # its owner through the rendezvous and onboards with the credential it holds.
    again = device_onboard(stack, path)
    assert again.returncode == 0, again.stderr
    g2 = str(read_credential(path).guid)
    assert f"GUID {g1} -> {g2}" in again.stdout
    # That TO2 under g1 confirmed g1: g0 is replaced for good, and its registration is
    # retired (registered once more for 1 s), so a TO1 with g0 finds no owner.
    assert vouchers(stack, g0, g1, g2) == {
        g0: ("replaced", g1),
        g1: ("replacing", g2),
        g2: ("active", None),
    }
    deadline = time.monotonic() + 30
    while (reg0 := registration(stack, g0)) is not None and reg0["wait_seconds"] != 1:
        assert time.monotonic() < deadline, reg0
        time.sleep(0.2)
    if reg0 is not None:
        expires = datetime.fromisoformat(reg0["expires_at"])
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    stale = device_onboard(stack, old)
    assert stale.returncode == 1
    assert "TO1" in stale.stderr and "peer error 6" in stale.stderr
