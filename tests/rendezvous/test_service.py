"""The rendezvous app over HTTP: TO0 and TO1 with sessions and registrations in the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fdo.credential import DeviceCredential
from fdo.crypto import PrivateKeyT, PublicKey, public_key_to_pem
from fdo.errors import FdoUsageError, PeerError
from fdo.messages import ErrorMessage
from fdo.rvinfo import RendezvousInfo, RVTO2Addr, RVTO2AddrEntry, TransportProtocol
from fdo.to0.messages import TO0OwnerSign
from fdo.to0.owner import TO0Owner
from fdo.to1.device import TO1Device
from fdo.to1.messages import TO1HelloRV
from fdo.types import Guid, SgType, SigInfo
from fdo.voucher import OwnershipVoucher
from fdo_server.auth import Role, create_token
from fdo_server.db import make_engine
from fdo_server.session_model import FdoSession
from rendezvous.app import create_app
from rendezvous.settings import RendezvousSettings
from rendezvous.store import as_utc
from rendezvous.tables import Registration
from tests.conftest import KeyPool, migrated
from tests.fdo.flow import make_manufacturer, run_di
from transport.client import FdoHttpClient

BASE = "http://testserver"
CBOR = {"Content-Type": "application/cbor"}


@dataclass
class Setup:
    credential: DeviceCredential
    voucher: OwnershipVoucher
    owner_key: PrivateKeyT
    mfr_key: PrivateKeyT


@pytest.fixture(scope="module")
def setup(key_pool: KeyPool) -> Setup:
    return make_setup(key_pool)


def make_setup(key_pool: KeyPool) -> Setup:
    """A device's credential and its voucher extended to an owner key."""
    mfr_keys = {"ec256": key_pool.get("ec256", 0), "ec384": key_pool.get("ec384", 0)}
    owner_key = key_pool.get("ec256", 2)
    credential, voucher = run_di(make_manufacturer(mfr_keys), key_pool.get("ec256", 1))
    extended = voucher.extend(mfr_keys["ec256"], PublicKey.from_key(owner_key.public_key()))
    return Setup(credential, extended, owner_key, mfr_keys["ec256"])


