"""Handing vouchers on (resale) through the owner's admin API: what changes, what is refused.

The whole story over real HTTP with two owners is ``tests/e2e/test_resale.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from fdo import codec
from fdo.crypto import PublicKeyT, public_key_to_pem, spki_der
from fdo.errors import ErrorCode, PeerError
from fdo.voucher import OwnershipVoucher, vouchers_to_pem
from fdo_server.auth import Role
from fdo_server.db import unit_of_work
from owner.app import create_app
from owner.tables import OwnerVoucher, To0Work
from owner.to0 import run_due
from tests.conftest import KeyPool
from tests.owner.helpers import BASE, World, make_world, token
from tests.owner.test_to2 import DeviceSide, onboard
from transport.client import FdoHttpClient


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


def _pem(key: PublicKeyT) -> str:
    return public_key_to_pem(key).decode()


def _fp(key: PublicKeyT) -> str:
    return hashlib.sha256(spki_der(key)).hexdigest()


def _owner_with(world: World, database_url: str, count: int) -> tuple[FastAPI, TestClient, list[Any]]:
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    devices = [world.device() for _ in range(count)]
    r = http.post(
        "/api/v1/vouchers",
        content=vouchers_to_pem([v for _, v in devices]),
        headers=token(app, Role.OPERATOR),
    )
    assert r.status_code == 200, r.text
    return app, http, devices


def _work_rows(app: FastAPI) -> int:
    with unit_of_work(app.state.engine) as db:
        return len(db.exec(select(To0Work)).all())


def test_hand_on_batch(world: World, database_url: str) -> None:
    app, http, devices = _owner_with(world, database_url, 2)
    guids = [str(v.guid) for _, v in devices]
    buyer = world.pool.get("ec256", 20).public_key()
    body = {"guids": guids, "owner_key_pem": _pem(buyer)}
    assert http.post("/api/v1/vouchers/extend", json=body, headers=token(app, Role.VIEWER)).status_code == 403
    op = token(app, Role.OPERATOR)

    r = http.post("/api/v1/vouchers/extend", json=body, headers=op)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [v["guid"] for v in out["vouchers"]] == guids
    assert {v["owner_key_fingerprint"] for v in out["vouchers"]} == {_fp(buyer)}
    vouchers = OwnershipVoucher.from_pem(out["pem"])
    assert out["pem"] == "".join(v["pem"] for v in out["vouchers"])
    for voucher, (_, before) in zip(vouchers, devices, strict=True):
        voucher.verify(owner_key=buyer)  # mfg -> us -> buyer, each entry checked
        assert voucher.guid == before.guid and len(voucher.entries) == 2
        assert voucher.entries[0].raw == before.entries[0].raw  # older entries verbatim
    for guid in guids:
        row = http.get(f"/api/v1/vouchers/{guid}", headers=op).json()
        assert row["state"] == "handed_on" and row["entries"] == 2 and row["to0"] is None
        assert row["owner_key_fingerprint"] == _fp(buyer)
    assert _work_rows(app) == 0
    exported = http.get(f"/api/v1/vouchers/{guids[0]}/pem", headers=op)
    assert exported.status_code == 200 and exported.text == out["vouchers"][0]["pem"]
    audit = http.get("/api/v1/audit", params={"action": "voucher.hand_on"}, headers=op).json()["items"]
    assert sorted((e["target"], e["who"], e["detail"]["owner_key_fingerprint"]) for e in audit) == sorted(
        (g, "test-operator", _fp(buyer)) for g in guids
    )
    assert http.get("/api/v1/summary", headers=op).json()["vouchers"]["handed_on"] == 2

    # A second hand-on of either is refused, naming the state; nothing more is audited.
    again = {"guids": guids[1:], "owner_key_pem": _pem(buyer)}
    r = http.post("/api/v1/vouchers/extend", json=again, headers=op)
    assert r.status_code == 409 and "already handed on" in r.json()["detail"]
    r = http.post(f"/api/v1/vouchers/{guids[0]}/extend", json={"owner_key_pem": _pem(buyer)}, headers=op)
    assert r.status_code == 409 and "handed_on" in r.json()["detail"]
    assert (
        len(http.get("/api/v1/audit", params={"action": "voucher.hand_on"}, headers=op).json()["items"]) == 2
    )

    # TO2 no longer finds the voucher: an FDO error, resource not found.
    with pytest.raises(PeerError) as info:
        FdoHttpClient(BASE, client=http).run(DeviceSide().machine(devices[0][0]))
    assert info.value.peer_code == ErrorCode.RESOURCE_NOT_FOUND

    # The TO0 scheduler skips handed-on vouchers even when a work row is due for one.
    with unit_of_work(app.state.engine) as db:
        row = db.exec(select(OwnerVoucher).where(OwnerVoucher.guid == devices[0][1].guid.value)).one()
        assert row.id is not None
        db.add(To0Work(voucher_id=row.id, next_attempt_at=row.imported_at))

    def no_rendezvous(url: str) -> Any:
        raise AssertionError(f"TO0 ran for a handed-on voucher ({url})")

    assert run_due(app.state.database, app.state.config, worker_id="t", http_factory=no_rendezvous) == 0


def test_hand_on_refusals(world: World, database_url: str) -> None:
    app, http, devices = _owner_with(world, database_url, 2)
    guids = [str(v.guid) for _, v in devices]
    op = token(app, Role.OPERATOR)

    def extend(guids: list[str], key_pem: str) -> Any:
        return http.post(
            "/api/v1/vouchers/extend", json={"guids": guids, "owner_key_pem": key_pem}, headers=op
        )

    # A key of another kind than the voucher's (ec256) cannot follow in the chain.
    r = extend(guids[:1], _pem(world.pool.get("ec384", 20).public_key()))
    assert r.status_code == 422 and "ec384" in r.json()["detail"] and "ec256" in r.json()["detail"]
    # Our own key is no next owner.
    r = extend(guids[:1], _pem(world.owner_keys["ec256"].public_key()))
    assert r.status_code == 422 and "own keys" in r.json()["detail"]
    buyer = _pem(world.pool.get("ec256", 20).public_key())
    assert extend(["00000000-0000-0000-0000-000000000000"], buyer).status_code == 404
    assert extend(["not-a-guid"], buyer).status_code == 400
    assert extend(guids, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").status_code == 400
    assert extend([], buyer).status_code == 422
    # All or nothing: the unknown GUID after the first undoes the first.
    assert extend([guids[0], "00000000-0000-0000-0000-000000000000"], buyer).status_code == 404

    for guid in guids:
        assert http.get(f"/api/v1/vouchers/{guid}", headers=op).json()["state"] == "active"
    assert _work_rows(app) == 2
    assert http.get("/api/v1/audit", params={"action": "voucher.hand_on"}, headers=op).json()["items"] == []


def test_hand_on_after_to2(world: World, database_url: str, tmp_path: Path) -> None:
    """After a TO2 that replaced the credential, the replacement is handed on, the old one is not."""
    http, _, machine, voucher, op = onboard(world, database_url, tmp_path, reuse=False)
    new = machine.new_credential
    assert new is not None
    buyer = world.pool.get("ec256", 20).public_key()
    r = http.post(f"/api/v1/vouchers/{voucher.guid}/extend", json={"owner_key_pem": _pem(buyer)}, headers=op)
    assert r.status_code == 409 and "is replacing" in r.json()["detail"]

    r = http.post(f"/api/v1/vouchers/{new.guid}/extend", json={"owner_key_pem": _pem(buyer)}, headers=op)
    assert r.status_code == 200, r.text
    (handed,) = OwnershipVoucher.from_pem(r.json()["pem"])
    # The replacement voucher's OVPubKey is our key: the owner extended it to itself at
    # TO2.Done (owner.app.held_by_owner), and now from itself to the buyer.
    handed.verify(owner_key=buyer, hmac_secret=new.hmac_secret)
    assert handed.guid == new.guid and len(handed.entries) == 2
    # The replaced voucher no longer onboards anyone: the device is sold.
    old = http.get(f"/api/v1/vouchers/{voucher.guid}", headers=op).json()
    assert old["state"] == "replaced"
    assert handed.header.public_key.same_key(world.owner_keys["ec256"].public_key())
    device = http.get(f"/api/v1/devices/{new.guid}", headers=op).json()
    (event,) = [e for e in device["events"] if e["kind"] == "handed_on"]
    assert event["detail"]["guid"] == str(new.guid) and event["detail"]["owner_key_fingerprint"] == _fp(buyer)


def _kind(value: object) -> str:
    if isinstance(value, list | tuple):
        return "array"
    return "map" if isinstance(value, Mapping) else type(value).__name__


def _entry_shape(raw: bytes, voucher: OwnershipVoucher) -> tuple[object, ...]:
    """What go-fdo's decoder and ExtendVoucher rules look at in one entry."""
    tagged = codec.decode(raw)
    assert isinstance(tagged, codec.Tag)
    sign1 = tagged.value
    assert isinstance(sign1, list | tuple) and isinstance(sign1[0], bytes) and isinstance(sign1[2], bytes)
    protected = codec.decode(sign1[0])
    payload = codec.decode(sign1[2])
    assert isinstance(protected, Mapping) and isinstance(payload, list | tuple)
    pub = payload[3]
    header_key = voucher.header.public_key
    return (
        tagged.tag,
        tuple(_kind(x) for x in sign1),
        tuple(sorted(protected)),
        tuple(sorted(dict(sign1[1]).items())),  # unprotected header (go-fdo: empty)
        tuple(_kind(x) for x in payload),
        tuple(_kind(x) for x in payload[0]),
        (pub[0], pub[1]) == (int(header_key.pk_type), int(header_key.pk_enc)),  # go-fdo: type and encoding
        _kind(pub[2]),
    )


