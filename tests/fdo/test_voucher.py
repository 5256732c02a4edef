"""Ownership vouchers: create, extend, verify, tamper, PEM, replacement (fdo.voucher)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdo import codec
from fdo.cose import CoseSign1
from fdo.crypto import (
    PkEnc,
    PkType,
    PrivateKeyT,
    PublicKey,
    cert_der,
    hash_alg_for,
    issue_device_cert,
    make_ca,
)
from fdo.errors import FdoError, FdoUsageError, InvalidVoucherError, MessageBodyError, UnsupportedError
from fdo.rvinfo import RendezvousDirective, RendezvousInfo
from fdo.types import Guid, Hash, HashType
from fdo.voucher import (
    OVEntry,
    OVEntryPayload,
    OVHeader,
    OwnershipVoucher,
    UnsupportedVoucherVersionError,
    cert_chain_hash,
    device_hmac_alg,
    legacy_cert_chain_hash,
    replacement_header,
    replacement_voucher,
    split_pem,
    verify_entry,
    vouchers_to_pem,
)
from tests.conftest import NOW, KeyPool

SECRET = bytes(range(32))
GUID = Guid(bytes.fromhex("5a1e0f0c3b2a49d8a1c2d3e4f5061728"))
RV = RendezvousInfo.of([RendezvousDirective.build(dns="rv.example.com", port=8080, owner_port=8081)])
KINDS = ["ec256", "ec384", "rsa2048", "rsa3072"]

# Key-pool indices: owners use 0..3 of their kind; these are the device PKI.
CA_INDEX, DEVICE_INDEX, OTHER_INDEX = 10, 11, 12


@dataclass
class Built:
    voucher: OwnershipVoucher
    signers: list[PrivateKeyT]  # signers[i] signed entry i; signers[-1] is the current owner
    ca: x509.Certificate
    device_key: PrivateKeyT


def device_pki(
    pool: KeyPool, device_kind: str = "ec256"
) -> tuple[x509.Certificate, PrivateKeyT, list[bytes]]:
    ca_key = pool.get("ec384", CA_INDEX)
    ca = make_ca(ca_key, "Test Device CA", NOW)
    device_key = pool.get(device_kind, DEVICE_INDEX)
    leaf = issue_device_cert(ca_key, ca, device_key.public_key(), "test-device", NOW)
    return ca, device_key, [cert_der(leaf), cert_der(ca)]


def build(
    pool: KeyPool,
    kind: str = "ec256",
    entries: int = 3,
    *,
    device_kind: str = "ec256",
    mfg_public: PublicKey | None = None,
    legacy: bool = False,
    guid: Guid = GUID,
    device_info: str = "test-device",
) -> Built:
    ca, device_key, chain = device_pki(pool, device_kind)
    mfg = pool.get(kind, 0)
    mfg_pub = mfg_public or PublicKey.from_key(mfg.public_key())
    alg = hash_alg_for(device_key.public_key(), mfg.public_key())
    chain_hash = (legacy_cert_chain_hash if legacy else cert_chain_hash)(alg, chain)
    header = OVHeader.build(
        guid=guid,
        rv_info=RV,
        device_info=device_info,
        public_key=mfg_pub,
        cert_chain_hash=chain_hash,
    )
    hmac = header.hmac(SECRET, device_hmac_alg(device_key.public_key(), mfg_pub))
    voucher = OwnershipVoucher.create(header=header, hmac=hmac, cert_chain=chain)
    signers = [mfg]
    for i in range(1, entries + 1):
        nxt = pool.get(kind, i)
        voucher = voucher.extend(signers[-1], nxt.public_key())
        signers.append(nxt)
    return Built(voucher, signers, ca, device_key)


def received(voucher: OwnershipVoucher) -> OwnershipVoucher:
    """The voucher as a peer would receive it."""
    return OwnershipVoucher.decode(voucher.encode())


def flip(data: bytes, index: int = -1) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def expect_check(voucher: OwnershipVoucher, check: str, **kwargs: object) -> InvalidVoucherError:
    with pytest.raises(InvalidVoucherError) as info:
        voucher.verify(**kwargs)  # type: ignore[arg-type]
    assert info.value.check == check, info.value.message
    return info.value


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entries", [1, 2, 3])
def test_create_extend_verify(key_pool: KeyPool, kind: str, entries: int) -> None:
    built = build(key_pool, kind, entries)
    voucher = received(built.voucher)
    assert voucher == built.voucher
    assert voucher.encode() == built.voucher.encode()
    assert len(voucher.entries) == entries
    owner = built.signers[-1].public_key()
    report = voucher.verify(
        hmac_secret=SECRET,
        manufacturer_key_hash=voucher.header.pubkey_hash(HashType.SHA384),
        owner_key=owner,
        min_entries=entries,
        trusted_device_cas=[built.ca],
        trusted_manufacturer_keys=[built.signers[0].public_key()],
        now=NOW,
    )
    assert not report.legacy_chain_hash
    for check in ("header.hmac", "header.pubkey_hash", "header.cert_chain_hash", "cert_chain", "entries"):
        assert check in report.checks
    assert report.checks[-1] == "owner_key"
    assert voucher.owner_public_key.same_key(owner)
    assert voucher.guid == GUID
    # Every key in the voucher has OVPubKey's type.
    for entry in voucher.entries:
        assert entry.payload.public_key.pk_type == voucher.header.public_key.pk_type
        assert entry.sign1.tagged and entry.raw[0] == 0xD2
        assert entry.payload.extra is None


def test_zero_entries(key_pool: KeyPool) -> None:
    built = build(key_pool, entries=0)
    voucher = received(built.voucher)
    report = voucher.verify(hmac_secret=SECRET, owner_key=built.signers[0].public_key())
    assert "entries" not in report.checks
    assert voucher.owner_public_key == voucher.header.public_key
    expect_check(voucher, "entries.count", min_entries=1)


@pytest.mark.parametrize(
    ("kind", "device_kind", "alg"),
    [
        ("ec256", "ec256", HashType.SHA256),
        ("ec384", "ec256", HashType.SHA256),
        ("ec384", "ec384", HashType.SHA384),
        ("rsa3072", "ec384", HashType.SHA384),
        ("rsa2048", "ec384", HashType.SHA256),
    ],
)
def test_hash_algorithm_selection(key_pool: KeyPool, kind: str, device_kind: str, alg: HashType) -> None:
    built = build(key_pool, kind, 2, device_kind=device_kind)
    voucher = built.voucher
    assert voucher.hmac.alg == alg.as_hmac
    assert voucher.header.cert_chain_hash is not None and voucher.header.cert_chain_hash.alg == alg
    assert voucher.entry_hash_alg == alg
    assert voucher.hello_hash_alg == alg
    for entry in voucher.entries:
        assert entry.payload.prev_hash.alg == entry.payload.hdr_hash.alg == alg
    assert voucher.device_public_key is not None
    assert device_hmac_alg(voucher.device_public_key, voucher.header.public_key) == alg.as_hmac


def test_extra(key_pool: KeyPool) -> None:
    built = build(key_pool, entries=1)
    extended = built.voucher.extend(
        built.signers[-1], key_pool.get("ec256", 2).public_key(), extra={-70000: b"supply chain", 5: b""}
    )
    voucher = received(extended)
    assert voucher.entries[-1].payload.extra_map() == {-70000: b"supply chain", 5: b""}
    assert voucher.entries[0].payload.extra_map() == {}
    voucher.verify(owner_key=key_pool.get("ec256", 2).public_key())
    with pytest.raises(FdoUsageError):
        built.voucher.extend(built.signers[-1], key_pool.get("ec256", 2).public_key(), extra={1: "text"})  # type: ignore[dict-item]


def test_go_style_empty_extra_is_read(key_pool: KeyPool) -> None:
    """go writes OVEExtra as h'A0' (an empty map) when it has none."""
    built = build(key_pool, entries=0)
    voucher = built.voucher
    mfg = built.signers[0]
    owner = key_pool.get("ec256", 1)
    alg = voucher.next_entry_hash_alg(mfg.public_key())
    payload = OVEntryPayload(
        prev_hash=Hash.compute(alg, voucher.header.raw + voucher.hmac_bytes),
        hdr_hash=Hash.compute(alg, voucher.header.header_info),
        extra=b"\xa0",
        public_key=PublicKey.from_key(owner.public_key()),
    )
    entry = OVEntry.sign(mfg, payload)
    extended = received(dataclasses.replace(voucher, entries=(entry,)))
    assert extended.entries[0].payload.extra == b"\xa0"
    assert extended.entries[0].payload.extra_map() == {}
    extended.verify(owner_key=owner.public_key(), hmac_secret=SECRET)


def test_rsa_pss_voucher(key_pool: KeyPool) -> None:
    mfg = key_pool.get("rsa2048", 0)
    built = build(
        key_pool, "rsa2048", 2, mfg_public=PublicKey.from_key(mfg.public_key(), pk_type=PkType.RSAPSS)
    )
    voucher = received(built.voucher)
    assert all(e.sign1.alg.name == "PS256" for e in voucher.entries)
    assert all(e.payload.public_key.pk_type == PkType.RSAPSS for e in voucher.entries)
    voucher.verify(owner_key=built.signers[-1].public_key(), hmac_secret=SECRET)


def test_cose_key_voucher(key_pool: KeyPool) -> None:
    mfg = key_pool.get("ec384", 0)
    built = build(key_pool, "ec384", 2, mfg_public=PublicKey.from_key(mfg.public_key(), enc=PkEnc.COSEKEY))
    voucher = received(built.voucher)
    assert all(e.payload.public_key.pk_enc == PkEnc.COSEKEY for e in voucher.entries)
    voucher.verify(owner_key=built.signers[-1].public_key(), hmac_secret=SECRET)


def test_extending_keeps_older_bytes(key_pool: KeyPool) -> None:
    built = build(key_pool, entries=2)
    data = built.voucher.encode()
    voucher = OwnershipVoucher.decode(data)
    extended = voucher.extend(built.signers[-1], key_pool.get("ec256", 3).public_key())
    assert [e.raw for e in extended.entries[:2]] == [e.raw for e in voucher.entries]
    # The new encoding is the old one with one more raw entry appended.
    new = extended.encode()
    old_entries = b"".join(e.raw for e in voucher.entries)
    assert old_entries in new
    assert new.startswith(data[: data.index(old_entries) - 1])
    received(extended).verify(owner_key=key_pool.get("ec256", 3).public_key())


# --------------------------------------------------------------------------- extension refused


def test_extend_refuses_mismatched_next_key(key_pool: KeyPool) -> None:
    built = build(key_pool, "ec256", 1)
    for other in (key_pool.get("ec384", 1), key_pool.get("rsa2048", 1)):
        with pytest.raises(FdoUsageError, match="type and size"):
            built.voucher.extend(built.signers[-1], other.public_key())
    # Same algorithm family, other size.
    rsa = build(key_pool, "rsa2048", 0)
    with pytest.raises(FdoUsageError):
        rsa.voucher.extend(rsa.signers[-1], key_pool.get("rsa3072", 1).public_key())
    # A PublicKey with another pkType for the same key size.
    with pytest.raises(FdoUsageError):
        rsa.voucher.extend(
            rsa.signers[-1],
            PublicKey.from_key(key_pool.get("rsa2048", 1).public_key(), pk_type=PkType.RSAPKCS),
        )


def test_extend_refuses_wrong_signer(key_pool: KeyPool) -> None:
    built = build(key_pool, "ec256", 2)
    with pytest.raises(FdoUsageError, match="current owner"):
        built.voucher.extend(built.signers[0], key_pool.get("ec256", 3).public_key())
    with pytest.raises(FdoUsageError):
        built.voucher.extend(key_pool.get("ec384", 0), key_pool.get("ec256", 3).public_key())


# --------------------------------------------------------------------------- tampering


@pytest.fixture(scope="module")
def three(key_pool: KeyPool) -> Built:
    return build(key_pool, "ec256", 3)


def test_tampered_hmac(three: Built) -> None:
    v = three.voucher
    bad = received(dataclasses.replace(v, hmac=Hash(v.hmac.alg, flip(v.hmac.value))))
    expect_check(bad, "header.hmac", hmac_secret=SECRET)
    # Without the secret, entry 0's hash over header || HMac still catches it.
    expect_check(bad, "entry[0].prev_hash")
    expect_check(received(v), "header.hmac", hmac_secret=flip(SECRET))


@pytest.mark.parametrize("field_bytes", [GUID.value, b"test-device"])
def test_tampered_header(three: Built, field_bytes: bytes) -> None:
    data = three.voucher.encode()
    index = data.index(field_bytes)
    bad = OwnershipVoucher.decode(flip(data, index))
    expect_check(bad, "header.hmac", hmac_secret=SECRET)
    expect_check(bad, "entry[0].prev_hash")


def test_tampered_cert_chain(three: Built) -> None:
    data = three.voucher.encode()
    assert three.voucher.cert_chain is not None
    for der in three.voucher.cert_chain:
        index = data.index(der) + len(der) - 1  # inside the signature: still parses
        bad = OwnershipVoucher.decode(flip(data, index))
        expect_check(bad, "header.cert_chain_hash")


def test_cert_chain_not_signed(key_pool: KeyPool, three: Built) -> None:
    """The chain hash matches but the leaf was not issued by the chain's CA."""
    other_key = key_pool.get("ec384", OTHER_INDEX)
    other_ca = make_ca(other_key, "Other CA", NOW)
    assert three.voucher.cert_chain is not None
    leaf = issue_device_cert(other_key, other_ca, three.device_key.public_key(), "dev", NOW)
    chain = [cert_der(leaf), three.voucher.cert_chain[1]]
    mfg = three.signers[0]
    header = OVHeader.build(
        guid=GUID,
        rv_info=RV,
        device_info="x",
        public_key=PublicKey.from_key(mfg.public_key()),
        cert_chain_hash=cert_chain_hash(HashType.SHA256, chain),
    )
    voucher = OwnershipVoucher.create(
        header=header, hmac=header.hmac(SECRET, HashType.HMAC_SHA256), cert_chain=chain
    )
    expect_check(received(voucher), "cert_chain")
    # And a sound chain that does not end in the trusted CA.
    expect_check(received(three.voucher), "cert_chain", trusted_device_cas=[other_ca])
    three.voucher.verify(trusted_device_cas=[three.ca])


