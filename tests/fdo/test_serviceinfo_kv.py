"""ServiceInfo KVs, chunking and reassembly (fdo.serviceinfo.kv)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoError, FdoUsageError, MessageBodyError
from fdo.serviceinfo import (
    DEFAULT_MTU,
    DEVICE_SLACK,
    OWNER_SLACK,
    OutQueue,
    Reassembler,
    ServiceInfoKV,
    chunk_kvs,
    decode_service_info,
    encode_service_info,
    max_bstr_data,
    max_value_size,
    service_info_size,
)
from fdo.serviceinfo._framing import Framer


def _astarte(vectors_dir: Path, name: str) -> bytes:
    return (vectors_dir / "astarte" / f"astarte_fdo_protocol__v101__{name}.snap.cbor").read_bytes()


# --------------------------------------------------------------------------- KV encoding


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("80"), []),
        (
            bytes.fromhex("8182696465766d6f643a6f7346654c696e7578"),
            [ServiceInfoKV("devmod:os", codec.encode("Linux"))],
        ),
        (
            bytes.fromhex("828269666f6f3a62613a723141018269666f6f3a6261723a324102"),
            [ServiceInfoKV("foo:ba:r1", b"\x01"), ServiceInfoKV("foo:bar:2", b"\x02")],
        ),
    ],
)
def test_service_info_round_trip(data: bytes, expected: list[ServiceInfoKV]) -> None:
    kvs = decode_service_info(codec.decode(data))
    assert kvs == expected
    assert codec.encode(encode_service_info(kvs)) == data
    assert service_info_size(kvs) == len(data)


@pytest.mark.parametrize(
    "name", ["service_info__tests__service_info_roundtrip", "service_info__tests__service_info_roundtrip-2"]
)
def test_astarte_service_info_vectors(vectors_dir: Path, name: str) -> None:
    data = _astarte(vectors_dir, name)
    assert codec.encode(encode_service_info(decode_service_info(codec.decode(data)))) == data


def test_astarte_owner_service_info_vector(vectors_dir: Path) -> None:
    name = "to2__owner_service_info__tests__owner_service_info_roundtrip"
    is_more, is_done, si = codec.decode(_astarte(vectors_dir, name))
    kvs = decode_service_info(si)
    assert (is_more, is_done) == (True, False)
    # astarte's test key has no ':'; it reads as a module name with an empty message.
    assert kvs == [ServiceInfoKV("key", b"value")]
    assert (kvs[0].module, kvs[0].message) == ("key", "")


def test_key_is_split_at_first_colon() -> None:
    kv = ServiceInfoKV.of("fdo.example", "a:b", [1, "x"])
    assert kv.key == "fdo.example:a:b"
    assert (kv.module, kv.message) == ("fdo.example", "a:b")
    assert kv.decoded() == [1, "x"]
    assert kv.size() == len(codec.encode(kv.to_cbor_obj()))


@pytest.mark.parametrize("module", ["", "a:b"])
def test_of_rejects_bad_module_names(module: str) -> None:
    with pytest.raises(FdoUsageError):
        ServiceInfoKV.of(module, "m", 1)


@pytest.mark.parametrize("obj", [[[[]]], [[]], [[[]], [[]]]])
def test_java_empty_forms_read_as_empty(obj: CborValue) -> None:
    assert decode_service_info(obj) == []
    assert encode_service_info([]) == []


@pytest.mark.parametrize(
    "obj",
    [
        {},
        "x",
        [["a:b"]],
        [["a:b", "text"]],
        [[b"a:b", b"\x01"]],
        [["a:b", b"\x01", 3]],
    ],
)
def test_decode_rejects_bad_shapes(obj: CborValue) -> None:
    with pytest.raises(MessageBodyError):
        decode_service_info(obj)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 100), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(cbor_values)
def test_decode_service_info_raises_only_fdo_errors(obj: CborValue) -> None:
    try:
        decode_service_info(obj)
    except FdoError:
        pass


@given(st.lists(st.tuples(st.sampled_from(["a:b", "c:d"]), cbor_values), max_size=5))
def test_decode_service_info_accepts_well_formed(items: list[tuple[str, CborValue]]) -> None:
    si = [[k, codec.encode(v)] for k, v in items]
    kvs = decode_service_info(codec.decode(codec.encode(si)))
    assert [kv.decoded() for kv in kvs] == [codec.decode(codec.encode(v)) for _, v in items]


# --------------------------------------------------------------------------- sizing


@pytest.mark.parametrize("budget", [20, 30, 40, 300, 1295, 1297, 70000])
def test_max_value_and_bstr_sizes_are_tight(budget: int) -> None:
    key = "fdo.download:data"
    n = max_value_size(key, budget)
    if n < 0:
        assert service_info_size([ServiceInfoKV(key, b"")]) > budget
        return
    assert service_info_size([ServiceInfoKV(key, bytes(n))]) <= budget
    assert service_info_size([ServiceInfoKV(key, bytes(n + 1))]) > budget
    d = max_bstr_data(key, budget)
    assert service_info_size([ServiceInfoKV.of("fdo.download", "data", bytes(d))]) <= budget
    assert service_info_size([ServiceInfoKV.of("fdo.download", "data", bytes(d + 1))]) > budget


def test_download_block_fits_default_mtu() -> None:
    # The FSIM's 1014-byte block fits in one OwnerServiceInfo at the default MTU.
    assert max_bstr_data("fdo.download:data", DEFAULT_MTU - OWNER_SLACK) >= 1014


# --------------------------------------------------------------------------- chunking


def _check_chunks(chunks: list[list[ServiceInfoKV]], mtu: int, slack: int) -> None:
    for chunk in chunks:
        assert chunk
        assert len(codec.encode(encode_service_info(chunk))) + slack <= mtu


def _reassemble(chunks: list[list[ServiceInfoKV]]) -> list[tuple[str, bytes]]:
    reasm = Reassembler()
    out = []
    for chunk in chunks:  # one chunk per message; state survives between them
        reasm = Reassembler.from_state(codec.decode(codec.encode(reasm.to_state())))
        for msg in reasm.feed_all(chunk):
            out.append((f"{msg.module}:{msg.message}", codec.encode(msg.value)))
    reasm.finish()
    return out


kv_strategy = st.builds(
    ServiceInfoKV.of,
    st.sampled_from(["devmod", "fdo.download", "x"]),
    st.sampled_from(["data", "a", "long-message-name-" * 3]),
    st.one_of(st.binary(max_size=5000), cbor_values, st.lists(st.binary(max_size=300), max_size=8)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(kv_strategy, max_size=12), st.integers(min_value=120, max_value=3000), st.sampled_from([3, 5])
)
def test_chunks_fit_and_reassemble(kvs: list[ServiceInfoKV], mtu: int, slack: int) -> None:
    chunks = chunk_kvs(kvs, mtu, slack=slack)
    _check_chunks(chunks, mtu, slack)
    assert [(kv.key, kv.value) for kv in kvs] == _reassemble(chunks)


@pytest.mark.parametrize("mtu", [256, 1300, 65535])
def test_value_far_larger_than_mtu(mtu: int) -> None:
    big = os.urandom(300_000)
    kvs = [
        ServiceInfoKV.of("m", "before", 1),
        ServiceInfoKV.of("m", "big", big),
        ServiceInfoKV.of("m", "big", [big[:5000], "x"]),
        ServiceInfoKV.of("m", "after", "end"),
    ]
    chunks = chunk_kvs(kvs, mtu, slack=DEVICE_SLACK)
    _check_chunks(chunks, mtu, DEVICE_SLACK)
    assert len(chunks) > 300_000 // mtu
    assert _reassemble(chunks) == [(kv.key, kv.value) for kv in kvs]


def test_small_values_are_not_split() -> None:
    kvs = [ServiceInfoKV.of("m", "v", bytes(1000)) for _ in range(3)]
    chunks = chunk_kvs(kvs, 1300, slack=OWNER_SLACK)
    assert [len(c) for c in chunks] == [1, 1, 1]
    assert all(c[0] == kv for c, kv in zip(chunks, kvs, strict=True))


def test_mtu_too_small_for_key() -> None:
    with pytest.raises(FdoUsageError):
        chunk_kvs([ServiceInfoKV.of("m" * 300, "x", 1)], 256, slack=5)


def test_out_queue_state_round_trip() -> None:
    queue = OutQueue([ServiceInfoKV.of("m", "a", bytes(3000)), ServiceInfoKV.of("m", "b", 2)])
    first = queue.take(1000)
    restored = OutQueue.from_state(codec.decode(codec.encode(queue.to_state())))
    rest: list[list[ServiceInfoKV]] = []
    while restored:
        rest.append(restored.take(1000))
    assert _reassemble([first, *rest]) == [("m:a", codec.encode(bytes(3000))), ("m:b", b"\x02")]


# --------------------------------------------------------------------------- reassembly


def test_same_key_stream_may_hold_several_items() -> None:
    # go joins consecutive same-key KVs into one stream of CBOR items.
    reasm = Reassembler()
    stream = codec.encode(b"abc") + codec.encode(b"de") + codec.encode([1, 2])
    out = reasm.feed_all([ServiceInfoKV("m:data", stream[:5]), ServiceInfoKV("m:data", stream[5:])])
    assert [m.value for m in out] == [b"abc", b"de", [1, 2]]
    assert not reasm.pending


def test_fragment_kept_across_rounds() -> None:
    value = codec.encode({"k": bytes(100)})
    reasm = Reassembler()
    assert reasm.feed(ServiceInfoKV("m:x", value[:10])) == []
    assert reasm.pending
    reasm = Reassembler.from_state(codec.decode(codec.encode(reasm.to_state())))
    (msg,) = reasm.feed(ServiceInfoKV("m:x", value[10:]))
    assert msg == ("m", "x", {"k": bytes(100)})
    reasm.finish()


def test_indefinite_length_items() -> None:
    data = bytes.fromhex("9f01825f4161ff0203ff") + bytes.fromhex("bf6161f5ff")
    framer = Framer(1000)
    ends = []
    for i in range(len(data)):  # one byte at a time
        ends += [i + end for end in framer.feed(data[i : i + 1])]
    assert ends == [10, 15]
    assert framer.idle
    out = Reassembler().feed(ServiceInfoKV("m:x", data))
    assert [m.value for m in out] == [[1, [b"a", 2], 3], {"a": True}]


@pytest.mark.parametrize(
    "kvs",
    [
        [ServiceInfoKV("m:a", b"\x82\x01"), ServiceInfoKV("m:b", b"\x02")],  # key changed mid-value
        [ServiceInfoKV("m:a", b"")],  # empty value
        [ServiceInfoKV("m:a", b"\x1c")],  # reserved head
        [ServiceInfoKV("m:a", b"\xff")],  # stray break
        [ServiceInfoKV("m:a", b"\x5b" + (2**40).to_bytes(8, "big"))],  # longer than the cap
        [ServiceInfoKV("m:a", b"\x81" * 100 + b"\x01")],  # too deep
    ],
)
def test_reassembler_rejects(kvs: list[ServiceInfoKV]) -> None:
    with pytest.raises(MessageBodyError):
        Reassembler().feed_all(kvs)


def test_reassembler_cap_and_finish() -> None:
    reasm = Reassembler(max_size=100)
    with pytest.raises(MessageBodyError):  # the head alone announces too much
        reasm.feed(ServiceInfoKV("m:a", codec.encode(bytes(200))[:60]))
    reasm = Reassembler(max_size=100)
    value = codec.encode([bytes(40)] * 3)
    reasm.feed(ServiceInfoKV("m:a", value[:60]))
    with pytest.raises(MessageBodyError):  # the pieces add up to too much
        reasm.feed(ServiceInfoKV("m:a", value[60:]))
    reasm = Reassembler()
    reasm.feed(ServiceInfoKV("m:a", b"\x82\x01"))
    with pytest.raises(MessageBodyError):
        reasm.finish()


@given(st.lists(st.binary(max_size=30), max_size=8))
def test_reassembler_raises_only_fdo_errors(pieces: list[bytes]) -> None:
    reasm = Reassembler(max_size=1000)
    try:
        for piece in pieces:
            reasm.feed(ServiceInfoKV("m:x", piece))
        reasm.finish()
    except FdoError:
        pass