def test_handed_on_voucher_reads_like_go_fdo(world: World, database_url: str, vectors_dir: Path) -> None:
    """Our extended entry has the layout of go-fdo's own extended voucher (``ov_extended.pem``)."""
    (go,) = OwnershipVoucher.from_pem((vectors_dir / "go-fdo/ov_extended.pem").read_bytes())
    go_shapes = {_entry_shape(e.raw, go) for e in go.entries}
    assert len(go_shapes) == 1
    app, http, devices = _owner_with(world, database_url, 1)
    guid = str(devices[0][1].guid)
    buyer = world.pool.get("ec256", 20).public_key()
    r = http.post(
        f"/api/v1/vouchers/{guid}/extend",
        json={"owner_key_pem": _pem(buyer)},
        headers=token(app, Role.OPERATOR),
    )
    (ours,) = OwnershipVoucher.from_pem(r.json()["pem"])
    assert {_entry_shape(e.raw, ours) for e in ours.entries} == go_shapes
    # The top level too: [101, bstr header, HMac, [+ bstr] chain, [* entries]].
    top = codec.decode(ours.encode())
    assert isinstance(top, list | tuple) and top[0] == 101 and isinstance(top[1], bytes) and len(top[4]) == 2


def test_a_lone_surrogate_in_a_json_body_is_a_422(world: World, database_url: str) -> None:
    """``"\\ud800"`` is valid JSON but not encodable as UTF-8: the validation error that
    echoes it back is still a 422 (escaped), never a 500."""
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    body = b'{"guids": "\\ud800", "owner_key_pem": 5}'
    headers = {**token(app, Role.OPERATOR), "Content-Type": "application/json"}
    r = http.post("/api/v1/vouchers/extend", content=body, headers=headers)
    assert r.status_code == 422
    assert b"\\ud800" in r.content and {e["loc"][-1] for e in r.json()["detail"]} >= {"guids"}
