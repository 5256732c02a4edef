"""Hypothesis properties of the sans-I/O core: CBOR codec, core types, state machines.

* codec: round trips, RFC 8949 deterministic encoding checked against an independent
  reference (cbor2 for scalars, a bytewise key sort here), and decoders that raise only
  :class:`~fdo.errors.FdoError` on arbitrary bytes;
* every core type round-trips byte-identically, and its ``from_cbor_obj`` fed arbitrary
  decoded CBOR raises only FdoError;
* every server machine's ``handle`` and every client machine's ``receive`` fed arbitrary
  input raises only FdoError, and never the InternalError that wraps our own bugs.

Message classes are covered by test_messages.py and are not repeated here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import cbor2
import pytest
from cryptography import x509
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fdo import codec
from fdo.codec import CborValue, Tag
from fdo.cose import CoseSign1, EatPayload
from fdo.credential import DeviceCredential
from fdo.crypto import PkEnc, PrivateKeyT, PublicKey, generate_key, make_ca
from fdo.di.device import DIDevice
from fdo.di.manufacturer import DIManufacturer
from fdo.errors import FdoError, InternalError, MessageBodyError, SignatureError, UnsupportedError
from fdo.machine import ClientMachine, ServerMachine
from fdo.rvinfo import (
    RendezvousDirective,
    RendezvousInfo,
    RendezvousInstr,
    RVTO2Addr,
    RVTO2AddrEntry,
    TransportProtocol,
)
from fdo.serviceinfo import DeviceServiceInfoDriver
from fdo.to0.owner import TO0Owner
from fdo.to0.rendezvous import TO0Rendezvous
from fdo.to1.device import TO1Device
from fdo.to1.rendezvous import TO1Rendezvous
from fdo.to2.device import TO2Device
from fdo.to2.owner import TO2Owner
from fdo.types import Guid, Hash, HashType, MsgType, Nonce, SgType, SigInfo
from fdo.voucher import OwnershipVoucher
from tests.fdo.flow import NOW, Manufacturer, Owner, Rendezvous, make_manufacturer, run_di, sample_devmod

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

INT_BOUNDS = [
    0,
    23,
    24,
    255,
    256,
    65535,
    65536,
    (1 << 32) - 1,
    1 << 32,
    (1 << 64) - 1,
    -1,
    -24,
    -25,
    -256,
    -257,
    -65536,
    -65537,
    -(1 << 32),
    -(1 << 32) - 1,
    -(1 << 64),
]
cbor_ints = st.sampled_from(INT_BOUNDS) | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
cbor_leaves = st.one_of(st.none(), st.booleans(), cbor_ints, st.binary(max_size=40), st.text(max_size=20))
map_keys = cbor_ints | st.text(max_size=8)
#: Tags cbor2 leaves uninterpreted, so they round-trip as :class:`Tag`.
PLAIN_TAGS = [6, 7, 16, 17, 18, 19, 96, 97, 98, 1000, 65535, 1 << 20, (1 << 32) + 5, (1 << 64) - 1]
#: Tags cbor2 interprets (dates, bignums, sets, ...) and may refuse.
SEMANTIC_TAGS = [0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 261, 55799]


def _cbor(tags: list[int]) -> st.SearchStrategy[CborValue]:
    return st.recursive(
        cbor_leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(map_keys, children, max_size=5),
            st.builds(Tag, st.sampled_from(tags), children),
        ),
        max_leaves=25,
    )


plain_cbor = _cbor(PLAIN_TAGS)
any_cbor = _cbor(PLAIN_TAGS + SEMANTIC_TAGS)


def _decoded(obj: CborValue) -> CborValue:
    """``obj`` as a peer's bytes decode (skips values cbor2 refuses, e.g. bad dates)."""
    try:
        return codec.decode(codec.encode(obj))
    except MessageBodyError:
        assume(False)
        raise


#: Arbitrary decoded CBOR, plus arrays shaped like FDO structures (small ints first).
decoded_cbor = st.one_of(
    any_cbor.map(_decoded),
    st.lists(st.integers(-300, 300) | any_cbor, min_size=1, max_size=5).map(_decoded),
)


