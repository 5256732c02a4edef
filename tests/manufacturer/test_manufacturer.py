"""The manufacturer service over HTTP: DI with real device machines, the voucher admin API, the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlmodel import select
from typer.testing import CliRunner

from fdo.crypto import (
    PrivateKeyT,
    PublicKey,
    generate_key,
    make_ca,
    make_csr,
    private_key_to_pem,
    public_key_to_pem,
)
from fdo.di.device import DIDevice
from fdo.di.messages import DIAppStart, MfgInfo
from fdo.errors import PeerError
from fdo.messages import ErrorMessage
from fdo.rvinfo import RVProtocol
from fdo.voucher import OwnershipVoucher
from fdo_server.auth import Role, create_token
from fdo_server.db import unit_of_work
from fdo_server.session_model import FdoSession
from manufacturer import client as client_mod
from manufacturer.app import create_app
from manufacturer.settings import ManufacturerSettings, SettingsError, load_material
from manufacturer.tables import HandOff, Voucher
from tests.cli_tables import parse_table
from tests.conftest import KeyPool, migrated
from transport.client import FdoHttpClient

BASE = "http://testserver"


@dataclass
class Mfr:
    http: TestClient
    ca_cert: x509.Certificate
    keys: dict[str, PrivateKeyT]
    viewer: str
    operator: str
    settings: ManufacturerSettings

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def di(self, device_key: PrivateKeyT, serial: str, model: str = "kiosk-v2") -> DIDevice:
        device = DIDevice(key=device_key, serial=serial, model=model)
        FdoHttpClient(BASE, client=self.http).run(device)
        return device

    def pem(self, guid: str) -> OwnershipVoucher:
        response = self.http.get(f"/api/v1/vouchers/{guid}/pem", headers=self.auth(self.viewer))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-pem-file")
        [voucher] = OwnershipVoucher.from_pem(response.text)
        return voucher


def write_key(path: Path, key: PrivateKeyT) -> Path:
    path.write_bytes(private_key_to_pem(key))
    return path


def make_settings(
    tmp_path: Path, database_url: str, keys: dict[str, PrivateKeyT], *, migrate: bool = True
) -> ManufacturerSettings:
    """Settings on ``database_url``, migrated to head first unless ``migrate`` is off."""
    ca_key = keys.get("ca") or generate_key("ec384")
    ca_cert = make_ca(ca_key, "Test device CA", datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
    return ManufacturerSettings(
        database_url=migrated(database_url, "manufacturer") if migrate else database_url,
        keys={k: write_key(tmp_path / f"{k}.key", v) for k, v in keys.items() if k != "ca"},
        device_ca_key=write_key(tmp_path / "ca.key", ca_key),
        device_ca_cert=tmp_path / "ca.pem",
        rendezvous=["http://rv.example:8041", "https://10.0.0.5:8443"],
    )


@pytest.fixture
def mfr(tmp_path: Path, database_url: str, key_pool: KeyPool) -> Mfr:
    keys = {
        "ec256": key_pool.get("ec256", 10),
        "rsa2048": key_pool.get("rsa2048", 10),
        "ca": key_pool.get("ec384", 10),
    }
    settings = make_settings(tmp_path, database_url, keys)
    app = create_app(settings)
    with unit_of_work(app.state.engine) as db:
        viewer = create_token(db, "viewer", Role.VIEWER)
        operator = create_token(db, "alice", Role.OPERATOR)
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    mfg_keys = {k: v for k, v in keys.items() if k != "ca"}
    return Mfr(TestClient(app, base_url=BASE), ca_cert, mfg_keys, viewer, operator, settings)


# ---------------------------------------------------------------------------- DI


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_di_stores_a_verifiable_voucher(mfr: Mfr, key_pool: KeyPool, kind: str) -> None:
    device = mfr.di(key_pool.get(kind, 11), serial=f"SN-{kind}")
    assert device.credential is not None
    guid = str(device.credential.guid)
    voucher = mfr.pem(guid)
    assert str(voucher.guid) == guid and voucher.entries == ()
    voucher.verify(hmac_secret=device.hmac_secret, trusted_device_cas=[mfr.ca_cert], now=datetime.now(UTC))
    assert voucher.header.public_key.same_key(mfr.keys[kind].public_key())
    assert voucher.device_public_key is not None
    assert PublicKey.from_key(voucher.device_public_key).same_key(key_pool.get(kind, 11).public_key())
    protocols = [d.protocol for d in voucher.header.rv_info.for_device()]
    assert protocols == [RVProtocol.HTTP, RVProtocol.HTTPS]

    detail = mfr.http.get(f"/api/v1/vouchers/{guid}", headers=mfr.auth(mfr.viewer)).json()
    assert detail["serial"] == f"SN-{kind}" and detail["model"] == "kiosk-v2"
    assert detail["key_kind"] == kind and detail["num_entries"] == 0 and detail["hand_offs"] == []


def test_di_refuses_a_broken_csr_and_stores_nothing(mfr: Mfr, key_pool: KeyPool) -> None:
    csr = bytearray(make_csr(key_pool.get("ec256", 11), "SN-BAD"))
    csr[-3] ^= 0xFF  # inside the signature
    info = MfgInfo(pk_type=10, pk_enc=1, serial="SN-BAD", device_info="kiosk-v2", csr=bytes(csr))
    body = DIAppStart(mfg_info=info.to_bytes()).encode()
    response = mfr.http.post("/fdo/101/msg/10", content=body, headers={"Content-Type": "application/cbor"})
    assert response.status_code == 500 and response.headers["Message-Type"] == "255"
    assert ErrorMessage.decode(response.content).code in (100, 101)
    with unit_of_work(mfr.http.app.state.engine) as db:  # type: ignore[attr-defined]
        assert db.exec(select(Voucher)).all() == []
        assert db.exec(select(FdoSession)).all() == []


@pytest.mark.parametrize(
    "serial",
    [
        "SN-" + "7" * 252,  # 255: the longest accepted; X.509 names stop at 64 UTF-8 bytes
        "é" * 40,  # 40 characters, 80 bytes
        "\x80" * 65,
    ],
)
def test_di_takes_a_serial_longer_than_a_certificate_name(mfr: Mfr, key_pool: KeyPool, serial: str) -> None:
    csr = make_csr(key_pool.get("ec256", 11), "SN")
    info = MfgInfo(pk_type=10, pk_enc=1, serial=serial, device_info="kiosk-v2", csr=csr)
    body = DIAppStart(mfg_info=info.to_bytes()).encode()
    response = mfr.http.post("/fdo/101/msg/10", content=body, headers={"Content-Type": "application/cbor"})
    assert response.status_code == 200 and response.headers["Message-Type"] == "11", response.content
    # The device client names its own request within the limit too.
    device = mfr.di(key_pool.get("ec256", 12), serial=serial)
    assert device.credential is not None
    detail = mfr.http.get(f"/api/v1/vouchers/{device.credential.guid}", headers=mfr.auth(mfr.viewer)).json()
    assert detail["serial"] == serial
    detail = mfr.http.get(f"/api/v1/vouchers/{device.credential.guid}", headers=mfr.auth(mfr.viewer)).json()
    assert detail["serial"] == serial


@pytest.mark.parametrize("serial", ["SN\x00-1", "S" * 256])
def test_di_refuses_a_serial_that_cannot_be_stored(mfr: Mfr, key_pool: KeyPool, serial: str) -> None:
    csr = make_csr(key_pool.get("ec256", 11), "SN")
    info = MfgInfo(pk_type=10, pk_enc=1, serial=serial, device_info="kiosk-v2", csr=csr)
    body = DIAppStart(mfg_info=info.to_bytes()).encode()
    response = mfr.http.post("/fdo/101/msg/10", content=body, headers={"Content-Type": "application/cbor"})
    assert response.status_code == 500 and response.headers["Message-Type"] == "255"
    assert ErrorMessage.decode(response.content).code == 101
    page = mfr.http.get("/api/v1/vouchers", headers=mfr.auth(mfr.viewer)).json()
    assert page["total"] == 0


def test_di_refuses_a_device_kind_without_key(mfr: Mfr, key_pool: KeyPool) -> None:
    with pytest.raises(PeerError):
        mfr.di(key_pool.get("ec384", 11), serial="SN-384")
    page = mfr.http.get("/api/v1/vouchers", headers=mfr.auth(mfr.viewer)).json()
    assert page["total"] == 0


# ---------------------------------------------------------------------------- search


def test_search_and_paging(mfr: Mfr, key_pool: KeyPool) -> None:
    guids = []
    for i in range(5):
        device = mfr.di(key_pool.get("ec256", 11), serial=f"SN-{i:03d}", model="kiosk" if i < 3 else "sign")
        assert device.credential is not None
        guids.append(str(device.credential.guid))
    auth = mfr.auth(mfr.viewer)

    def get(**params: str | int) -> dict[str, object]:
        response = mfr.http.get("/api/v1/vouchers", params=params, headers=auth)
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    page = get(limit=2)
    assert page["total"] == 5 and len(page["items"]) == 2  # type: ignore[arg-type]
    seen = [item["guid"] for off in (0, 2, 4) for item in get(limit=2, offset=off)["items"]]  # type: ignore[attr-defined]
    assert sorted(seen) == sorted(guids)
    assert get(serial="SN-001")["total"] == 1
    assert get(serial="SN-00*")["total"] == 5
    assert get(model="kiosk")["total"] == 3
    assert get(model="sign", serial="SN-004")["total"] == 1
    assert get(guid=guids[2])["items"][0]["guid"] == guids[2]  # type: ignore[index]
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert get(since=soon)["total"] == 0
    assert get(until=soon)["total"] == 5
    assert mfr.http.get("/api/v1/vouchers", params={"guid": "nope"}, headers=auth).status_code == 400
    assert mfr.http.get(f"/api/v1/vouchers/{MISSING_GUID}", headers=auth).status_code == 404


MISSING_GUID = "00000000-0000-0000-0000-000000000001"


def test_admin_auth(mfr: Mfr) -> None:
    assert mfr.http.get("/api/v1/vouchers").status_code == 401
    assert mfr.http.get("/api/v1/vouchers", headers=mfr.auth("fdo_wrong")).status_code == 401
    body = {"guids": [MISSING_GUID], "owner_key_pem": "x"}
    assert (
        mfr.http.post("/api/v1/vouchers/extend", json=body, headers=mfr.auth(mfr.viewer)).status_code == 403
    )
    assert mfr.http.get("/health").json() == {"status": "ok"}
    assert mfr.http.get("/ready").status_code == 200


# ---------------------------------------------------------------------------- hand-off


def _owner_pem(key: PrivateKeyT) -> str:
    return public_key_to_pem(key.public_key()).decode()


def test_extend_one_and_batch(mfr: Mfr, key_pool: KeyPool) -> None:
    devices = [mfr.di(key_pool.get("ec256", 11), serial=f"SN-{i}") for i in range(3)]
    guids = [str(d.credential.guid) for d in devices if d.credential is not None]
    owner = key_pool.get("ec256", 12)
    auth = mfr.auth(mfr.operator)

    one = mfr.http.post(
        f"/api/v1/vouchers/{guids[0]}/extend", json={"owner_key_pem": _owner_pem(owner)}, headers=auth
    )
    assert one.status_code == 200, one.text
    [voucher] = OwnershipVoucher.from_pem(one.json()["pem"])
    voucher.verify(owner_key=owner.public_key(), hmac_secret=devices[0].hmac_secret, min_entries=1)

    batch = mfr.http.post(
        "/api/v1/vouchers/extend", json={"guids": guids, "owner_key_pem": _owner_pem(owner)}, headers=auth
    )
    assert batch.status_code == 200, batch.text
    extended = OwnershipVoucher.from_pem(batch.json()["pem"])
    assert [str(v.guid) for v in extended] == guids
    for v, d in zip(extended, devices, strict=True):
        v.verify(owner_key=owner.public_key(), hmac_secret=d.hmac_secret, min_entries=1)
        assert len(v.entries) == 1  # the first one was not extended twice
    assert mfr.pem(guids[1]).encode() == extended[1].encode()

    detail = mfr.http.get(f"/api/v1/vouchers/{guids[0]}", headers=auth).json()
    assert detail["num_entries"] == 1 and detail["owner_key_fingerprint"]
    assert [h["by"] for h in detail["hand_offs"]] == ["alice"]
    with unit_of_work(mfr.http.app.state.engine) as db:  # type: ignore[attr-defined]
        assert len(db.exec(select(HandOff)).all()) == 3


def test_extend_refusals(mfr: Mfr, key_pool: KeyPool) -> None:
    device = mfr.di(key_pool.get("ec256", 11), serial="SN-X")
    other = mfr.di(key_pool.get("ec256", 11), serial="SN-Y")
    assert device.credential is not None and other.credential is not None
    guid, guid2 = str(device.credential.guid), str(other.credential.guid)
    auth = mfr.auth(mfr.operator)

    def extend(key: PrivateKeyT, g: str = guid) -> int:
        r = mfr.http.post(
            f"/api/v1/vouchers/{g}/extend", json={"owner_key_pem": _owner_pem(key)}, headers=auth
        )
        return int(r.status_code)

    wrong_kind = mfr.http.post(
        f"/api/v1/vouchers/{guid}/extend",
        json={"owner_key_pem": _owner_pem(key_pool.get("ec384", 12))},
        headers=auth,
    )
    assert wrong_kind.status_code == 400 and "ec256" in wrong_kind.json()["detail"]
    bad = mfr.http.post(f"/api/v1/vouchers/{guid}/extend", json={"owner_key_pem": "garbage"}, headers=auth)
    assert bad.status_code == 400
    assert extend(key_pool.get("ec256", 12)) == 200
    assert extend(key_pool.get("ec256", 12)) == 200  # same owner: idempotent
    assert extend(key_pool.get("ec256", 13)) == 409  # another owner: never replaced
    # A batch with one refused voucher changes nothing.
    batch = mfr.http.post(
        "/api/v1/vouchers/extend",
        json={"guids": [guid2, guid], "owner_key_pem": _owner_pem(key_pool.get("ec256", 13))},
        headers=auth,
    )
    assert batch.status_code == 409
    assert mfr.pem(guid2).entries == ()
    assert extend(key_pool.get("ec256", 12), "00000000-0000-0000-0000-00000000abcd") == 404


# ---------------------------------------------------------------------------- settings and CLI


def test_settings_errors_name_the_setting(tmp_path: Path, database_url: str, key_pool: KeyPool) -> None:
    settings = make_settings(tmp_path, database_url, {"ec256": key_pool.get("ec256", 10)})
    with pytest.raises(SettingsError, match="FDO_MANUFACTURER_DEVICE_CA_CERT"):
        load_material(settings.model_copy(update={"device_ca_cert": tmp_path / "missing.pem"}))
    with pytest.raises(SettingsError, match="FDO_MANUFACTURER_KEYS__EC256"):
        load_material(settings.model_copy(update={"keys": {"ec256": tmp_path / "nope.key"}}))
    with pytest.raises(SettingsError, match="FDO_MANUFACTURER_KEYS__EC384"):
        load_material(settings.model_copy(update={"keys": {"ec384": tmp_path / "ec256.key"}}))
    with pytest.raises(SettingsError, match="RENDEZVOUS"):
        load_material(settings.model_copy(update={"rendezvous": ["ftp://x"]}))


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FDO_MANUFACTURER_KEYS__EC256", str(tmp_path / "a.key"))
    monkeypatch.setenv("FDO_MANUFACTURER_RENDEZVOUS", "http://rv.example:8041, https://10.0.0.5:8443")
    settings = ManufacturerSettings()
    assert settings.keys == {"ec256": tmp_path / "a.key"}
    assert settings.rendezvous == ["http://rv.example:8041", "https://10.0.0.5:8443"]


def test_cli_vouchers(mfr: Mfr, key_pool: KeyPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fdo_cli.main import app

    device = mfr.di(key_pool.get("ec256", 11), serial="SN-CLI")
    assert device.credential is not None
    guid = str(device.credential.guid)
    monkeypatch.setattr(
        client_mod, "open_client", lambda url, token: client_mod.AdminClient(url, token, client=mfr.http)
    )
    runner = CliRunner()
    common = ["--url", BASE, "--token", mfr.operator]
    listed = runner.invoke(app, ["manufacturer", "vouchers", "list", *common, "--serial", "SN-CLI", "--json"])
    assert listed.exit_code == 0, listed.output
    assert guid in listed.stdout
    for index in (13, 14):
        mfr.di(key_pool.get("ec256", index), serial=f"SN-CLI-{index}")
    table = runner.invoke(
        app, ["manufacturer", "vouchers", "list", *common, "--serial", "SN-CLI*", "--limit", "2"]
    )
    rows, footer = parse_table(table.stdout)
    assert list(rows[0]) == ["GUID", "SERIAL", "MODEL", "KEY", "CREATED", "OWNER KEY"]
    assert [r["SERIAL"] for r in rows] == ["SN-CLI-14", "SN-CLI-13"]  # newest first
    assert footer == "2 of 3 vouchers (offset 0; --all or --offset 2 for more)"
    every = runner.invoke(
        app, ["manufacturer", "vouchers", "list", *common, "--serial", "SN-CLI*", "--all", "--limit", "2"]
    )
    rows, footer = parse_table(every.stdout)
    assert [r["SERIAL"] for r in rows] == ["SN-CLI-14", "SN-CLI-13", "SN-CLI"] and footer == "3 of 3 vouchers"
    assert rows[2]["GUID"] == guid and rows[2]["OWNER KEY"] == "-" and rows[2]["KEY"] == "ec256"
    as_yaml = runner.invoke(
        app, ["manufacturer", "vouchers", "list", *common, "--serial", "SN-CLI*", "-o", "yaml", "--all"]
    )
    assert [v["serial"] for v in yaml.safe_load(as_yaml.stdout)["items"]] == [
        "SN-CLI-14",
        "SN-CLI-13",
        "SN-CLI",
    ]
    out = tmp_path / "v.pem"
    exported = runner.invoke(app, ["manufacturer", "vouchers", "export", guid, *common, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert OwnershipVoucher.from_pem(out.read_text())[0].entries == ()
    owner_file = tmp_path / "owner.pem"
    owner_file.write_bytes(public_key_to_pem(key_pool.get("ec256", 12).public_key()))
    ext = runner.invoke(
        app, ["manufacturer", "vouchers", "extend", guid, "--owner-key", str(owner_file), *common]
    )
    assert ext.exit_code == 0, ext.output
    [voucher] = OwnershipVoucher.from_pem(ext.stdout)
    voucher.verify(owner_key=key_pool.get("ec256", 12).public_key(), min_entries=1)
    viewer = runner.invoke(
        app,
        [
            "manufacturer",
            "vouchers",
            "extend",
            guid,
            "--owner-key",
            str(owner_file),
            "--url",
            BASE,
            "--token",
            mfr.viewer,
        ],
    )
    assert viewer.exit_code == 1 and "403" in viewer.output


def test_cli_init_and_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    from fdo_cli.main import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["manufacturer", "init", "--dir", str(tmp_path / "k"), "--rendezvous", "http://rv:8041"]
    )
    assert result.exit_code == 0, result.output
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        monkeypatch.setenv(name, value.strip("'"))
    assert (tmp_path / "k" / "manufacturer-ec256.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("FDO_MANUFACTURER_DATABASE_URL", database_url)
    material = load_material(ManufacturerSettings())
    assert sorted(material.keys) == ["ec256", "ec384", "rsa2048", "rsa3072"]
    token = runner.invoke(app, ["manufacturer", "token", "create", "--name", "ci", "--role", "viewer"])
    assert token.exit_code == 1 and "run `fdo manufacturer db upgrade`" in token.output
    upgrade = runner.invoke(app, ["manufacturer", "db", "upgrade"])
    assert upgrade.exit_code == 0, upgrade.output
    token = runner.invoke(app, ["manufacturer", "token", "create", "--name", "ci", "--role", "viewer"])
    assert token.exit_code == 0, token.output
    assert token.stdout.startswith("fdo_")
