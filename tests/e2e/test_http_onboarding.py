"""End to end over real HTTP: the three services as uvicorn servers, the real device client.

Each stack runs manufacturer, rendezvous and owner as separate server processes (as
``fdo <service> serve`` would), on SQLite and, when ``FDO_TEST_POSTGRES_URL`` is set, on
PostgreSQL, with one uvicorn worker per service and with two. Devices of every key type
go through DI, the hand-off, the owner's TO0, TO1 and TO2 with ServiceInfo. With two
workers consecutive messages of a session land on different processes, so passing
proves that no session depends on process memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdo.kex import CipherSuite, KexSuite
from fdo.voucher import OwnershipVoucher
from fdo_server.stack import Stack
from tests.conftest import database_backends, open_database

CASES = [
    ("ec256", KexSuite.ECDH256, CipherSuite.A128GCM),
    ("ec384", KexSuite.ECDH384, CipherSuite.A256GCM),
    ("rsa2048", KexSuite.ASYMKEX2048, CipherSuite.A128GCM),
    ("rsa2048", KexSuite.DHKEXid14, CipherSuite.A256GCM),
    ("rsa3072", KexSuite.ASYMKEX3072, CipherSuite.A256GCM),
    # A device may use any suite at least as strong as its owner key (RSA-2048 here).
    ("rsa2048", KexSuite.DHKEXid15, CipherSuite.A128GCM),
    ("rsa2048", KexSuite.ECDH256, CipherSuite.A256GCM),
]
STACKS = [(backend, workers) for backend in database_backends() for workers in (1, 2)]
_serial = itertools.count(1)


@pytest.fixture(scope="module", params=STACKS, ids=[f"{b}-{w}worker" for b, w in STACKS])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend, workers = request.param
    workdir = tmp_path_factory.mktemp(f"stack-{backend}-{workers}")
    dbs = [open_database(backend, workdir, name) for name in ("manufacturer", "rendezvous", "owner")]
    urls = {
        name: db.__enter__() for name, db in zip(("manufacturer", "rendezvous", "owner"), dbs, strict=True)
    }
    per_service = {"manufacturer": workers, "rendezvous": workers, "owner": workers}
    with Stack(workdir, database_urls=urls, workers=per_service) as running:
        yield running
    for db in dbs:
        db.__exit__()


@pytest.mark.parametrize(("kind", "kex", "cipher"), CASES, ids=[f"{k}-{x}-{c.name}" for k, x, c in CASES])
def test_device_onboards_over_http(stack: Stack, kind: str, kex: KexSuite, cipher: CipherSuite) -> None:
    serial = f"E2E-{next(_serial):04d}"
    credential = stack.manufacture(key_type=kind, serial=serial, model="kiosk-v2")
    guid = str(credential.guid)

    pem = stack.hand_off(guid, kind)
    (voucher,) = OwnershipVoucher.from_pem(pem)
    voucher.verify(hmac_secret=credential.hmac_secret, owner_key=stack.owner_keys[kind].public_key())
    assert stack.wait_for_to0(guid)["to0"]["registered_until"]

    root = stack.workdir / f"root-{serial}"
    commands: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, bytes, bytes]:
        commands.append(argv)
        return 0, b"", b""

    result = stack.onboard(credential, kex=kex, cipher=cipher, root=root, run=run)

    # The device got the owner's ServiceInfo and a replacement credential.
    assert (root / "etc" / "motd").read_text().startswith("Welcome")
    assert commands == [["true"]]
    assert result.rv_url == stack.url("rendezvous") and result.owner_url == stack.url("owner")
    new = result.credential
    assert new.guid != credential.guid and new.hmac_secret == credential.hmac_secret

    # The owner stored the replacement voucher, linked to the old one, and the onboarding.
    with stack.admin("owner") as owner:
        old_row = owner.get(f"/api/v1/vouchers/{guid}").json()
        # The old credential stays usable until the device shows it holds the new one.
        assert old_row["state"] == "replacing" and old_row["replaced_by"] == str(new.guid)
        new_row = owner.get(f"/api/v1/vouchers/{new.guid}").json()
        assert new_row["state"] == "active"
        done = owner.get("/api/v1/onboardings", params={"guid": guid}).json()["items"]
        assert [(d["guid"], d["new_guid"]) for d in done] == [(guid, str(new.guid))]
    with stack.admin("manufacturer") as mfr:
        assert mfr.get(f"/api/v1/vouchers/{guid}").json()["handed_off_at"] is not None


def test_admin_apis_need_a_token(stack: Stack) -> None:
    import httpx

    for service, path in (
        ("manufacturer", "/api/v1/vouchers"),
        ("owner", "/api/v1/vouchers"),
        ("rendezvous", "/api/v1/registrations"),
    ):
        assert httpx.get(stack.url(service) + path).status_code == 401
        bad = {"Authorization": "Bearer fdo_not-a-token"}
        assert httpx.get(stack.url(service) + path, headers=bad).status_code == 401
        with stack.admin(service) as client:
            assert client.get(path).status_code == 200


def test_device_endpoints_need_no_token(stack: Stack, tmp_path: Path) -> None:
    """FDO endpoints are unauthenticated by design: an unknown device is answered with error 6."""
    import httpx

    from fdo.messages import ErrorMessage
    from fdo.to1.messages import TO1HelloRV
    from fdo.types import Guid, SgType, SigInfo

    body = TO1HelloRV(guid=Guid.new(), ea_sig_info=SigInfo(SgType.ES256)).encode()
    resp = httpx.post(
        stack.url("rendezvous") + "/fdo/101/msg/30",
        content=body,
        headers={"Content-Type": "application/cbor"},
    )
    assert resp.status_code == 500 and resp.headers["Message-Type"] == "255"
    assert ErrorMessage.decode(resp.content).code == 6
