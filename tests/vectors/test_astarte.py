"""astarte-device-fdo-rust snapshots (``<vectors>/astarte/*.snap.cbor``) against our types.

Every ``.snap.cbor`` file is classified in exactly one table below, and
:func:`test_every_snapshot_is_classified` fails when a file appears that is not (or a
table names a file that is gone):

* :data:`MAPPED`: decode into our type and re-encode: the bytes must be identical.
* :data:`CANONICAL`: decodes, but astarte wrote a map with its keys out of
  deterministic order; we re-encode deterministically (fdo-protocol.md §0), so the
  re-encoding must equal the input with its maps sorted.
* :data:`REJECTED`: our type refuses the value, and must do so with this FdoError. The
  astarte test data uses secp256k1 keys (not an FDO curve, spec §3.3.4), a pkEnc we do
  not support, or a key that is not on the curve it names.
* :data:`NOT_FDO`: astarte's generic helpers, not FDO structures.

The ``.snap`` text files without a ``.cbor`` twin are Display/Debug renderings (error
text, GUID text, enum names): nothing to decode.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Protocol

import pytest

from fdo import codec
from fdo.codec import CborValue
from fdo.cose import CoseSign1
from fdo.crypto import PkType, PublicKey, cert_der, load_cert_chain
from fdo.di.messages import DIAppStart, DIDone, DISetCredentials, DISetHMAC, MfgInfo
from fdo.errors import FdoError, InvalidMessageError, MessageBodyError, UnsupportedError
from fdo.messages import ErrorMessage, MessageBase
from fdo.rvinfo import RendezvousInfo, RVProtocol, RVTO2Addr, RVVariable, TransportProtocol
from fdo.serviceinfo import decode_service_info, encode_service_info
from fdo.to1.messages import TO1HelloRV, TO1HelloRVAck, TO1ProveToRV, TO1RVRedirect
from fdo.to2.messages import (
    TO2DeviceServiceInfo,
    TO2DeviceServiceInfoReady,
    TO2Done,
    TO2Done2,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OVNextEntry,
    TO2OwnerServiceInfo,
    TO2OwnerServiceInfoReady,
    TO2ProveDevice,
    TO2ProveOVHdr,
    TO2SetupDevice,
)
from fdo.types import Guid, Hash, HashType, Nonce, SgType, SigInfo

PREFIX = "astarte_fdo_protocol__"
SUFFIX = ".snap.cbor"

Check = Callable[[bytes], bytes]
"""Decode snapshot bytes into our type and return its re-encoding."""


def _message(cls: type[MessageBase]) -> Check:
    return lambda data: cls.decode(data).encode()


def _enum(enum: type[IntEnum]) -> Check:
    return lambda data: codec.encode(int(enum(codec.as_int(codec.decode(data), enum.__name__))))


class _Codable(Protocol):
    def to_cbor_obj(self) -> CborValue: ...


def _obj(parse: Callable[[CborValue], _Codable]) -> Check:
    return lambda data: codec.encode(parse(codec.decode(data)).to_cbor_obj())


def _rv_medium(data: bytes) -> bytes:
    # RVMedium (reference §2.6): RVMedEth0-9 = 0-9, RVMedWifi0-9 = 10-19, EthAll 20, WifiAll 21.
    # rvinfo keeps it as a plain uint8, which is what RendezvousDirective.value() returns.
    return codec.encode(codec.as_int(codec.decode(data), "RVMedium", 0, 21))


def _ip(data: bytes) -> bytes:
    # IPAddress = bstr .size 4 / .size 16, as RVTO2AddrEntry.ip holds it.
    value = codec.as_bytes(codec.decode(data), "IPAddress")
    assert len(value) in (4, 16)
    return codec.encode(value)


def _kex_blob(data: bytes) -> bytes:
    # xAKeyExchange / xBKeyExchange: a bstr field of ProveOVHdrPayload / the EAT-FDO claim.
    return codec.encode(codec.as_bytes(codec.decode(data), "KeyExchange", max_size=2048))


def _x5chain(data: bytes) -> bytes:
    # COSE_X509 (RFC 9360): one DER certificate as a bstr, or an array of them.
    obj = codec.decode(data)
    if isinstance(obj, bytes):
        (cert,) = load_cert_chain([obj])
        return codec.encode(cert_der(cert))
    certs = load_cert_chain([codec.as_bytes(d, "cert") for d in codec.as_list(obj, "x5chain")])
    return codec.encode([cert_der(c) for c in certs])


def _mfg_info(data: bytes) -> bytes:
    return MfgInfo.from_bytes(data).to_bytes()


def _service_info(data: bytes) -> bytes:
    return codec.encode(encode_service_info(decode_service_info(codec.decode(data))))


def _numbered(base: str, count: int) -> list[str]:
    """insta names repeated snapshots ``base``, ``base-2``, ... ``base-<count>``."""
    return [base] + [f"{base}-{i}" for i in range(2, count + 1)]


MAPPED: dict[str, Check] = {
    # DI
    **{
        name: _message(DIAppStart)
        for name in _numbered("v101__di__app_start__tests__app_start_any_cbor_roundtrip", 3)
    },
    "v101__di__app_start__tests__app_start_roundtrip": _message(DIAppStart),
    "v101__di__custom__tests__mfg_info_roundtrip": _mfg_info,
    "v101__di__set_credentials__tests__set_credentials_roundtrip": _message(DISetCredentials),
    "v101__di__set_hmac__tests__set_hmac_roundtrip": _message(DISetHMAC),
    "v101__di__done__tests__done_roundtrip": _message(DIDone),
    # ErrorMessage (null timestamp and correlation id)
    "v101__error__tests__error_message_roundtrip": _message(ErrorMessage),
    # common types
    "v101__hash_hmac__tests__hamac_roundtrip": _obj(Hash.from_cbor_obj),
    "v101__hash_hmac__tests__hash_roundtrip": _obj(Hash.from_cbor_obj),
    **{name: _enum(HashType) for name in _numbered("v101__hash_hmac__tests__hash_type_roundtrip", 4)},
    "v101__key_exchange__tests__xa_key_exchange_roundtrip": _kex_blob,
    "v101__key_exchange__tests__xb_key_exchange_roundtrip": _kex_blob,
    **{name: _enum(PkType) for name in _numbered("v101__public_key__tests__pk_type_roundtrip", 5)},
    "v101__rendezvous_info__tests__rendezvous_info_roundtrip": _obj(RendezvousInfo.from_cbor_obj),
    **{name: _rv_medium for name in _numbered("v101__rendezvous_info__tests__rv_medium_value_roundtrip", 22)},
    **{
        name: _enum(RVProtocol)
        for name in _numbered("v101__rendezvous_info__tests__rv_protocol_value_roundtrip", 7)
    },
    **{
        name: _enum(RVVariable)
        for name in _numbered("v101__rendezvous_info__tests__rv_variable_roundtrip", 16)
    },
    "v101__rv_to2_addr__tests__rv_to2_addr_roundtrip": _obj(RVTO2Addr.from_cbor_obj),
    **{name: _service_info for name in _numbered("v101__service_info__tests__service_info_roundtrip", 2)},
    **{name: _enum(SgType) for name in _numbered("v101__sign_info__tests__device_sg_type_roundtrip", 6)},
    **{
        name: _obj(SigInfo.from_cbor_obj)
        for name in _numbered("v101__sign_info__tests__sig_info_roundtrip", 6)
    },
    "v101__tests__guid_roundtrip": _obj(Guid.from_cbor_obj),
    "v101__tests__nonce_roundtrip": _obj(Nonce.from_cbor_obj),
    **{name: _ip for name in _numbered("v101__tests__ip_roundtrip", 2)},
    **{name: _enum(TransportProtocol) for name in _numbered("v101__tests__transport_protocol_roundtrip", 6)},
    **{name: _x5chain for name in _numbered("v101__x509__tests__cose_x509_roundtrip", 2)},
    # TO1
    "v101__to1__hello_rv__tests__hello_rv_roundtrip": _message(TO1HelloRV),
    "v101__to1__hello_rv_ack__tests__hello_rv_ack_roundtrip": _message(TO1HelloRVAck),
    "v101__to1__prove_to_rv__tests__prove_to_rv_roundtrip": _message(TO1ProveToRV),
    "v101__to1__rv_redirect__tests__rv_redirect_roundtrip": _message(TO1RVRedirect),
    # TO2
    "v101__to2__hello_device__tests__hello_device_roundtrip": _message(TO2HelloDevice),
    "v101__to2__get_ov_next_entry__tests__get_ov_next_entry_roundtrip": _message(TO2GetOVNextEntry),
    "v101__to2__ov_next_entry__tests__ov_next_entry_roundtrip": _message(TO2OVNextEntry),
    "v101__to2__prove_device__tests__prove_device_roundtrip": _message(TO2ProveDevice),
    "v101__to2__setup_device__tests__setup_device_roundtrip": _message(TO2SetupDevice),
    "v101__to2__device_service_info_ready__tests__device_service_info_roundtrip": _message(
        TO2DeviceServiceInfoReady
    ),
    "v101__to2__owner_service_info_ready__tests__owner_service_info_ready_roundtrip": _message(
        TO2OwnerServiceInfoReady
    ),
    "v101__to2__device_service_info__tests__device_service_info_roundtrip": _message(TO2DeviceServiceInfo),
    # its key "key" has no "module:" part; read like go (strings.Cut) as a module name
    "v101__to2__owner_service_info__tests__owner_service_info_roundtrip": _message(TO2OwnerServiceInfo),
    "v101__to2__done__tests__done_roundtrip": _message(TO2Done),
    "v101__to2__done__tests__done_2_roundtrip": _message(TO2Done2),
}

CANONICAL: dict[str, tuple[Check, str]] = {
    "v101__to2__prove_ov_hdr__tests__prove_ov_hdr_roundtrip": (
        _message(TO2ProveOVHdr),
        "the unprotected header map has key 257 before 256; the unprotected header is not "
        "signed, and we write maps in deterministic order",
    ),
}


def _voucher_header(data: bytes) -> object:
    from fdo.voucher import OVHeader

    return OVHeader.from_bytes(data)


def _voucher_entry(data: bytes) -> object:
    from fdo.voucher import OVEntry

    return OVEntry.from_bytes(data)


def _voucher_entry_payload(data: bytes) -> object:
    from fdo.voucher import OVEntryPayload

    return OVEntryPayload.from_cbor_obj(codec.decode(data))


def _voucher(data: bytes) -> object:
    from fdo.voucher import OwnershipVoucher

    return OwnershipVoucher.decode(data)


def _public_key(data: bytes) -> object:
    return PublicKey.from_cbor_obj(codec.decode(data))


SECP256K1 = "secp256k1 is not an FDO curve (only P-256/P-384 and RSA 2048/3072)"

REJECTED: dict[str, tuple[Callable[[bytes], object], type[FdoError], str, str]] = {
    # name: (parse, expected error, message pattern, reason)
    "v101__ownership_voucher__tests__ov_header_roundtrip": (
        _voucher_header,
        UnsupportedError,
        "secp256k1",
        f"OVPubKey: {SECP256K1}",
    ),
    "v101__ownership_voucher__tests__ov_entry_roundtrip": (
        _voucher_entry,
        UnsupportedError,
        "secp256k1",
        f"OVEPubKey: {SECP256K1}",
    ),
    "v101__ownership_voucher__tests__ov_entry_payload_roundtrip": (
        _voucher_entry_payload,
        UnsupportedError,
        "secp256k1",
        f"OVEPubKey: {SECP256K1}",
    ),
    "v101__ownership_voucher__tests__ownership_voucher_roundtrip": (
        _voucher,
        UnsupportedError,
        "secp256k1",
        f"OVPubKey: {SECP256K1}",
    ),
    "v101__public_key__tests__public_key_roundtrip": (
        _public_key,
        UnsupportedError,
        "CRYPTO",
        "pkEnc Crypto (0, EPID only) is not supported",
    ),
    "v101__public_key__tests__public_key_roundtrip-2": (
        _public_key,
        UnsupportedError,
        "secp256k1",
        f"X509 key: {SECP256K1}",
    ),
    "v101__public_key__tests__public_key_roundtrip-3": (
        _public_key,
        MessageBodyError,
        "trailing bytes",
        "X5CHAIN as a single bstr certificate (RFC 9360 allows it; fdo.crypto reads only the "
        f"array or rs's bstr-wrapped array) of a secp256k1 key: {SECP256K1}",
    ),
    "v101__public_key__tests__public_key_roundtrip-4": (
        _public_key,
        InvalidMessageError,
        "not on the curve",
        "COSE_Key labelled P-256 holding the secp256k1 test point",
    ),
}

NOT_FDO: dict[str, str] = {
    "utils__tests__cbor_str_roundrtip": "astarte's generic CborBstr<T> helper (bstr wrapping 42)",
    "utils__tests__one_or_more_roundrtip": "astarte's generic OneOrMore<T> helper ([42])",
}


@pytest.fixture
def astarte(vectors_dir: Path) -> Path:
    """``<vectors>/astarte``; skips the test when it is absent."""
    folder = vectors_dir / "astarte"
    if not folder.is_dir():
        pytest.skip(f"astarte vectors not available: {folder}")
    return folder


def _snapshot(folder: Path, name: str) -> bytes:
    return (folder / f"{PREFIX}{name}{SUFFIX}").read_bytes()


def test_tables_are_disjoint() -> None:
    tables = [set(MAPPED), set(CANONICAL), set(REJECTED), set(NOT_FDO)]
    assert sum(len(t) for t in tables) == len(set().union(*tables))


def test_every_snapshot_is_classified(astarte: Path) -> None:
    present = {p.name[len(PREFIX) : -len(SUFFIX)] for p in astarte.glob(f"{PREFIX}*{SUFFIX}")}
    others = {p.name for p in astarte.glob(f"*{SUFFIX}") if not p.name.startswith(PREFIX)}
    known = set(MAPPED) | set(CANONICAL) | set(REJECTED) | set(NOT_FDO)
    assert not others, f"snapshots outside {PREFIX}*: {sorted(others)}"
    assert sorted(present - known) == [], "new astarte snapshots: classify them in this module"
    assert sorted(known - present) == [], "classified snapshots that no longer exist"


@pytest.mark.parametrize("name", sorted(MAPPED))
def test_mapped_snapshot_reencodes_identically(name: str, astarte: Path) -> None:
    data = _snapshot(astarte, name)
    assert MAPPED[name](data) == data


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_canonical_snapshot_reencodes_deterministically(name: str, astarte: Path) -> None:
    data = _snapshot(astarte, name)
    check, _reason = CANONICAL[name]
    canonical = codec.encode(codec.decode(data))
    assert canonical != data  # else it belongs in MAPPED
    assert check(data) == canonical
    assert check(canonical) == canonical


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_snapshot_raises_fdo_error(name: str, astarte: Path) -> None:
    data = _snapshot(astarte, name)
    parse, error, pattern, _reason = REJECTED[name]
    with pytest.raises(error, match=pattern):
        parse(data)
    # The structure itself is well-formed, deterministic CBOR.
    assert codec.encode(codec.decode(data)) == data


# --------------------------------------------------------------------------- inner parts


def test_prove_ov_hdr_parts(astarte: Path) -> None:
    data = _snapshot(astarte, "v101__to2__prove_ov_hdr__tests__prove_ov_hdr_roundtrip")
    msg = TO2ProveOVHdr.decode(data)
    payload = msg.payload()
    assert payload.to_bytes() == msg.token.payload
    assert payload.num_ov_entries == 2
    assert payload.max_owner_message_size == 1400
    assert payload.nonce == Nonce(bytes(range(16)))
    assert msg.cuph_nonce == Nonce(bytes(range(16)))
    # OVHeader bytes are carried verbatim: the same header as the ov_header snapshot.
    header = _snapshot(astarte, "v101__ownership_voucher__tests__ov_header_roundtrip")
    assert payload.ov_header == header
    with pytest.raises(UnsupportedError, match="secp256k1"):
        _ = msg.cuph_owner_pubkey


def test_ov_next_entry_carries_the_entry_verbatim(astarte: Path) -> None:
    msg = TO2OVNextEntry.decode(
        _snapshot(astarte, "v101__to2__ov_next_entry__tests__ov_next_entry_roundtrip")
    )
    assert msg.entry_num == 42
    assert msg.entry == _snapshot(astarte, "v101__ownership_voucher__tests__ov_entry_roundtrip")
    assert isinstance(msg.entry_token(), CoseSign1)


def test_rv_redirect_to1d_payload(astarte: Path) -> None:
    data = _snapshot(astarte, "v101__to1__rv_redirect__tests__rv_redirect_roundtrip")
    payload = TO1RVRedirect.decode(data).to1d_payload()
    (entry,) = payload.rv_to2_addr.entries
    assert (entry.ip, entry.dns, entry.port, entry.protocol) == (
        None,
        "example.com",
        80,
        TransportProtocol.HTTP,
    )
    assert payload.to0d_hash.alg == HashType.SHA256


def test_setup_device_payload_key_is_rejected(astarte: Path) -> None:
    data = _snapshot(astarte, "v101__to2__setup_device__tests__setup_device_roundtrip")
    msg = TO2SetupDevice.decode(data)
    with pytest.raises(UnsupportedError, match="secp256k1"):
        msg.payload()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("v101__to1__prove_to_rv__tests__prove_to_rv_roundtrip", TO1ProveToRV),
        ("v101__to2__prove_device__tests__prove_device_roundtrip", TO2ProveDevice),
    ],
)
def test_placeholder_eat_payloads_are_refused(
    name: str, cls: type[TO1ProveToRV | TO2ProveDevice], astarte: Path
) -> None:
    # astarte's message tests sign placeholder payloads (a bstr), not EAT claim maps.
    msg = cls.decode(_snapshot(astarte, name))
    with pytest.raises(MessageBodyError):
        msg.eat()


def test_device_service_info_devmod(astarte: Path) -> None:
    data = _snapshot(astarte, "v101__to2__device_service_info__tests__device_service_info_roundtrip")
    msg = TO2DeviceServiceInfo.decode(data)
    assert not msg.is_more
    keys = [kv.key for kv in msg.service_info]
    assert keys[0] == "devmod:active" and "devmod:modules" in keys
    assert msg.service_info[0].decoded() is True