# --------------------------------------------------------------------------- codec


#: What machines keep in their state: plain CBOR, no tags.
state_values = st.recursive(
    cbor_leaves,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(map_keys, children, max_size=5),
    max_leaves=25,
)


@given(state_values)
def test_state_encoding_reads_back_as_the_wire_encoding(obj: CborValue) -> None:
    # encode_state (cbor2's C encoder, keys in insertion order) decodes to the same value
    # as the deterministic encoder's output.
    assert codec.decode(codec.encode_state(obj)) == codec.decode(codec.encode(obj))


def ref_encode(obj: CborValue) -> bytes:
    """An independent deterministic encoder: cbor2 for scalars, a bytewise key sort for maps."""
    if obj is None or isinstance(obj, bool | int | bytes | str):
        return bytes(cbor2.dumps(obj))
    if isinstance(obj, list):
        return ref_head(4, len(obj)) + b"".join(ref_encode(i) for i in obj)
    if isinstance(obj, dict):
        keys = sorted((ref_encode(k), k) for k in obj)  # encoded keys are unique
        return ref_head(5, len(obj)) + b"".join(enc + ref_encode(obj[k]) for enc, k in keys)
    assert isinstance(obj, Tag)
    return ref_head(6, obj.tag) + ref_encode(obj.value)


def ref_head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | ai]) + arg.to_bytes(size, "big")
    raise AssertionError("too big")


def same(a: CborValue, b: CborValue) -> bool:
    """Equality that tells ``True`` from ``1`` (arrays inside tags decode as tuples, maps as FrozenDict)."""
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, Tag):
        return a.tag == b.tag and same(a.value, b.value)
    return bool(a == b)


@SETTINGS
@given(plain_cbor)
def test_codec_round_trip(obj: CborValue) -> None:
    data = codec.encode(obj)
    back = codec.decode(data)
    assert same(back, obj)
    assert codec.encode(back) == data
    assert codec.item_length(data) == len(data)
    assert codec.item_length(b"\x00" + data, 1) == len(data)


@SETTINGS
@given(plain_cbor)
def test_codec_is_deterministic(obj: CborValue) -> None:
    assert codec.encode(obj) == ref_encode(obj)


@SETTINGS
@given(st.dictionaries(map_keys, cbor_leaves, min_size=1, max_size=12))
def test_map_keys_sorted_bytewise(obj: dict[CborValue, CborValue]) -> None:
    data = codec.encode(obj)
    pos = len(ref_head(5, len(obj)))
    keys: list[bytes] = []
    for _ in obj:
        key_len = codec.item_length(data, pos)
        keys.append(data[pos : pos + key_len])
        pos += key_len
        pos += codec.item_length(data, pos)
    assert pos == len(data)
    assert keys == sorted(bytes(cbor2.dumps(k)) for k in obj)
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False))


@SETTINGS
@given(cbor_ints)
def test_integer_heads_are_shortest(n: int) -> None:
    data = codec.encode(n)
    magnitude = n if n >= 0 else -1 - n
    expected = 1 if magnitude < 24 else 2 if magnitude < 1 << 8 else 3 if magnitude < 1 << 16 else 5
    if magnitude >= 1 << 32:
        expected = 9
    assert len(data) == expected
    assert data[0] >> 5 == (0 if n >= 0 else 1)
    assert data == cbor2.dumps(n)


@settings(SETTINGS, max_examples=100)
@given(st.lists(plain_cbor, max_size=8))
def test_split_array_matches_encoding(items: list[CborValue]) -> None:
    assert codec.split_array(codec.encode(items)) == [codec.encode(i) for i in items]


def test_encode_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        codec.encode(1 << 64)
    with pytest.raises(ValueError):
        codec.encode(-(1 << 64) - 1)
    with pytest.raises(TypeError):
        codec.encode(1.5)


def _only_fdo_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except FdoError as exc:
        assert not isinstance(exc, InternalError), exc


#: Arbitrary bytes, and valid encodings with a few bytes changed (to get past the head).
arbitrary_bytes = st.binary(max_size=200) | st.tuples(
    plain_cbor.map(codec.encode),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
).map(lambda t: _mutate(*t))


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    if not out:
        return data
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)