class Clock:
    """A settable UTC clock."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_client(database_url: str, clock: Clock | None = None, **settings: object) -> TestClient:
    app = create_app(
        RendezvousSettings(database_url=migrated(database_url, "rendezvous"), **settings),  # type: ignore[arg-type]
        clock=clock or Clock(),
    )
    return TestClient(app, base_url=BASE)


def to0_owner(setup: Setup, wait_seconds: int = 7200) -> TO0Owner:
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    return TO0Owner(
        voucher=setup.voucher, owner_key=setup.owner_key, rv_to2_addr=addr, wait_seconds=wait_seconds
    )


def assert_error(response: object, code: int, prev: int) -> None:
    from httpx import Response

    assert isinstance(response, Response)
    assert response.status_code == 500 and response.headers["Message-Type"] == "255"
    err = ErrorMessage.decode(response.content)
    assert (err.code, err.prev_msg_type) == (code, prev)


def rows(database_url: str) -> tuple[list[Registration], int]:
    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            return list(db.exec(select(Registration)).all()), len(db.exec(select(FdoSession)).all())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- TO0 / TO1


def test_to0_then_to1(database_url: str, setup: Setup) -> None:
    clock = Clock()
    http = make_client(database_url, clock)
    client = FdoHttpClient(BASE, client=http)
    owner = to0_owner(setup)
    client.run(owner)
    assert owner.accepted_wait_seconds == 7200

    device = TO1Device(setup.credential)
    client.run(device)
    assert device.done and device.to1d is not None

    regs, sessions = rows(database_url)
    assert sessions == 0  # finished sessions are deleted
    assert [r.guid for r in regs] == [setup.voucher.guid.value]
    assert as_utc(regs[0].expires_at) == clock.now + timedelta(seconds=7200)


def test_wait_is_capped(database_url: str, setup: Setup) -> None:
    http = make_client(database_url, max_wait_seconds=600)
    owner = to0_owner(setup, wait_seconds=86400)
    FdoHttpClient(BASE, client=http).run(owner)
    assert owner.accepted_wait_seconds == 600
    regs, _ = rows(database_url)
    assert regs[0].wait_seconds == 600


def test_new_to0_replaces_registration(database_url: str, setup: Setup) -> None:
    clock = Clock()
    http = make_client(database_url, clock)
    FdoHttpClient(BASE, client=http).run(to0_owner(setup, wait_seconds=100))
    clock.advance(50)
    FdoHttpClient(BASE, client=http).run(to0_owner(setup, wait_seconds=300))
    regs, _ = rows(database_url)
    assert len(regs) == 1 and regs[0].wait_seconds == 300
    assert as_utc(regs[0].expires_at) == clock.now + timedelta(seconds=300)


def test_expired_registration_is_not_served(database_url: str, setup: Setup) -> None:
    clock = Clock()
    http = make_client(database_url, clock, max_wait_seconds=1)
    client = FdoHttpClient(BASE, client=http)
    client.run(to0_owner(setup))
    client.run(TO1Device(setup.credential))  # still live
    clock.advance(2)
    with pytest.raises(PeerError) as info:
        client.run(TO1Device(setup.credential))
    assert info.value.peer_code == 6


def test_to1_unknown_device(database_url: str, setup: Setup) -> None:
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=make_client(database_url)).run(TO1Device(setup.credential))
    assert info.value.peer_code == 6


def _hello(http: TestClient, setup: Setup) -> tuple[str, bytes]:
    """Send TO0.Hello; return the session token header and the TO0.OwnerSign body."""
    owner = to0_owner(setup)
    _, body = owner.start()
    r = http.post("/fdo/101/msg/20", content=body, headers=CBOR)
    assert r.status_code == 200 and r.headers["Message-Type"] == "21"
    nxt = owner.receive(21, r.content)
    assert nxt is not None and nxt[0] == 22
    return r.headers["Authorization"], nxt[1]


def test_replayed_owner_sign_is_refused(database_url: str, setup: Setup) -> None:
    http = make_client(database_url)
    token, sign = _hello(http, setup)
    headers = {**CBOR, "Authorization": token}
    r = http.post("/fdo/101/msg/22", content=sign, headers=headers)
    assert r.status_code == 200 and r.headers["Message-Type"] == "23"
    assert_error(http.post("/fdo/101/msg/22", content=sign, headers=headers), 1, 22)


def test_sessions_live_in_the_database(database_url: str, setup: Setup) -> None:
    first, second = make_client(database_url), make_client(database_url)
    token, sign = _hello(first, setup)
    _, sessions = rows(database_url)
    assert sessions == 1
    r = second.post("/fdo/101/msg/22", content=sign, headers={**CBOR, "Authorization": token})
    assert r.status_code == 200 and r.headers["Message-Type"] == "23"
    regs, sessions = rows(database_url)
    assert len(regs) == 1 and sessions == 0
    # and a device can run TO1 against the other instance
    FdoHttpClient(BASE, client=first).run(TO1Device(setup.credential))


def test_bad_to1d_signature(database_url: str, setup: Setup, key_pool: KeyPool) -> None:
    owner = to0_owner(setup)
    owner.owner_key = key_pool.get("ec256", 3)  # signs to1d with a key that is not the voucher's
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=make_client(database_url)).run(owner)
    assert info.value.peer_code == 3
    assert rows(database_url)[0] == []


# ---------------------------------------------------------------------------- allow-lists


def _pem(tmp_path: Path, name: str, key: PrivateKeyT) -> Path:
    path = tmp_path / name
    path.write_bytes(public_key_to_pem(key.public_key()))
    return path


def test_untrusted_owner_refused(database_url: str, setup: Setup, key_pool: KeyPool, tmp_path: Path) -> None:
    other = _pem(tmp_path, "other.pem", key_pool.get("ec256", 3))
    http = make_client(database_url, trusted_owner_keys=[other])
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=http).run(to0_owner(setup))
    assert info.value.peer_code == 2
    assert rows(database_url)[0] == []


def test_trusted_keys_accepted(database_url: str, setup: Setup, tmp_path: Path) -> None:
    http = make_client(
        database_url,
        trusted_owner_keys=[_pem(tmp_path, "owner.pem", setup.owner_key)],
        trusted_manufacturer_keys=[_pem(tmp_path, "mfr.pem", setup.mfr_key)],
    )
    FdoHttpClient(BASE, client=http).run(to0_owner(setup))
    assert len(rows(database_url)[0]) == 1


def test_untrusted_manufacturer_refused(
    database_url: str, setup: Setup, key_pool: KeyPool, tmp_path: Path
) -> None:
    http = make_client(
        database_url, trusted_manufacturer_keys=[_pem(tmp_path, "m.pem", key_pool.get("ec256", 3))]
    )
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=http).run(to0_owner(setup))
    assert info.value.peer_code == 2


def test_missing_key_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TRUSTED_OWNER_KEYS"):
        RendezvousSettings(trusted_owner_keys=[tmp_path / "nope.pem"])


# ---------------------------------------------------------------------------- admin API


def _token(database_url: str, role: Role) -> dict[str, str]:
    engine = make_engine(database_url)
    try:
        with Session(engine) as db:
            token = create_token(db, f"test-{role}", role)
            db.commit()
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def test_health(database_url: str) -> None:
    r = make_client(database_url).get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_admin_api(database_url: str, setup: Setup) -> None:
    http = make_client(database_url)
    FdoHttpClient(BASE, client=http).run(to0_owner(setup))
    viewer, admin = _token(database_url, Role.VIEWER), _token(database_url, Role.ADMIN)
    guid = str(setup.voucher.guid)

    assert http.get("/api/v1/registrations").status_code == 401
    assert http.get("/api/v1/registrations", headers={"Authorization": "Bearer fdo_nope"}).status_code == 401

    r = http.get("/api/v1/registrations", headers=viewer)
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 1 and page["offset"] == 0
    [item] = page["items"]
    assert item["guid"] == guid and item["wait_seconds"] == 7200 and item["live"] is True
    assert "to1d" not in item and "expires_at" in item

    assert http.get("/api/v1/registrations?offset=1", headers=viewer).json()["items"] == []

    assert http.delete(f"/api/v1/registrations/{guid}").status_code == 401
    assert http.delete(f"/api/v1/registrations/{guid}", headers=viewer).status_code == 403
    assert http.delete(f"/api/v1/registrations/{guid}", headers=admin).status_code == 204
    assert http.delete(f"/api/v1/registrations/{guid}", headers=admin).status_code == 404
    assert http.delete("/api/v1/registrations/not-a-guid", headers=admin).status_code == 422
    assert http.get("/api/v1/registrations", headers=viewer).json()["total"] == 0

    with pytest.raises(PeerError) as info:  # deleted: no longer served
        FdoHttpClient(BASE, client=http).run(TO1Device(setup.credential))
    assert info.value.peer_code == 6


# ---------------------------------------------------------------------------- what is not stored


def test_owner_address_without_host_is_refused(database_url: str, setup: Setup) -> None:
    http = make_client(database_url)
    owner = to0_owner(setup)
    # What another owner may send: RVTO2Addr = [[null, null, 8043, 3]] (no RVIP, no RVDNS).
    owner.rv_to2_addr = RVTO2Addr((RVTO2AddrEntry(None, None, 8043, TransportProtocol.HTTP),))
    _, body = owner.start()
    r = http.post("/fdo/101/msg/20", content=body, headers=CBOR)
    nxt = owner.receive(21, r.content)
    assert nxt is not None
    sign = TO0OwnerSign.decode(nxt[1])
    assert sign.to1d.payload.startswith(bytes.fromhex("82" + "81" + "84f6f6191f6b03"))
    headers = {**CBOR, "Authorization": r.headers["Authorization"]}
    r = http.post("/fdo/101/msg/22", content=nxt[1], headers=headers)
    assert_error(r, 4, 22)
    assert "neither RVIP nor RVDNS" in ErrorMessage.decode(r.content).message
    assert rows(database_url) == ([], 0)


def test_voucher_with_empty_rendezvous_info_is_refused(database_url: str, key_pool: KeyPool) -> None:
    mfr_keys = {"ec256": key_pool.get("ec256", 0), "ec384": key_pool.get("ec384", 0)}
    mfr = make_manufacturer(mfr_keys)
    mfr.rv = RendezvousInfo(())
    _, voucher = run_di(mfr, key_pool.get("ec256", 1), serial="SN-NORV")
    assert voucher.header.rv_info.encode() == b"\x80"  # OVRVInfo = []
    owner_key = key_pool.get("ec256", 2)
    extended = voucher.extend(mfr_keys["ec256"], PublicKey.from_key(owner_key.public_key()))
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    owner = TO0Owner(voucher=extended, owner_key=owner_key, rv_to2_addr=addr, wait_seconds=3600)
    http = make_client(database_url)
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=http).run(owner)
    assert info.value.peer_code == 2 and "RendezvousInfo is empty" in info.value.message
    assert rows(database_url) == ([], 0)


def test_our_owner_never_signs_an_address_without_host(setup: Setup) -> None:
    for addr in (RVTO2Addr((RVTO2AddrEntry(None, None, 8043, TransportProtocol.HTTP),)), RVTO2Addr(())):
        with pytest.raises(FdoUsageError, match="needs a host"):
            TO0Owner(voucher=setup.voucher, owner_key=setup.owner_key, rv_to2_addr=addr, wait_seconds=60)


def test_to0_and_to1_have_limits_of_their_own(database_url: str, setup: Setup) -> None:
    """TO0.Hello (owners, in bulk) is limited by ``to0_rate``/``to0_burst``, TO1.HelloRV
    (devices) by ``first_message_rate``/``_burst``: each refused past its own burst, the
    FDO way (HTTP 500, ErrorMessage code 500) with ``Retry-After``."""
    http = make_client(
        database_url, to0_rate=0.001, to0_burst=3, first_message_rate=0.001, first_message_burst=1
    )
    _, hello = to0_owner(setup).start()
    hello_rv = TO1HelloRV(guid=Guid.new(), ea_sig_info=SigInfo(SgType.ES256)).encode()

    def send(msg_type: int, body: bytes) -> tuple[int, str | None, str | None]:
        response = http.post(f"/fdo/101/msg/{msg_type}", content=body, headers=CBOR)
        return response.status_code, response.headers.get("Message-Type"), response.headers.get("Retry-After")

    assert [send(20, hello)[:2] for _ in range(3)] == [(200, "21")] * 3  # TO0.HelloAck
    status, msg_type, retry_after = send(20, hello)
    assert (status, msg_type) == (500, "255") and retry_after is not None and int(retry_after) > 0
    refusal = http.post("/fdo/101/msg/20", content=hello, headers=CBOR)
    error = ErrorMessage.decode(refusal.content)
    assert error.code == 500 and "too many requests" in error.message
    # TO1 has its own bucket: TO0's being empty does not touch it (an unknown GUID: 6, no Retry-After).
    status, msg_type, retry_after = send(30, hello_rv)
    assert (msg_type, retry_after) == ("255", None)
    status, msg_type, retry_after = send(30, hello_rv)
    assert (status, msg_type) == (500, "255") and retry_after is not None


def test_to0_limit_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults: one owner is let through at 200 a second per worker after 1000 at once,
    ten times what one address may send of TO1; ``FDO_RENDEZVOUS_TO0_RATE``/``_BURST``."""
    settings = RendezvousSettings()
    assert (settings.to0_rate, settings.to0_burst) == (200, 1000)
    assert (settings.first_message_rate, settings.first_message_burst) == (20, 100)
    monkeypatch.setenv("FDO_RENDEZVOUS_TO0_RATE", "0")
    monkeypatch.setenv("FDO_RENDEZVOUS_TO0_BURST", "50")
    settings = RendezvousSettings()
    assert (settings.to0_rate, settings.to0_burst) == (0, 50)