def test_cert_chain_and_hash_both_or_neither(three: Built) -> None:
    v = three.voucher
    expect_check(received(dataclasses.replace(v, cert_chain=None)), "header.cert_chain_hash")


def _resign(built: Built, index: int, mutate: Callable[[OVEntryPayload], OVEntryPayload]) -> OwnershipVoucher:
    v = built.voucher
    payload = mutate(v.entries[index].payload)
    entry = OVEntry.sign(built.signers[index], payload)
    entries = (*v.entries[:index], entry, *v.entries[index + 1 :])
    return received(dataclasses.replace(v, entries=entries))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tampered_entry_signature(three: Built, index: int) -> None:
    v = three.voucher
    old = v.entries[index].sign1
    sign1 = CoseSign1(old.protected, old.unprotected, old.payload, flip(old.signature))
    entries = (*v.entries[:index], OVEntry.from_bytes(sign1.encode()), *v.entries[index + 1 :])
    expect_check(received(dataclasses.replace(v, entries=entries)), f"entry[{index}].signature")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_entry_signed_by_wrong_key(key_pool: KeyPool, three: Built, index: int) -> None:
    v = three.voucher
    entry = OVEntry.sign(key_pool.get("ec256", OTHER_INDEX), v.entries[index].payload)
    entries = (*v.entries[:index], entry, *v.entries[index + 1 :])
    expect_check(received(dataclasses.replace(v, entries=entries)), f"entry[{index}].signature")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tampered_prev_hash(three: Built, index: int) -> None:
    bad = _resign(
        three,
        index,
        lambda p: dataclasses.replace(p, prev_hash=Hash(p.prev_hash.alg, flip(p.prev_hash.value))),
    )
    expect_check(bad, f"entry[{index}].prev_hash")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tampered_hdr_hash(three: Built, index: int) -> None:
    bad = _resign(
        three, index, lambda p: dataclasses.replace(p, hdr_hash=Hash(p.hdr_hash.alg, flip(p.hdr_hash.value)))
    )
    expect_check(bad, f"entry[{index}].hdr_hash")