@SETTINGS
@given(arbitrary_bytes)
def test_decode_raises_only_message_body_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except MessageBodyError:
        pass


@SETTINGS
@given(arbitrary_bytes, st.integers(0, 8))
def test_item_length_and_split_array_raise_only_fdo_errors(data: bytes, offset: int) -> None:
    _only_fdo_errors(lambda: codec.item_length(data, offset))
    _only_fdo_errors(lambda: codec.split_array(data))


# --------------------------------------------------------------------------- core types


@cache
def keys() -> dict[str, PrivateKeyT]:
    return {kind: generate_key(kind) for kind in ("ec256", "ec384", "rsa2048")}


@cache
def public_keys() -> list[PublicKey]:
    out: list[PublicKey] = []
    for kind in ("ec256", "ec384"):
        key = keys()[kind]
        cert = make_ca(key, f"{kind} test", NOW)
        out.append(PublicKey.from_key(key.public_key()))
        out.append(PublicKey.from_key(key.public_key(), enc=PkEnc.X5CHAIN, chain=[cert]))
        out.append(PublicKey.from_key(key.public_key(), enc=PkEnc.COSEKEY))
    out.append(PublicKey.from_key(keys()["rsa2048"].public_key()))
    return out


def _cert_chain(kind: str) -> list[x509.Certificate]:
    return [make_ca(keys()[kind], f"{kind} test", NOW)]


def _round_trip(obj: Any, parse: Callable[[CborValue], Any]) -> None:
    data = codec.encode(obj.to_cbor_obj())
    back = parse(codec.decode(data))
    assert back == obj
    assert codec.encode(back.to_cbor_obj()) == data


guids = st.binary(min_size=16, max_size=16).map(Guid)
nonces = st.binary(min_size=16, max_size=16).map(Nonce)
hashes = st.sampled_from(list(HashType)).flatmap(
    lambda alg: st.binary(min_size=alg.digest_size, max_size=alg.digest_size).map(lambda v: Hash(alg, v))
)
sig_infos = st.builds(SigInfo, st.sampled_from(list(SgType)), st.binary(max_size=64))


@SETTINGS
@given(guids, nonces, hashes, sig_infos)
def test_simple_types_round_trip(guid: Guid, nonce: Nonce, hash_: Hash, sig_info: SigInfo) -> None:
    _round_trip(guid, Guid.from_cbor_obj)
    _round_trip(nonce, Nonce.from_cbor_obj)
    _round_trip(hash_, Hash.from_cbor_obj)
    _round_trip(sig_info, SigInfo.from_cbor_obj)
    assert Guid.parse(str(guid)) == guid


@pytest.mark.parametrize("index", range(7))
def test_public_key_round_trip(index: int) -> None:
    key = public_keys()[index]
    _round_trip(key, PublicKey.from_cbor_obj)
    back = PublicKey.from_cbor_obj(codec.decode(key.encode()))
    assert back.same_key(key) and back.pk_enc == key.pk_enc


@pytest.mark.parametrize("kind", ["ec256", "ec384"])
def test_public_key_x5chain_bstr_wrapped(kind: str) -> None:
    """rs wraps the X5CHAIN array in a bstr; it is read and re-encoded as received."""
    chain = _cert_chain(kind)
    plain = PublicKey.from_key(keys()[kind].public_key(), enc=PkEnc.X5CHAIN, chain=chain)
    wrapped = PublicKey(plain.pk_type, PkEnc.X5CHAIN, codec.encode(plain.body))
    _round_trip(wrapped, PublicKey.from_cbor_obj)
    assert wrapped.same_key(plain)


