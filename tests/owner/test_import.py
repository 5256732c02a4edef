"""Voucher import through the admin API: several per file, duplicates, wrong owner, garbage; roles."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fdo.crypto import PublicKey
from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from owner.app import create_app
from owner.settings import OwnerSettings, SettingsError, load_config
from tests.conftest import KeyPool
from tests.owner.helpers import BASE, World, make_world, token


@pytest.fixture
def world(key_pool: KeyPool, tmp_path: Path) -> World:
    return make_world(key_pool, tmp_path)


def test_import_several_then_duplicate_and_list(world: World, database_url: str) -> None:
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    op = token(app, Role.OPERATOR)
    vouchers = [world.device()[1], world.device()[1]]
    r = http.post("/api/v1/vouchers", content=vouchers_to_pem(vouchers), headers=op)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["imported", "imported"]
    assert [x["guid"] for x in results] == [str(v.guid) for v in vouchers]

    r = http.post("/api/v1/vouchers", content=vouchers_to_pem(vouchers[:1]), headers=op)
    assert r.status_code == 422
    (result,) = r.json()["results"]
    assert result["status"] == "refused" and result["reason"].startswith("duplicate")

    viewer = token(app, Role.VIEWER)
    listing = http.get("/api/v1/vouchers", headers=viewer).json()
    assert listing["total"] == 2
    item = listing["items"][0]
    assert item["state"] == "active" and item["device_info"] == "kiosk-v2"
    assert item["to0"]["registered_until"] is None and item["to0"]["attempts"] == 0
    one = http.get(f"/api/v1/vouchers/{vouchers[1].guid}", headers=viewer)
    assert one.status_code == 200 and one.json()["guid"] == str(vouchers[1].guid)
    assert (
        http.get("/api/v1/vouchers/00000000-0000-0000-0000-000000000000", headers=viewer).status_code == 404
    )


def test_import_refusals(world: World, database_url: str) -> None:
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    op = token(app, Role.OPERATOR)
    good = world.device()[1]
    _, unextended = world.device_unextended()
    stranger = unextended.extend(
        world.mfr.keys["ec256"], PublicKey.from_key(world.pool.get("ec256", 9).public_key())
    )
    r = http.post("/api/v1/vouchers", content=vouchers_to_pem([good, stranger, unextended]), headers=op)
    assert r.status_code == 422
    results = r.json()["results"]
    assert results[0]["status"] == "imported"
    assert results[1]["status"] == "refused" and results[1]["reason"].startswith("owner key mismatch")
    assert results[2]["status"] == "refused" and "entries.count" in results[2]["reason"]

    r = http.post("/api/v1/vouchers", content=b"hello, not a voucher", headers=op)
    assert r.status_code == 422
    (garbage,) = r.json()["results"]
    assert garbage["status"] == "refused" and garbage["reason"].startswith("unreadable")

    listing = http.get("/api/v1/vouchers", headers=op).json()
    assert listing["total"] == 1


def test_admin_auth(world: World, database_url: str) -> None:
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    assert http.get("/api/v1/vouchers").status_code == 401
    assert http.get("/api/v1/vouchers", headers={"Authorization": "Bearer fdo_nope"}).status_code == 401
    viewer = token(app, Role.VIEWER)
    assert http.get("/api/v1/vouchers", headers=viewer).status_code == 200
    for path in ("/api/v1/devices", "/api/v1/onboardings"):
        assert http.get(path, headers=viewer).status_code == 200
        assert http.get(path).status_code == 401
    assert http.post("/api/v1/vouchers", content=b"x", headers=viewer).status_code == 403
    assert http.get("/health").json() == {"status": "ok"}


def test_settings_errors_name_the_setting(world: World, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="FDO_OWNER_KEYS"):
        load_config(OwnerSettings(keys={}))
    with pytest.raises(SettingsError, match="FDO_OWNER_KEYS.*not ec384"):
        load_config(OwnerSettings(keys={"ec384": world.key_files["ec256"]}))
    with pytest.raises(SettingsError, match="FDO_OWNER_TO2_URLS"):
        load_config(OwnerSettings(keys=world.key_files, to2_urls=["ftp://x"]))
    # An owner address without a host (a to1d entry [null, null, 8043, 3]) cannot be configured.
    for url in ("http://:8043", "https://", "http://[]:8043"):
        with pytest.raises(SettingsError, match="FDO_OWNER_TO2_URLS.*with a host"):
            load_config(OwnerSettings(keys=world.key_files, to2_urls=[url]))
    with pytest.raises(SettingsError, match="FDO_OWNER_SERVICE_INFO"):
        load_config(OwnerSettings(keys=world.key_files, service_info=tmp_path / "missing.toml"))
    config = load_config(
        OwnerSettings(keys=world.key_files, to2_urls=["https://10.0.0.1", "http://o.example:8043"])
    )
    assert config.to2_addr is not None
    first, second = config.to2_addr.entries
    assert (first.ip, first.dns, first.port) == (bytes([10, 0, 0, 1]), None, 443)
    assert (second.dns, second.port) == ("o.example", 8043)


def test_lifespan_starts_and_stops_to0_thread(world: World, database_url: str) -> None:
    app = create_app(world.settings(database_url, to0_enabled=True))
    with TestClient(app, base_url=BASE) as http:
        assert http.get("/health").status_code == 200


def test_imports_are_audited(world: World, database_url: str) -> None:
    app = create_app(world.settings(database_url))
    http = TestClient(app, base_url=BASE)
    headers = token(app, Role.OPERATOR)
    _, voucher = world.device()
    pem = vouchers_to_pem([voucher])
    assert http.post("/api/v1/vouchers", content=pem, headers=headers).status_code == 200
    assert http.post("/api/v1/vouchers", content=pem, headers=headers).status_code == 422
    entries = http.get("/api/v1/audit", headers=headers).json()["items"]
    imports = [e for e in entries if e["action"] == "voucher.import"]
    assert [e["target"] for e in imports] == [str(voucher.guid)]  # the refused duplicate changed nothing
    assert imports[0]["who"] == "test-operator"


def test_a_key_file_is_read_again_but_checked_once(world: World, tmp_path: Path) -> None:
    """``fdo owner serve`` loads the settings twice (to check them, then to serve): the key
    in a file is checked once per process (an RSA key's check takes tens of ms), while a
    file that changed, or went bad, is read as it is now."""
    first = load_config(OwnerSettings(keys=world.key_files)).keys
    again = load_config(OwnerSettings(keys=world.key_files)).keys
    assert all(again[kind] is first[kind] for kind in first)
    path = tmp_path / "owner.pem"
    path.write_bytes(world.key_files["ec384"].read_bytes())
    assert load_config(OwnerSettings(keys={"ec384": path})).keys["ec384"] is first["ec384"]
    path.write_bytes(b"not a key")
    with pytest.raises(SettingsError, match=r"holds no supported private key \(cannot read private key: "):
        load_config(OwnerSettings(keys={"ec384": path}))