def test_mixed_hash_algorithms(three: Built) -> None:
    v = three.voucher

    def sha384(p: OVEntryPayload) -> OVEntryPayload:
        return dataclasses.replace(
            p,
            prev_hash=Hash.compute(HashType.SHA384, v.entries[0].raw),
            hdr_hash=Hash.compute(HashType.SHA384, v.header.header_info),
        )

    expect_check(_resign(three, 1, sha384), "entries.hash_alg")


def test_entry_key_of_other_kind(key_pool: KeyPool, three: Built) -> None:
    other = PublicKey.from_key(key_pool.get("ec384", 1).public_key())
    bad = _resign(three, 2, lambda p: dataclasses.replace(p, public_key=other))
    expect_check(bad, "entry[2].public_key")


def test_wrong_owner_key(key_pool: KeyPool, three: Built) -> None:
    v = received(three.voucher)
    expect_check(v, "owner_key", owner_key=three.signers[0].public_key())
    expect_check(v, "owner_key", owner_key=key_pool.get("ec256", OTHER_INDEX).public_key())
    expect_check(v, "owner_key", owner_key=PublicKey.from_key(three.signers[2].public_key()))
    v.verify(owner_key=PublicKey.from_key(three.signers[3].public_key()))


def test_manufacturer_checks(key_pool: KeyPool, three: Built) -> None:
    v = received(three.voucher)
    expect_check(v, "header.pubkey_hash", manufacturer_key_hash=Hash.compute(HashType.SHA256, b"other"))
    expect_check(
        v, "manufacturer_key", trusted_manufacturer_keys=[key_pool.get("ec256", OTHER_INDEX).public_key()]
    )