def test_public_key_unknown_algorithm_is_fdo_error() -> None:
    """An SPKI or certificate with an unknown key OID is an UnsupportedError, not a cryptography error."""
    ec_oid, other_oid = bytes.fromhex("2a8648ce3d0201"), bytes.fromhex("2a8648ce3d0209")
    plain = public_keys()[0]
    spki = plain.body.replace(ec_oid, other_oid)
    with pytest.raises(UnsupportedError):
        PublicKey.from_cbor_obj([int(plain.pk_type), int(PkEnc.X509), spki])
    x5 = public_keys()[1]
    chain = [x5.body[0].replace(ec_oid, other_oid)]
    with pytest.raises(UnsupportedError):
        PublicKey.from_cbor_obj([int(x5.pk_type), int(PkEnc.X5CHAIN), chain])


rv_values = plain_cbor.map(codec.encode).filter(lambda v: v != b"\xf6")
rv_instr_objs = st.one_of(
    st.integers(0, 255).map(lambda v: [v]),
    st.integers(0, 255).map(lambda v: [v, b"\xf6"]),
    st.integers(0, 255).map(lambda v: [v, None]),
    st.tuples(st.integers(0, 255), rv_values | st.binary(max_size=20)).map(list),
)
rv_directive_objs = st.lists(rv_instr_objs, min_size=1, max_size=6)
rv_info_objs = st.lists(rv_directive_objs, max_size=4)


def _bytes_round_trip(obj: CborValue, parse: Callable[[CborValue], Any]) -> Any:
    data = codec.encode(obj)
    parsed = parse(codec.decode(data))
    assert codec.encode(parsed.to_cbor_obj()) == data
    assert parse(codec.decode(data)) == parsed
    return parsed


@SETTINGS
@given(rv_instr_objs)
def test_rendezvous_instr_round_trip(obj: list[CborValue]) -> None:
    instr = _bytes_round_trip(obj, RendezvousInstr.from_cbor_obj)
    if len(obj) == 1 or obj[1] in (None, b"\xf6"):
        assert instr.value is None and instr.decoded() is None
    else:
        assert instr.value == obj[1]


def test_rendezvous_flag_forms_are_kept() -> None:
    for obj in ([3], [3, b"\xf6"], [3, None]):
        data = codec.encode(obj)
        assert codec.encode(RendezvousInstr.from_cbor_obj(codec.decode(data)).to_cbor_obj()) == data


@SETTINGS
@given(rv_directive_objs, rv_info_objs)
def test_rendezvous_directive_and_info_round_trip(
    directive: list[CborValue], info: list[list[CborValue]]
) -> None:
    _bytes_round_trip(directive, RendezvousDirective.from_cbor_obj)
    _bytes_round_trip(info, RendezvousInfo.from_cbor_obj)


rv_to2_entries = st.builds(
    RVTO2AddrEntry,
    st.none() | st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
    st.none() | st.text(min_size=1, max_size=40),
    st.integers(0, 65535),
    st.sampled_from(list(TransportProtocol)),
)


@SETTINGS
@given(st.lists(rv_to2_entries, min_size=1, max_size=5))
def test_rv_to2_addr_round_trip(entries: list[RVTO2AddrEntry]) -> None:
    addr = RVTO2Addr(tuple(entries))
    _round_trip(addr, RVTO2Addr.from_cbor_obj)
    for entry in entries:
        _round_trip(entry, RVTO2AddrEntry.from_cbor_obj)
        entry.urls()


@SETTINGS
@given(
    st.sampled_from(["ec256", "ec384", "rsa2048"]),
    plain_cbor.map(codec.encode) | st.binary(max_size=64),
    st.dictionaries(st.integers(-300, 300), plain_cbor, max_size=3),
    st.booleans(),
)
def test_cose_sign1_round_trip_and_verify(
    kind: str, payload: bytes, unprotected: dict[int, CborValue], tagged: bool
) -> None:
    key = keys()[kind]
    signed = CoseSign1.sign(key, payload, unprotected=unprotected)
    if not tagged:
        signed = CoseSign1(signed.protected, signed.unprotected, payload, signed.signature, tagged=False)
    data = signed.encode()
    back = CoseSign1.decode(data)
    # Inside the tag cbor2 decodes immutably (tuples, frozendict): compare loosely, bytes exactly.
    assert back.encode() == data and back.tagged == tagged and same(back.unprotected, signed.unprotected)
    assert (back.protected, back.payload, back.signature) == (signed.protected, payload, signed.signature)
    back.verify(key.public_key())
    tampered = CoseSign1(back.protected, back.unprotected, payload + b"\x00", back.signature, tagged)
    with pytest.raises(SignatureError):
        tampered.verify(key.public_key())


