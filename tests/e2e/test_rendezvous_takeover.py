"""Over real HTTP: nobody takes over a device's rendezvous entry (issue 13, item 4).

The three services run as uvicorn servers with the default (empty) trust lists. A
device is made, its voucher handed to the owner, and the owner registers it by TO0. An
attacker who learned the voucher's header forges a voucher with the victim's GUID
(their own manufacturer key, the header copied otherwise: ``tests/rendezvous/forgery.py``)
and runs TO0 against the rendezvous with their own address. The rendezvous refuses it
with FDO error 101, writes one log line naming the GUID and the reason, counts it in
``/metrics``, and keeps the real owner's registration: TO1 still sends the device to
the real owner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from fdo.crypto import generate_key
from fdo.errors import PeerError
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.to0.messages import To1dPayload
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.voucher import OwnershipVoucher
from fdo_server.stack import SERVICES, Stack
from tests.conftest import database_backends, open_database
from tests.rendezvous.forgery import forge
from transport.client import FdoHttpClient


@pytest.fixture(scope="module", params=database_backends())
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"takeover-{request.param}")
    dbs = [open_database(request.param, workdir, name) for name in SERVICES]
    urls = {name: db.__enter__() for name, db in zip(SERVICES, dbs, strict=True)}
    try:
        with Stack(workdir, database_urls=urls) as running:
            yield running
    finally:
        for db in dbs:
            db.__exit__()


def to2_port(stack: Stack, device: TO1Device) -> int:
    """The owner port TO1 hands the device."""
    with FdoHttpClient(stack.url("rendezvous")) as client:
        client.run(device)
    assert device.to1d is not None
    (entry,) = To1dPayload.from_bytes(device.to1d.payload).rv_to2_addr.entries
    assert entry.port is not None
    return entry.port


def refused_total(stack: Stack) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(stack.url("rendezvous") + "/metrics", timeout=10).text.splitlines():
        if line.startswith("fdo_to0_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def log_lines(stack: Stack) -> list[dict[str, object]]:
    """The rendezvous server's JSON log lines."""
    text = (stack.workdir / "rendezvous.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_forged_voucher_is_refused_logged_counted_and_changes_nothing(stack: Stack) -> None:
    credential = stack.manufacture(serial="VICTIM-1", model="kiosk-v2")
    guid = str(credential.guid)
    stack.hand_off(guid, "ec256")
    stack.wait_for_to0(guid)
    owner_port = urlsplit(stack.url("owner")).port
    assert to2_port(stack, TO1Device(credential)) == owner_port
    with stack.admin("rendezvous") as rv:
        (before,) = [r for r in rv.get("/api/v1/registrations").json()["items"] if r["guid"] == guid]
    with stack.admin("owner") as owner:
        (victim,) = OwnershipVoucher.from_pem(owner.get(f"/api/v1/vouchers/{guid}/pem").text)

    attacker = generate_key("ec256")
    forged = forge(victim, generate_key("ec256"), attacker)
    addr = RVTO2Addr((RVTO2AddrEntry(None, "attacker.example", 9999, TransportProtocol.HTTP),))
    with FdoHttpClient(stack.url("rendezvous")) as client, pytest.raises(PeerError) as info:
        client.run(TO0Owner(voucher=forged, owner_key=attacker, rv_to2_addr=addr, wait_seconds=3600))
    assert (info.value.peer_code, info.value.prev_msg_type) == (101, 22)

    (line,) = [e for e in log_lines(stack) if e.get("event") == "to0_refused"]
    assert (line["guid"], line["reason"], line["level"]) == (guid, "manufacturer_key", "warning")
    assert refused_total(stack) == {"manufacturer_key": 1.0}
    # The real owner's registration is as it was, and TO1 still answers with its address.
    with stack.admin("rendezvous") as rv:
        (after,) = [r for r in rv.get("/api/v1/registrations").json()["items"] if r["guid"] == guid]
    assert after == before
    assert to2_port(stack, TO1Device(credential)) == owner_port
    # The service warned at start that its trust lists are empty.
    (warning,) = [e for e in log_lines(stack) if "TRUSTED_MANUFACTURER_KEYS" in str(e.get("message"))]
    assert warning["level"] == "warning"