def test_expired_device_certificate(three: Built) -> None:
    from datetime import timedelta

    expect_check(received(three.voucher), "cert_chain", now=NOW + timedelta(days=365 * 30))


def test_verify_entry_incrementally(three: Built) -> None:
    """The TO2 device checks entries one at a time with the header HMAC as a Hash."""
    v = three.voucher
    previous: OVEntry | None = None
    signer = v.header.public_key
    for i, entry in enumerate(v.entries):
        checked = verify_entry(
            entry.raw,
            index=i,
            header=v.header,
            header_hmac=v.hmac,
            previous=previous,
            signer=signer,
            hash_alg=v.entry_hash_alg if i else None,
        )
        assert checked == entry
        previous, signer = checked, checked.payload.public_key
    with pytest.raises(InvalidVoucherError) as info:
        verify_entry(
            v.entries[1], index=1, header=v.header, header_hmac=v.hmac, previous=v.entries[1], signer=signer
        )
    assert info.value.check == "entry[1].signature"


# --------------------------------------------------------------------------- legacy and versions


def test_legacy_chain_hash(key_pool: KeyPool) -> None:
    built = build(key_pool, entries=1, legacy=True)
    voucher = received(built.voucher)
    report = voucher.verify(hmac_secret=SECRET)
    assert report.legacy_chain_hash
    assert any("legacy" in note for note in report.notes)
    err = expect_check(voucher, "header.cert_chain_hash", allow_legacy_chain_hash=False)
    assert "legacy" in err.message