@SETTINGS
@given(nonces, st.binary(max_size=64), st.none() | plain_cbor)
def test_eat_payload_round_trip(nonce: Nonce, ueid: bytes, fdo: CborValue) -> None:
    eat = EatPayload(nonce, ueid, fdo)
    data = codec.encode(eat.to_cbor_obj())
    back = EatPayload.from_cbor_obj(codec.decode(data))
    assert back.nonce == nonce and back.ueid == ueid and same(back.fdo, fdo)
    assert codec.encode(back.to_cbor_obj()) == data


PARSERS: dict[str, Callable[[CborValue], object]] = {
    "Guid": Guid.from_cbor_obj,
    "Nonce": Nonce.from_cbor_obj,
    "Hash": Hash.from_cbor_obj,
    "SigInfo": SigInfo.from_cbor_obj,
    "PublicKey": PublicKey.from_cbor_obj,
    "RendezvousInstr": RendezvousInstr.from_cbor_obj,
    "RendezvousDirective": RendezvousDirective.from_cbor_obj,
    "RendezvousInfo": RendezvousInfo.from_cbor_obj,
    "RVTO2AddrEntry": RVTO2AddrEntry.from_cbor_obj,
    "RVTO2Addr": RVTO2Addr.from_cbor_obj,
    "CoseSign1": CoseSign1.from_cbor_obj,
    "EatPayload": EatPayload.from_cbor_obj,
}


def _parse_and_use(name: str, obj: CborValue) -> None:
    parsed = PARSERS[name](obj)
    if isinstance(parsed, RendezvousDirective):
        parsed.urls()
        parsed.urls(for_owner=True)
    elif isinstance(parsed, RendezvousInstr):
        parsed.decoded()
    elif isinstance(parsed, EatPayload):
        parsed.guid()


@SETTINGS
@given(st.sampled_from(sorted(PARSERS)), decoded_cbor)
def test_from_cbor_obj_raises_only_fdo_errors(name: str, obj: CborValue) -> None:
    _only_fdo_errors(lambda: _parse_and_use(name, obj))


@SETTINGS
@given(st.data())
def test_public_key_bodies_raise_only_fdo_errors(data: st.DataObject) -> None:
    """Valid pkType/pkEnc with arbitrary or mutated bodies, to get past the header checks."""
    key = data.draw(st.sampled_from(public_keys()))
    body: CborValue = key.body
    if isinstance(body, bytes):
        body = _mutate(data.draw(st.just(body) | st.binary(max_size=80)), data.draw(edits))
    elif data.draw(st.booleans()):
        body = codec.decode(codec.encode(body))  # the body as received: tuples become lists, ...
    else:
        body = data.draw(decoded_cbor)
    pk_type = data.draw(st.sampled_from([int(key.pk_type), 1, 10, 11, 12, 13, 14]))
    pk_enc = data.draw(st.sampled_from([int(key.pk_enc), 0, 1, 2, 3]))
    _only_fdo_errors(lambda: PublicKey.from_cbor_obj([pk_type, pk_enc, body]))


# --------------------------------------------------------------------------- state machines


@dataclass
class World:
    mfr: Manufacturer
    rv: Rendezvous
    owner: Owner
    device_key: PrivateKeyT
    owner_key: PrivateKeyT
    credential: DeviceCredential
    voucher: OwnershipVoucher


@cache
def world() -> World:
    mfr = make_manufacturer({"ec256": keys()["ec256"], "ec384": keys()["ec384"]})
    device_key = generate_key("ec256")
    credential, voucher = run_di(mfr, device_key)
    owner_key = mfr.keys["ec256"]  # the voucher has no entries: its owner is the manufacturer
    owner = Owner(keys={"ec256": owner_key}, vouchers={voucher.guid: voucher})
    return World(mfr, Rendezvous(), owner, device_key, owner_key, credential, voucher)


