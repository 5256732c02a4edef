"""The credential file: our format round trip, atomic 0600 writes, fdo-rs/go layout, errors."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from device.credfile import (
    CredentialFileError,
    CredentialFormat,
    read_credential,
    read_credential_with_format,
    write_credential,
)
from fdo import codec
from fdo.credential import DeviceCredential
from fdo.rvinfo import RendezvousDirective, RendezvousInfo, RVProtocol
from fdo.types import Guid, Hash, HashType
from tests.conftest import KeyPool


def make_credential(key_pool: KeyPool) -> DeviceCredential:
    rv = RendezvousInfo.of([RendezvousDirective.build(dns="rv.example", port=8041, protocol=RVProtocol.HTTP)])
    return DeviceCredential(
        active=True,
        prot_ver=101,
        hmac_secret=b"\x11" * 32,
        device_info="kiosk-v2",
        guid=Guid(b"\x01" * 16),
        rv_info=rv,
        pubkey_hash=Hash(HashType.SHA256, b"\x22" * 32),
        private_key=key_pool.get("ec256", 5),
    )


def test_round_trip_and_mode(tmp_path: Path, key_pool: KeyPool) -> None:
    cred = make_credential(key_pool)
    path = tmp_path / "cred.bin"
    write_credential(path, cred)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, fmt = read_credential_with_format(path)
    assert fmt == CredentialFormat.FDO_BOOTC
    assert again == cred
    assert path.read_bytes() == cred.encode()


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path: Path, key_pool: KeyPool) -> None:
    cred = make_credential(key_pool)
    path = tmp_path / "cred.bin"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_credential(path, cred)
    assert read_credential(path) == cred
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cred.bin"]


def test_write_failure_is_clear(tmp_path: Path, key_pool: KeyPool) -> None:
    with pytest.raises(CredentialFileError, match="cannot write"):
        write_credential(tmp_path / "missing" / "cred.bin", make_credential(key_pool))


@pytest.mark.parametrize("data", [b"", b"\xff\xff", b"\x83\x01\x02\x03", b"garbage that is not cbor"])
def test_bad_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "cred.bin"
    path.write_bytes(data)
    with pytest.raises(CredentialFileError) as info:
        read_credential(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialFileError, match="cannot read"):
        read_credential(tmp_path / "nope")


def test_go_fdo_dc_bin(vectors_dir: Path, tmp_path: Path) -> None:
    cred, fmt = read_credential_with_format(vectors_dir / "go-fdo/dc.bin")
    assert fmt == CredentialFormat.FDO_RS
    assert str(cred.guid) == "66b2146f-fec5-3ca6-ad01-7625990572ce"
    assert cred.device_info == "go.fdo.example"
    assert cred.serial is None  # not in that layout: onboard --serial supplies it
    urls = [u for d in cred.rv_info.for_device() for u in d.urls()]
    assert urls == ["http://192.168.122.1:8082", "http://fdo.example.com:8082"]
    # Rewritten in our format, it reads back the same.
    out = tmp_path / "dc.ours"
    write_credential(out, cred)
    again, fmt2 = read_credential_with_format(out)
    assert fmt2 == CredentialFormat.FDO_BOOTC and again == cred


def test_serial_is_kept_as_a_ninth_element(tmp_path: Path, key_pool: KeyPool) -> None:
    cred = dataclasses.replace(make_credential(key_pool), serial="SN-4711")
    path = tmp_path / "cred.bin"
    write_credential(path, cred)
    items = codec.decode(path.read_bytes())
    assert isinstance(items, list) and len(items) == 9 and items[8] == "SN-4711"
    again, fmt = read_credential_with_format(path)
    assert fmt == CredentialFormat.FDO_BOOTC and again.serial == "SN-4711" and again == cred


def test_file_written_before_the_serial_was_kept_still_reads(tmp_path: Path, key_pool: KeyPool) -> None:
    cred = make_credential(key_pool)
    assert cred.serial is None
    # The 8-element layout earlier releases wrote, built by hand (not by encode()).
    old = codec.encode(
        [
            True,
            101,
            cred.hmac_secret,
            cred.device_info,
            cred.guid.to_cbor_obj(),
            cred.rv_info.to_cbor_obj(),
            cred.pubkey_hash.to_cbor_obj(),
            codec.decode(cred.encode())[7],
        ]
    )
    assert cred.encode() == old  # no serial: byte-identical to the old layout
    path = tmp_path / "old.bin"
    path.write_bytes(old)
    again, fmt = read_credential_with_format(path)
    assert fmt == CredentialFormat.FDO_BOOTC and again.serial is None and again.guid == cred.guid


@pytest.mark.parametrize("serial", [7, b"SN", ["SN"]])
def test_serial_of_the_wrong_type_is_refused(tmp_path: Path, key_pool: KeyPool, serial: object) -> None:
    items = list(codec.decode(make_credential(key_pool).encode()))
    path = tmp_path / "cred.bin"
    path.write_bytes(codec.encode([*items, serial]))
    with pytest.raises(CredentialFileError, match="device serial"):
        read_credential(path)