def test_fdo10_refused(three: Built) -> None:
    parts = codec.split_array(three.voucher.encode())
    four = codec.encode([codec.Raw(p) for p in parts[1:]])
    with pytest.raises(UnsupportedVoucherVersionError, match="FDO 1.0 voucher"):
        OwnershipVoucher.decode(four)
    v100 = codec.encode([100, *(codec.Raw(p) for p in parts[1:])])
    with pytest.raises(UnsupportedError, match="FDO 1.0 voucher") as info:
        OwnershipVoucher.decode(v100)
    assert isinstance(info.value, InvalidVoucherError) and info.value.check == "prot_ver"
    with pytest.raises(UnsupportedVoucherVersionError, match="102"):
        OwnershipVoucher.decode(codec.encode([102, *(codec.Raw(p) for p in parts[1:])]))


def test_header_protocol_version(key_pool: KeyPool) -> None:
    mfg = key_pool.get("ec256", 0)
    header = OVHeader.build(
        guid=GUID, rv_info=RV, device_info="x", public_key=PublicKey.from_key(mfg.public_key()),
        cert_chain_hash=None, prot_ver=100,
    )  # fmt: skip
    voucher = OwnershipVoucher.create(
        header=header, hmac=header.hmac(SECRET, HashType.HMAC_SHA256), cert_chain=None
    )
    expect_check(received(voucher), "header.prot_ver")


