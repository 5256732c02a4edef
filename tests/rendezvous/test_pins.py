"""Per-GUID pins (``rendezvous/pins.py``): the rule, and the rendezvous app enforcing it.

A voucher forged with a victim's GUID (the attacker's own manufacturer key, the header
copied otherwise) is refused with FDO error 101, logged and counted, and leaves the real
owner's registration as it was; resale (the voucher extended to the next owner) is
accepted and moves the pin on, after which the previous owner is refused; the pin
outlives expiry and purge; ``fdo rendezvous unpin`` and ``DELETE /api/v1/pins/{guid}``
clear it.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fdo.crypto import PrivateKeyT, PublicKey, spki_der
from fdo.errors import PeerError
from fdo.rvinfo import RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.to0.messages import To1dPayload
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.voucher import OwnershipVoucher
from fdo_cli.main import app as fdo_app
from fdo_server.auth import Role
from fdo_server.db import lent, make_engine
from rendezvous.pins import Pin, Verdict, judge, load_pin
from tests.conftest import KeyPool
from tests.rendezvous.forgery import forge
from tests.rendezvous.test_service import BASE, Clock, Setup, _token, make_client, setup  # noqa: F401
from transport.client import FdoHttpClient

H = [hashlib.sha256(bytes([i])).digest() for i in range(6)]
M, M2 = H[4], H[5]


@pytest.mark.parametrize(
    ("pinned", "offered", "verdict"),
    [
        (None, Pin(M, (H[0],)), Verdict.PIN),
        (Pin(M, (H[0],)), Pin(M, (H[0],)), Verdict.SAME),
        (Pin(M, (H[0],)), Pin(M, (H[0], H[1])), Verdict.EXTEND),  # resale
        (Pin(M, (H[0],)), Pin(M, (H[0], H[1], H[2])), Verdict.EXTEND),  # sold twice since
        (Pin(M, (H[0],)), Pin(M2, (H[0],)), Verdict.WRONG_MANUFACTURER),  # forged header
        (Pin(M, (H[0],)), Pin(M2, (H[0], H[1])), Verdict.WRONG_MANUFACTURER),
        (Pin(M, (H[0],)), Pin(M, (H[1],)), Verdict.BROKEN_CHAIN),  # another first owner
        (Pin(M, (H[0], H[1])), Pin(M, (H[0],)), Verdict.BROKEN_CHAIN),  # the seller, after resale
        (Pin(M, (H[0], H[1])), Pin(M, (H[0], H[2])), Verdict.BROKEN_CHAIN),  # sold to another
        (Pin(M, (H[0], H[1])), Pin(M, (H[1], H[0])), Verdict.BROKEN_CHAIN),
    ],
)
def test_the_pin_rule(pinned: Pin | None, offered: Pin, verdict: Verdict) -> None:
    assert judge(pinned, offered) == verdict


def test_chain_columns_round_trip() -> None:
    pin = Pin(M, (H[0], H[1], H[2]))
    assert Pin.from_columns(pin.manufacturer_key_hash, pin.chain_bytes()) == pin
    with pytest.raises(ValueError, match="SHA-256"):
        Pin.from_columns(M, H[0][:31])


# ---------------------------------------------------------------------------- the app


def _addr(host: str) -> RVTO2Addr:
    return RVTO2Addr((RVTO2AddrEntry(None, host, 8043, TransportProtocol.HTTP),))


def register(http: TestClient, voucher: OwnershipVoucher, key: PrivateKeyT, host: str) -> None:
    owner = TO0Owner(voucher=voucher, owner_key=key, rv_to2_addr=_addr(host), wait_seconds=3600)
    FdoHttpClient(BASE, client=http).run(owner)


def owner_host(http: TestClient, setup: Setup) -> str:  # noqa: F811 - the fixture's name
    """Where TO1 sends the device now."""
    device = TO1Device(setup.credential)
    FdoHttpClient(BASE, client=http).run(device)
    assert device.to1d is not None
    (entry,) = To1dPayload.from_bytes(device.to1d.payload).rv_to2_addr.entries
    assert entry.dns is not None
    return entry.dns


def refused(http: TestClient) -> dict[str, float]:
    """``fdo_to0_refused_total`` by reason, from ``/metrics``."""
    out: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("fdo_to0_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_forged_voucher_does_not_take_over(
    database_url: str,
    setup: Setup,  # noqa: F811 - the fixture
    key_pool: KeyPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http = make_client(database_url)
    register(http, setup.voucher, setup.owner_key, "owner.example")
    attacker = key_pool.get("ec256", 7)
    forged = forge(setup.voucher, key_pool.get("ec256", 6), attacker)
    assert forged.guid == setup.voucher.guid
    forged.verify(min_entries=1)  # a valid voucher in itself: only the pin stops it

    with caplog.at_level(logging.WARNING, logger="rendezvous.pins"), pytest.raises(PeerError) as info:
        register(http, forged, attacker, "attacker.example")
    assert (info.value.peer_code, info.value.prev_msg_type) == (101, 22)
    lines = [r for r in caplog.records if r.name == "rendezvous.pins"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert str(setup.voucher.guid) in lines[0].getMessage() and "manufacturer key" in lines[0].getMessage()
    assert refused(http) == {"manufacturer_key": 1.0}
    assert owner_host(http, setup) == "owner.example"

    # The same voucher again is fine; so is a longer chain (resale) ...
    register(http, setup.voucher, setup.owner_key, "owner.example")
    buyer = key_pool.get("ec256", 8)
    sold = setup.voucher.extend(setup.owner_key, PublicKey.from_key(buyer.public_key()))
    register(http, sold, buyer, "buyer.example")
    assert owner_host(http, setup) == "buyer.example"
    # ... after which the seller's shorter chain no longer registers.
    with pytest.raises(PeerError) as info:
        register(http, setup.voucher, setup.owner_key, "owner.example")
    assert info.value.peer_code == 101
    assert refused(http) == {"manufacturer_key": 1.0, "owner_chain": 1.0}
    assert owner_host(http, setup) == "buyer.example"


def test_the_pin_outlives_expiry_and_purge_until_unpinned(
    database_url: str,
    setup: Setup,  # noqa: F811 - the fixture
    key_pool: KeyPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    clock.now = datetime.now(UTC) - timedelta(days=400)  # registered long ago: expired now
    http = make_client(database_url, clock)
    register(http, setup.voucher, setup.owner_key, "owner.example")
    clock.now = datetime.now(UTC)
    monkeypatch.setenv("FDO_RENDEZVOUS_DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(fdo_app, ["rendezvous", "purge"])
    assert result.exit_code == 0 and "deleted 1 expired registration(s)" in result.output, result.output

    attacker = key_pool.get("ec256", 7)
    forged = forge(setup.voucher, key_pool.get("ec256", 6), attacker)
    with pytest.raises(PeerError) as info:
        register(http, forged, attacker, "attacker.example")
    assert info.value.peer_code == 101

    guid = str(setup.voucher.guid)
    result = runner.invoke(fdo_app, ["rendezvous", "unpin", guid])
    assert result.exit_code == 0, result.output
    assert f"cleared the pin of GUID {guid}" in result.output
    result = runner.invoke(fdo_app, ["rendezvous", "unpin", guid])
    assert result.exit_code == 1 and "is not pinned" in result.output
    result = runner.invoke(fdo_app, ["rendezvous", "unpin", "not-a-guid"])
    assert result.exit_code == 2 and "not a GUID" in result.output

    # Unpinned, the next valid registration pins the GUID anew (here: the forged one,
    # which is why clearing a pin is an operator's decision).
    register(http, forged, attacker, "attacker.example")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            pin = load_pin(setup.voucher.guid.value, conn=lent(conn))
    finally:
        engine.dispose()
    assert pin is not None
    assert pin.manufacturer_key_hash == hashlib.sha256(spki_der(forged.header.public_key.key)).digest()


def test_admin_api_clears_a_pin(
    database_url: str,
    setup: Setup,  # noqa: F811 - the fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    http = make_client(database_url)
    register(http, setup.voucher, setup.owner_key, "owner.example")
    guid = str(setup.voucher.guid)
    operator = _token(database_url, Role.OPERATOR)
    assert http.delete(f"/api/v1/pins/{guid}", headers=operator).status_code == 403
    admin = _token(database_url, Role.ADMIN)
    with caplog.at_level(logging.WARNING, logger="rendezvous.audit"):
        assert http.delete(f"/api/v1/pins/{guid}", headers=admin).status_code == 204
    assert any(guid in r.getMessage() and "cleared" in r.getMessage() for r in caplog.records)
    assert http.delete(f"/api/v1/pins/{guid}", headers=admin).status_code == 404
    assert http.delete("/api/v1/pins/nope", headers=admin).status_code == 422
    assert owner_host(http, setup) == "owner.example"  # the registration itself stays


def test_empty_trust_lists_are_warned_about(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rendezvous"):
        make_client(database_url)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "rendezvous"]
    assert "FDO_RENDEZVOUS_TRUSTED_MANUFACTURER_KEYS and FDO_RENDEZVOUS_TRUSTED_OWNER_KEYS are empty" in line
