"""The ``fdo keys`` and ``fdo voucher`` commands (typer's CliRunner, files in tmp_path)."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fdo.crypto import (
    PrivateKeyT,
    PublicKey,
    cert_der,
    issue_device_cert,
    key_kind,
    load_private_key,
    load_public_key,
    make_ca,
    private_key_to_pem,
    public_key_to_pem,
)
from fdo.rvinfo import RendezvousDirective, RendezvousInfo
from fdo.types import Guid, Hash, HashType
from fdo.voucher import OVHeader, OwnershipVoucher, cert_chain_hash, vouchers_to_pem
from fdo_cli.main import app
from tests.conftest import NOW, KeyPool

runner = CliRunner()
SECRET = b"\x42" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("kind", ["ec256", "ec384", "rsa2048"])
def test_keys_generate(tmp_path: Path, kind: str) -> None:
    out, pub = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    result = runner.invoke(
        app, ["keys", "generate", "--type", kind, "--out", str(out), "--public-out", str(pub)]
    )
    assert result.exit_code == 0, result.output
    assert mode(out) == 0o600
    text = out.read_bytes()
    assert text.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = load_private_key(text)
    assert key_kind(key) == kind
    assert load_public_key(pub.read_bytes()) == key.public_key()


def test_keys_generate_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "key.pem"
    assert runner.invoke(app, ["keys", "generate", "--type", "ec256", "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    result = runner.invoke(app, ["keys", "generate", "--type", "ec256", "--out", str(out)])
    assert result.exit_code == 1
    assert "--force" in result.output
    assert out.read_bytes() == before
    # --public-out is protected as well, and nothing is written.
    pub = tmp_path / "pub.pem"
    pub.write_text("keep")
    other = tmp_path / "other.pem"
    result = runner.invoke(
        app, ["keys", "generate", "--type", "ec256", "--out", str(other), "--public-out", str(pub)]
    )
    assert result.exit_code == 1 and not other.exists() and pub.read_text() == "keep"
    # --force overwrites and tightens the mode of an existing file.
    out.chmod(0o644)
    result = runner.invoke(app, ["keys", "generate", "--type", "ec384", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != before and mode(out) == 0o600
    assert key_kind(load_private_key(out.read_bytes())) == "ec384"


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_keys_public_prints_or_writes_the_public_key(tmp_path: Path, kind: str) -> None:
    key = tmp_path / "owner.key"
    assert runner.invoke(app, ["keys", "generate", "--type", kind, "--out", str(key)]).exit_code == 0
    want = serialization.load_pem_private_key(key.read_bytes(), None).public_key()
    printed = runner.invoke(app, ["keys", "public", str(key)])
    assert printed.exit_code == 0, printed.output
    got = serialization.load_pem_public_key(printed.stdout.encode())
    assert got.public_numbers() == want.public_numbers()  # type: ignore[union-attr]
    out = tmp_path / "owner.pub"
    written = runner.invoke(app, ["keys", "public", str(key), "--out", str(out)])
    assert written.exit_code == 0 and f"public key written to {out}" in written.output
    assert out.read_text() == printed.stdout
    # From the public key itself too; an existing --out needs --force.
    assert runner.invoke(app, ["keys", "public", str(out)]).stdout == printed.stdout
    again = runner.invoke(app, ["keys", "public", str(key), "--out", str(out)])
    assert again.exit_code == 1 and "exists; use --force" in again.output
    missing = runner.invoke(app, ["keys", "public", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and missing.output.strip().startswith("error: cannot read")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("fdo-bootc ")


def test_keys_generate_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "key.pem"
    assert runner.invoke(app, ["keys", "generate", "--type", "dsa", "--out", str(out)]).exit_code == 2
    result = runner.invoke(
        app, ["keys", "generate", "--type", "ec256", "--out", str(out), "--public-out", str(out)]
    )
    assert result.exit_code == 1 and not out.exists()


# --------------------------------------------------------------------------- vouchers


@dataclasses.dataclass
class Files:
    vouchers: Path
    owner_key: Path
    other_key: Path
    device_ca: Path
    voucher: OwnershipVoucher


def _voucher(pool: KeyPool, guid: Guid, entries: int) -> tuple[OwnershipVoucher, PrivateKeyT, bytes]:
    ca_key = pool.get("ec384", 10)
    ca = make_ca(ca_key, "CLI Test CA", NOW)
    device = pool.get("ec256", 11)
    chain = [cert_der(issue_device_cert(ca_key, ca, device.public_key(), "dev", NOW)), cert_der(ca)]
    mfg = pool.get("ec256", 0)
    rv = RendezvousInfo.of(
        [
            RendezvousDirective.build(ip="192.0.2.7", port=8041, owner_port=8042),
            RendezvousDirective.build(dns="rv.example.com", bypass=True),
        ]
    )
    header = OVHeader.build(
        guid=guid,
        rv_info=rv,
        device_info="cli-device",
        public_key=PublicKey.from_key(mfg.public_key()),
        cert_chain_hash=cert_chain_hash(HashType.SHA256, chain),
    )
    voucher = OwnershipVoucher.create(
        header=header, hmac=header.hmac(SECRET, HashType.HMAC_SHA256), cert_chain=chain
    )
    signer = mfg
    for i in range(1, entries + 1):
        nxt = pool.get("ec256", i)
        voucher = voucher.extend(signer, nxt.public_key(), extra={-70000: b"x"} if i == 1 else None)
        signer = nxt
    return voucher, signer, ca.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def files(tmp_path: Path, key_pool: KeyPool) -> Files:
    v1, owner, ca_pem = _voucher(key_pool, Guid(b"\x11" * 16), 2)
    v2, owner2, _ = _voucher(key_pool, Guid(b"\x22" * 16), 2)
    assert owner is owner2
    (tmp_path / "ov.pem").write_text(vouchers_to_pem([v1, v2]))
    (tmp_path / "owner.pem").write_bytes(private_key_to_pem(owner))
    (tmp_path / "other.pub.pem").write_bytes(public_key_to_pem(key_pool.get("ec256", 0).public_key()))
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    return Files(
        tmp_path / "ov.pem", tmp_path / "owner.pem", tmp_path / "other.pub.pem", tmp_path / "ca.pem", v1
    )


def test_voucher_show_text(files: Files) -> None:
    result = runner.invoke(app, ["voucher", "show", str(files.vouchers)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Voucher 1" in out and "Voucher 2" in out
    assert str(Guid(b"\x11" * 16)) in out and str(Guid(b"\x22" * 16)) in out
    assert "cli-device" in out
    assert "ip_address=192.0.2.7 dev_port=8041 owner_port=8042 protocol=http" in out
    assert "dns=rv.example.com protocol=http bypass" in out
    assert "SECP256R1/X509 ec256" in out
    assert "CN=dev (issuer CN=CLI Test CA" in out
    assert "signed ES256, hashes SHA256" in out
    assert "Owner key:" in out


def test_voucher_show_json(files: Files) -> None:
    result = runner.invoke(app, ["voucher", "show", str(files.vouchers), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["guid"] for d in data] == [str(Guid(b"\x11" * 16)), str(Guid(b"\x22" * 16))]
    first = data[0]
    assert first["prot_ver"] == 101 and first["device_info"] == "cli-device"
    assert first["rendezvous"][0][0] == {"ip_address": "192.0.2.7"}
    assert first["header_hmac_alg"] == "HMAC_SHA256"
    as_yaml = runner.invoke(app, ["voucher", "show", str(files.vouchers), "--output", "yaml"])
    assert as_yaml.exit_code == 0 and yaml.safe_load(as_yaml.output) == data
    assert [c["subject"] for c in first["cert_chain"]] == ["CN=dev", "CN=CLI Test CA"]
    assert len(first["entries"]) == 2
    assert first["entries"][0]["extra"] is not None and first["entries"][1]["extra"] is None
    assert first["owner_key"] == first["entries"][-1]["public_key"]
    sha = Hash.compute(HashType.SHA256, files.voucher.header.public_key.key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )).value.hex()  # fmt: skip
    assert first["manufacturer_key"]["sha256"] == sha


def test_voucher_verify(files: Files) -> None:
    path = str(files.vouchers)
    result = runner.invoke(app, ["voucher", "verify", path])
    assert result.exit_code == 0, result.output
    assert result.output.count(": valid, 2 entries") == 2
    ok = [
        ["--owner-key", str(files.owner_key)],
        ["--hmac-secret", SECRET.hex()],
        ["--device-ca", str(files.device_ca)],
        ["--min-entries", "2"],
        ["--strict"],
    ]
    for extra in ok:
        result = runner.invoke(app, ["voucher", "verify", path, *extra])
        assert result.exit_code == 0, (extra, result.output)


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["--owner-key", "{other}"], "owner_key"),
        (["--hmac-secret", "00" * 32], "header.hmac"),
        (["--min-entries", "3"], "entries.count"),
    ],
)
def test_voucher_verify_fails(files: Files, args: list[str], check: str) -> None:
    args = [a.format(other=files.other_key) for a in args]
    result = runner.invoke(app, ["voucher", "verify", str(files.vouchers), *args])
    assert result.exit_code == 1
    assert f"check {check} failed" in result.output
    result = runner.invoke(app, ["voucher", "verify", str(files.vouchers), *args, "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert [d["valid"] for d in data] == [False, False]
    assert {d["check"] for d in data} == {check}


def test_voucher_verify_tampered_block(tmp_path: Path, files: Files) -> None:
    good = files.voucher
    entry = good.entries[1]
    sig = bytearray(entry.sign1.signature)
    sig[0] ^= 1
    from fdo.cose import CoseSign1
    from fdo.voucher import OVEntry

    bad_entry = OVEntry.from_bytes(
        CoseSign1(entry.sign1.protected, entry.sign1.unprotected, entry.sign1.payload, bytes(sig)).encode()
    )
    bad = dataclasses.replace(good, entries=(good.entries[0], bad_entry))
    path = tmp_path / "mixed.pem"
    path.write_text(vouchers_to_pem([good, bad]))
    result = runner.invoke(app, ["voucher", "verify", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "valid" in lines[0] and "INVALID" not in lines[0]
    assert "INVALID, check entry[1].signature failed" in lines[1]


def test_voucher_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a voucher\n")
    for command in ("show", "verify"):
        result = runner.invoke(app, ["voucher", command, str(garbage)])
        assert result.exit_code == 1
        assert "OWNERSHIP VOUCHER" in result.output
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"\x85\x18\x65\x01")
    result = runner.invoke(app, ["voucher", "verify", str(corrupt)])
    assert result.exit_code == 1 and "check decode failed" in result.output
    result = runner.invoke(app, ["voucher", "verify", str(tmp_path / "missing.pem")])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_voucher_verify_bad_hex(files: Files) -> None:
    result = runner.invoke(app, ["voucher", "verify", str(files.vouchers), "--hmac-secret", "xyz"])
    assert result.exit_code == 2


def test_help_lists_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "keys" in result.output and "voucher" in result.output