def test_epid_style_voucher_without_chain(key_pool: KeyPool) -> None:
    mfg = key_pool.get("ec256", 0)
    header = OVHeader.build(
        guid=GUID,
        rv_info=RV,
        device_info="x",
        public_key=PublicKey.from_key(mfg.public_key()),
        cert_chain_hash=None,
    )
    voucher = OwnershipVoucher.create(
        header=header, hmac=header.hmac(SECRET, HashType.HMAC_SHA256), cert_chain=None
    )
    voucher = received(voucher.extend(mfg, key_pool.get("ec256", 1).public_key()))
    assert voucher.device_public_key is None
    report = voucher.verify(hmac_secret=SECRET)
    assert report.notes
    expect_check(voucher, "cert_chain", trusted_device_cas=[make_ca(mfg, "x", NOW)])


# --------------------------------------------------------------------------- replacement


def test_replacement(key_pool: KeyPool, three: Built) -> None:
    old = received(three.voucher)
    owner2 = key_pool.get("ec256", 2)
    new_guid = Guid(bytes(16))
    new_rv = RendezvousInfo.of([RendezvousDirective.build(ip="192.0.2.1", port=80)])
    header = replacement_header(
        old.header, guid=new_guid, rv_info=new_rv, owner2_key=PublicKey.from_key(owner2.public_key())
    )
    raw_header = replacement_header(
        old.header,
        guid=new_guid,
        rv_info_raw=codec.encode(new_rv.to_cbor_obj()),
        owner2_key_raw=PublicKey.from_key(owner2.public_key()).encode(),
    )
    assert header == raw_header
    assert header.device_info == old.header.device_info
    assert header.cert_chain_hash == old.header.cert_chain_hash
    assert header.prot_ver == old.header.prot_ver
    hmac = header.hmac(SECRET, old.hmac.alg)
    new = received(replacement_voucher(old, new_header=header, replacement_hmac=hmac))
    assert new.entries == () and new.cert_chain == old.cert_chain and new.guid == new_guid
    new.verify(hmac_secret=SECRET, owner_key=owner2.public_key(), trusted_device_cas=[three.ca])
    # Resale: Owner2 extends the replacement voucher to a buyer.
    buyer = key_pool.get("ec256", 3)
    received(new.extend(owner2, buyer.public_key())).verify(owner_key=buyer.public_key())
    with pytest.raises(FdoUsageError):
        replacement_header(old.header, guid=new_guid, owner2_key=PublicKey.from_key(owner2.public_key()))


# --------------------------------------------------------------------------- text form