def _clients() -> dict[str, Callable[[], ClientMachine[Any]]]:
    w = world()
    addr = RVTO2Addr((RVTO2AddrEntry(None, "owner.example", 8043, TransportProtocol.HTTP),))
    return {
        "DIDevice": lambda: DIDevice(key=w.device_key, serial="SN-1", model="m"),
        "TO0Owner": lambda: TO0Owner(
            voucher=w.voucher, owner_key=w.owner_key, rv_to2_addr=addr, wait_seconds=60
        ),
        "TO1Device": lambda: TO1Device(w.credential),
        "TO2Device": lambda: TO2Device(
            w.credential, service_info=DeviceServiceInfoDriver(sample_devmod()), to1d=None
        ),
    }


def _servers() -> dict[str, Callable[[], ServerMachine[Any]]]:
    w = world()
    return {
        "DIManufacturer": lambda: DIManufacturer(w.mfr, now=NOW),
        "TO0Rendezvous": lambda: TO0Rendezvous(w.rv),
        "TO1Rendezvous": lambda: TO1Rendezvous(w.rv),
        "TO2Owner": lambda: TO2Owner(w.owner),
    }


#: The server each client opens, and the reply type each client expects first.
PAIRS = {
    "DIManufacturer": ("DIDevice", MsgType.DI_APP_START),
    "TO0Rendezvous": ("TO0Owner", MsgType.TO0_HELLO),
    "TO1Rendezvous": ("TO1Device", MsgType.TO1_HELLO_RV),
    "TO2Owner": ("TO2Device", MsgType.TO2_HELLO_DEVICE),
}
FIRST_REPLY = {
    "DIDevice": MsgType.DI_SET_CREDENTIALS,
    "TO0Owner": MsgType.TO0_HELLO_ACK,
    "TO1Device": MsgType.TO1_HELLO_RV_ACK,
    "TO2Device": MsgType.TO2_PROVE_OV_HDR,
}

bodies = arbitrary_bytes | any_cbor.map(codec.encode)


@SETTINGS
@given(st.sampled_from(sorted(PAIRS)), st.integers(0, 300), bodies)
def test_server_handle_raises_only_fdo_errors(name: str, msg_type: int, body: bytes) -> None:
    server = _servers()[name]()
    _only_fdo_errors(lambda: server.handle(msg_type, body))


@SETTINGS
@given(st.sampled_from(sorted(PAIRS)), bodies | st.just(b""), st.booleans(), edits)
def test_server_first_message_raises_only_fdo_errors(
    name: str, body: bytes, mutate_valid: bool, changes: list[tuple[int, int]]
) -> None:
    """The opening message type with arbitrary bodies, or the client's real opening mutated."""
    client_name, first = PAIRS[name]
    if mutate_valid:
        msg_type, valid = _clients()[client_name]().start()
        assert msg_type == first
        body = _mutate(valid, changes)
    server = _servers()[name]()
    _only_fdo_errors(lambda: server.handle(first, body))


@SETTINGS
@given(st.sampled_from(sorted(FIRST_REPLY)), st.integers(0, 300), bodies)
def test_client_receive_raises_only_fdo_errors(name: str, msg_type: int, body: bytes) -> None:
    client = _clients()[name]()
    client.start()
    _only_fdo_errors(lambda: client.receive(msg_type, body))


@SETTINGS
@given(st.sampled_from(sorted(FIRST_REPLY)), st.sampled_from([0, 255]), bodies)
def test_client_expected_reply_raises_only_fdo_errors(name: str, pick: int, body: bytes) -> None:
    """The reply type each client waits for (or an ErrorMessage) with arbitrary bodies."""
    client = _clients()[name]()
    client.start()
    msg_type = MsgType.ERROR if pick == 255 else FIRST_REPLY[name]
    _only_fdo_errors(lambda: client.receive(msg_type, body))
    assert client.failed


@SETTINGS
@given(st.integers(0, (1 << 64) - 1))
def test_head_length_is_the_length_of_the_head(n: int) -> None:
    assert codec.head_length(n) == len(codec.bstr_head(n)) == len(ref_head(2, n))
