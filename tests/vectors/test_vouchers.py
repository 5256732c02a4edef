"""Vouchers and a device credential made by go-fdo and fido-device-onboard-rs.

Each voucher must parse, re-encode to the identical bytes and verify (reference §4.2,
§4.4, §10); FDO 1.0 vouchers must be refused with a clear message; go-fdo's ``dc.bin``
(fido-device-onboard-rs credential layout) must match ``ov.pem``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fdo.credential import DeviceCredential
from fdo.crypto import load_private_key, spki_der
from fdo.errors import InvalidVoucherError
from fdo.types import HashType
from fdo.voucher import OwnershipVoucher, UnsupportedVoucherVersionError, split_pem
from fdo_cli.main import app


@dataclass(frozen=True)
class Expect:
    path: str
    entries: int
    legacy_chain_hash: bool
    hmac: HashType
    entry_hash: HashType | None
    chain_length: int
    sha1_chain: bool = False


VOUCHERS = [
    Expect("go-fdo/ov.pem", 0, False, HashType.HMAC_SHA384, None, 2),
    Expect("go-fdo/ov_extended.pem", 6, False, HashType.HMAC_SHA256, HashType.SHA256, 3, sha1_chain=True),
    Expect("fdo-rs/v101/voucher1", 1, True, HashType.HMAC_SHA384, HashType.SHA384, 2),
    Expect("fdo-rs/v101/voucher2", 2, False, HashType.HMAC_SHA256, HashType.SHA256, 2),
    Expect("fdo-rs/v101/voucher3", 1, False, HashType.HMAC_SHA256, HashType.SHA256, 2),
    Expect("fdo-rs/testdevice1.ov", 1, True, HashType.HMAC_SHA384, HashType.SHA384, 2),
]
FDO10 = ["fdo-rs/v100/voucher1", "fdo-rs/v100/voucher2"]

runner = CliRunner()


def _key_block(data: bytes) -> bytes:
    """The DER of the PKCS#8 key rs appends under an ``EC PRIVATE KEY`` label."""
    match = re.search(rb"-----BEGIN EC PRIVATE KEY-----(.*?)-----END EC PRIVATE KEY-----", data, re.DOTALL)
    assert match is not None
    return base64.b64decode(b"".join(match.group(1).split()))


@pytest.mark.parametrize("expect", VOUCHERS, ids=lambda e: e.path)
def test_voucher_vector(vectors_dir: Path, expect: Expect) -> None:
    data = (vectors_dir / expect.path).read_bytes()
    blocks = split_pem(data)
    assert len(blocks) == 1
    (voucher,) = OwnershipVoucher.from_pem(data)
    assert voucher.encode() == blocks[0]
    assert [e.raw for e in voucher.entries] == [e.raw for e in OwnershipVoucher.decode(blocks[0]).entries]
    assert len(voucher.entries) == expect.entries
    assert voucher.hmac.alg == expect.hmac
    assert voucher.entry_hash_alg == expect.entry_hash
    assert voucher.cert_chain is not None and len(voucher.cert_chain) == expect.chain_length
    assert all(e.sign1.tagged for e in voucher.entries)

    report = voucher.verify(owner_key=voucher.owner_public_key)
    assert report.legacy_chain_hash == expect.legacy_chain_hash
    assert any("legacy" in n for n in report.notes) == expect.legacy_chain_hash
    assert any("SHA-1" in n for n in report.notes) == expect.sha1_chain
    assert "cert_chain" in report.checks and "header.cert_chain_hash" in report.checks

    result = runner.invoke(app, ["voucher", "verify", str(vectors_dir / expect.path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    result = runner.invoke(app, ["voucher", "show", str(vectors_dir / expect.path)])
    assert result.exit_code == 0, result.output
    assert str(voucher.guid) in result.output


def test_legacy_and_sha1_refused_when_strict(vectors_dir: Path) -> None:
    (v1,) = OwnershipVoucher.from_pem((vectors_dir / "fdo-rs/v101/voucher1").read_bytes())
    with pytest.raises(InvalidVoucherError) as info:
        v1.verify(allow_legacy_chain_hash=False)
    assert info.value.check == "header.cert_chain_hash"
    result = runner.invoke(
        app, ["voucher", "verify", "--strict", str(vectors_dir / "go-fdo/ov_extended.pem")]
    )
    assert result.exit_code == 1
    assert "cert_chain" in result.output


def test_rs_voucher3_owner_key(vectors_dir: Path) -> None:
    """rs appends the owner's private key to voucher3: it is the final owner key."""
    path = vectors_dir / "fdo-rs/v101/voucher3"
    data = path.read_bytes()
    key = load_private_key(_key_block(data))
    (voucher,) = OwnershipVoucher.from_pem(data)
    voucher.verify(owner_key=key.public_key())
    result = runner.invoke(app, ["voucher", "verify", str(path), "--owner-key", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", FDO10)
def test_fdo10_refused(vectors_dir: Path, path: str) -> None:
    with pytest.raises(UnsupportedVoucherVersionError, match="FDO 1.0 voucher.*not supported"):
        OwnershipVoucher.from_pem((vectors_dir / path).read_bytes())
    result = runner.invoke(app, ["voucher", "verify", str(vectors_dir / path)])
    assert result.exit_code == 1
    assert "FDO 1.0 voucher" in result.output and "not supported" in result.output
    assert "prot_ver" in result.output
    result = runner.invoke(app, ["voucher", "show", str(vectors_dir / path)])
    assert result.exit_code == 1


def test_go_device_credential(vectors_dir: Path) -> None:
    """go-fdo's dc.bin (rs FileDeviceCredential layout) belongs to ov.pem; mfg_key.pem signs it."""
    cred = DeviceCredential.decode_fdo_rs((vectors_dir / "go-fdo/dc.bin").read_bytes())
    (voucher,) = OwnershipVoucher.from_pem((vectors_dir / "go-fdo/ov.pem").read_bytes())
    assert cred.active and cred.prot_ver == 101
    assert cred.guid == voucher.guid
    assert cred.device_info == voucher.header.device_info == "go.fdo.example"
    assert cred.rv_info == voucher.header.rv_info
    assert len(cred.hmac_secret) == 32
    report = voucher.verify(hmac_secret=cred.hmac_secret, manufacturer_key_hash=cred.pubkey_hash)
    assert "header.hmac" in report.checks and "header.pubkey_hash" in report.checks
    assert cred.pubkey_hash == voucher.header.pubkey_hash(cred.pubkey_hash.alg)
    # The credential's key is the device key certified by the voucher's chain.
    device_key = voucher.device_public_key
    assert device_key is not None
    assert spki_der(cred.private_key.public_key()) == spki_der(device_key)
    mfg_key = load_private_key((vectors_dir / "go-fdo/mfg_key.pem").read_bytes())
    assert voucher.header.public_key.same_key(mfg_key.public_key())
    # Our own credential format round-trips.
    again = DeviceCredential.decode(cred.encode())
    assert again == cred and again.encode() == cred.encode()
    # The HMAC secret checks on the command line too.
    ov = str(vectors_dir / "go-fdo/ov.pem")
    result = runner.invoke(app, ["voucher", "verify", ov, "--hmac-secret", cred.hmac_secret.hex()])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["voucher", "verify", ov, "--hmac-secret", "00" * 32])
    assert result.exit_code == 1 and "header.hmac" in result.output
    mfg = str(vectors_dir / "go-fdo/mfg_key.pem")
    result = runner.invoke(app, ["voucher", "verify", ov, "--owner-key", mfg])
    assert result.exit_code == 0, result.output