def test_pem_round_trip(key_pool: KeyPool) -> None:
    vouchers = [
        build(key_pool, "ec256", 1).voucher,
        build(key_pool, "ec384", 2, guid=Guid(b"\x01" * 16)).voucher,
        build(key_pool, "rsa2048", 0).voucher,
    ]
    text = "some text before\n" + vouchers_to_pem(vouchers) + "trailing\n"
    for line in vouchers_to_pem(vouchers).splitlines():
        assert len(line) <= 64
    parsed = OwnershipVoucher.from_pem(text)
    assert parsed == vouchers
    assert [p.encode() for p in parsed] == [v.encode() for v in vouchers]
    assert OwnershipVoucher.from_pem(text.encode()) == vouchers
    assert OwnershipVoucher.from_pem(text.replace("\n", "\r\n")) == vouchers
    assert parsed[0].to_pem() == vouchers[0].to_pem()
    # Raw CBOR is accepted when the data does not start with "--".
    assert OwnershipVoucher.from_pem(vouchers[1].encode()) == [vouchers[1]]


def test_pem_other_blocks_ignored(three: Built) -> None:
    key_block = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
    assert OwnershipVoucher.from_pem(three.voucher.to_pem() + key_block) == [three.voucher]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN OWNERSHIP VOUCHER-----\nhRhl\n",
        "-----BEGIN OWNERSHIP VOUCHER-----\n!!!!\n-----END OWNERSHIP VOUCHER-----\n",
        "-----BEGIN OWNERSHIP VOUCHER-----\n\n-----END OWNERSHIP VOUCHER-----\n",
        "-----BEGIN OWNERSHIP VOUCHER-----\nhRhl\n-----END CERTIFICATE-----\n",
    ],
)
def test_bad_pem(text: str) -> None:
    with pytest.raises(MessageBodyError):
        split_pem(text)


# --------------------------------------------------------------------------- hypothesis


def _only_fdo_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except FdoError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    _only_fdo_errors(lambda: OwnershipVoucher.decode(data))
    _only_fdo_errors(lambda: OwnershipVoucher.from_pem(data))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_from_pem_arbitrary_text(text: str) -> None:
    _only_fdo_errors(lambda: OwnershipVoucher.from_pem(text))
    _only_fdo_errors(lambda: OwnershipVoucher.from_pem("-----BEGIN OWNERSHIP VOUCHER-----\n" + text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decode_mutated_voucher(three: Built, data: st.DataObject) -> None:
    """Corrupt a real voucher: decoding and verifying raise only FdoError."""
    raw = bytearray(three.voucher.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) - 8, len(raw)))

    def run() -> None:
        voucher = OwnershipVoucher.decode(bytes(raw[:cut]))
        voucher.verify(hmac_secret=SECRET)

    _only_fdo_errors(run)


_extra = st.dictionaries(st.integers(-(2**40), 2**40), st.binary(max_size=8), max_size=3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    guid=st.binary(min_size=16, max_size=16),
    device_info=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    port=st.integers(1, 65535),
    extras=st.lists(_extra, max_size=3),
)
def test_generated_round_trip(
    key_pool: KeyPool, guid: bytes, device_info: str, port: int, extras: list[dict[int, bytes]]
) -> None:
    mfg = key_pool.get("ec256", 0)
    ca, device_key, chain = device_pki(key_pool)
    rv = RendezvousInfo.of([RendezvousDirective.build(dns="rv.example", port=port)])
    header = OVHeader.build(
        guid=Guid(guid),
        rv_info=rv,
        device_info=device_info,
        public_key=PublicKey.from_key(mfg.public_key()),
        cert_chain_hash=cert_chain_hash(HashType.SHA256, chain),
    )
    voucher = OwnershipVoucher.create(
        header=header, hmac=header.hmac(SECRET, HashType.HMAC_SHA256), cert_chain=chain
    )
    signer = mfg
    for i, extra in enumerate(extras, 1):
        nxt = key_pool.get("ec256", i)
        voucher = voucher.extend(signer, nxt.public_key(), extra=extra)
        signer = nxt
    data = voucher.encode()
    decoded = OwnershipVoucher.decode(data)
    assert decoded == voucher
    assert decoded.encode() == data
    assert OwnershipVoucher.from_pem(decoded.to_pem()) == [voucher]
    assert [e.payload.extra_map() for e in decoded.entries] == extras
    decoded.verify(hmac_secret=SECRET, owner_key=signer.public_key(), trusted_device_cas=[ca])
