"""devmod writing and go-compatible validation (fdo.serviceinfo.devmod)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import FdoError, FdoUsageError, InvalidMessageError, MessageBodyError
from fdo.serviceinfo import (
    DEVICE_SLACK,
    Devmod,
    DevmodParser,
    ServiceInfoKV,
    decode_service_info,
    service_info_size,
)

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=20)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=15,
)

DEVMOD = Devmod(
    os="Linux",
    arch="x86_64",
    version="Fedora 41",
    device="bootc-test",
    sep=":",
    bin="x86_64",
    sn=b"\x01\x02",
    pathsep="/",
    nl="\n",
    tmp="/tmp",
    dir="/var/lib/fdo",
    progenv="bin:py3",
    mudurl="https://example.com/mud",
    modules=("devmod", "fdo.command", "fdo.download", "fdo.upload"),
)


def _parse(kvs: list[ServiceInfoKV]) -> DevmodParser:
    parser = DevmodParser()
    for kv in kvs:
        parser.feed(kv)
    return parser


def test_to_kvs_order_and_round_trip() -> None:
    kvs = DEVMOD.to_kvs()
    assert [kv.message for kv in kvs] == [
        "active",
        "os",
        "arch",
        "version",
        "device",
        "sn",
        "pathsep",
        "sep",
        "nl",
        "tmp",
        "dir",
        "progenv",
        "bin",
        "mudurl",
        "nummodules",
        "modules",
    ]
    assert kvs[0] == ServiceInfoKV("devmod:active", b"\xf5")
    assert kvs[-1].decoded() == [0, 4, *DEVMOD.modules]
    parser = _parse(kvs)
    assert parser.complete
    assert parser.result() == DEVMOD
    assert parser.result().nummodules == 4


def test_optional_fields_are_omitted_and_sn_may_be_text() -> None:
    devmod = Devmod(
        os="a", arch="b", version="c", device="d", sep=";", bin="b", sn="SN1", modules=("devmod",)
    )
    kvs = devmod.to_kvs()
    assert {kv.message for kv in kvs} == {
        "active",
        "os",
        "arch",
        "version",
        "device",
        "sn",
        "sep",
        "bin",
        "nummodules",
        "modules",
    }
    assert _parse(kvs).result() == devmod


def test_long_module_list_is_split_within_mtu() -> None:
    names = ("devmod", *(f"com.example.module-{i:03d}" for i in range(60)))
    devmod = dataclasses.replace(DEVMOD, modules=names)
    mtu = 300
    kvs = devmod.to_kvs(mtu)
    chunks = [kv for kv in kvs if kv.message == "modules"]
    assert len(chunks) > 3
    assert all(service_info_size([kv]) + DEVICE_SLACK <= mtu for kv in chunks)
    starts = [kv.decoded()[0] for kv in chunks]
    counts = [kv.decoded()[1] for kv in chunks]
    assert starts == [sum(counts[:i]) for i in range(len(counts))]
    parser = DevmodParser()
    for kv in kvs:
        assert not parser.complete
        parser.feed(kv)
    assert parser.result().modules == names


@pytest.mark.parametrize("change", [{"os": ""}, {"bin": ""}, {"modules": ()}, {"modules": ("fdo.x",)}])
def test_to_kvs_rejects_incomplete_devmod(change: dict[str, object]) -> None:
    with pytest.raises(FdoUsageError):
        dataclasses.replace(DEVMOD, **change).to_kvs()  # type: ignore[arg-type]


def test_astarte_device_service_info_vector(vectors_dir: Path) -> None:
    name = "astarte_fdo_protocol__v101__to2__device_service_info__tests__device_service_info_roundtrip"
    body = codec.decode((vectors_dir / "astarte" / f"{name}.snap.cbor").read_bytes())
    is_more, si = body
    parser = _parse(decode_service_info(si))
    assert is_more is False
    devmod = parser.result()
    assert (devmod.os, devmod.arch, devmod.version, devmod.device) == (
        "Linux",
        "x86_64",
        "Ubuntu* 16.0.4LTS",
        "fdo-astarte",
    )
    assert devmod.sn == "device-sn"
    assert devmod.nummodules == 6


def _base() -> DevmodParser:
    parser = DevmodParser()
    for name in ("os", "arch", "version", "device", "sep", "bin"):
        parser.feed_value(name, "x")
    return parser


def test_go_start_index_quirk() -> None:
    # go puts a chunk at the first empty slot whatever its start says.
    parser = _base()
    parser.feed_value("nummodules", 3)
    parser.feed_value("modules", [0, 2, "devmod", "a"])
    parser.feed_value("modules", [0, 1, "b"])
    assert parser.result().modules == ("devmod", "a", "b")


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([("colour", "red")], InvalidMessageError),  # go: unknown devmod message name
        ([("modules", [0, 1, "devmod"])], InvalidMessageError),  # before nummodules
        ([("nummodules", 2), ("nummodules", 3)], InvalidMessageError),
        ([("nummodules", 2), ("modules", [0, 2, "devmod"])], InvalidMessageError),  # count != names
        ([("nummodules", 1), ("modules", [0, 2, "devmod", "x"])], InvalidMessageError),  # past end
        ([("nummodules", 2), ("modules", [3, 1, "devmod"])], InvalidMessageError),  # start > num
        ([("nummodules", 1), ("modules", [0, 1, ""])], InvalidMessageError),  # empty name
        ([("nummodules", 0)], MessageBodyError),
        ([("nummodules", "2")], MessageBodyError),
        ([("nummodules", 1), ("modules", [0])], MessageBodyError),
        ([("nummodules", 1), ("modules", [0, 1, 7])], MessageBodyError),
        ([("nummodules", 1), ("modules", "devmod")], MessageBodyError),
        ([("os", b"Linux")], MessageBodyError),
        ([("sn", 12)], MessageBodyError),
        ([("active", 1)], MessageBodyError),
        # A NUL is in no real value, and PostgreSQL cannot store one.
        ([("device", "kiosk\x00")], MessageBodyError),
        ([("sn", "SN\x00")], MessageBodyError),
        ([("nummodules", 2), ("modules", [0, 1, "dev\x00mod"])], MessageBodyError),
    ],
)
def test_parser_rejects(messages: list[tuple[str, CborValue]], error: type[FdoError]) -> None:
    parser = _base()
    with pytest.raises(error):
        for name, value in messages:
            parser.feed_value(name, value)


@pytest.mark.parametrize("missing", ["os", "arch", "version", "device", "sep", "bin"])
def test_required_fields_checked_when_modules_complete(missing: str) -> None:
    kvs = [kv for kv in DEVMOD.to_kvs() if kv.message != missing]
    parser = DevmodParser()
    with pytest.raises(InvalidMessageError, match=missing):
        for kv in kvs:
            parser.feed(kv)


def test_result_before_complete_is_usage_error() -> None:
    with pytest.raises(FdoUsageError):
        _base().result()


def test_feed_rejects_other_modules() -> None:
    with pytest.raises(InvalidMessageError):
        DevmodParser().feed(ServiceInfoKV.of("fdo.command", "active", True))


def test_parser_state_round_trip() -> None:
    kvs = DEVMOD.to_kvs()
    parser = _parse(kvs[:-1])
    parser = DevmodParser.from_state(codec.decode(codec.encode(parser.to_state())))
    assert not parser.complete
    parser.feed(kvs[-1])
    assert parser.result() == DEVMOD


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["active", "os", "sn", "nummodules", "modules", "bin", "x"])
            | st.text(max_size=8),
            cbor_values | st.lists(st.integers(0, 5) | st.text(max_size=5), max_size=6),
        ),
        max_size=10,
    )
)
def test_parser_raises_only_fdo_errors(messages: list[tuple[str, CborValue]]) -> None:
    parser = DevmodParser()
    try:
        for name, value in messages:
            parser.feed_value(name, value)
        if parser.complete:
            parser.result()
    except FdoError:
        pass


@given(st.binary(max_size=60))
def test_parser_feed_raw_bytes_raises_only_fdo_errors(value: bytes) -> None:
    try:
        DevmodParser().feed(ServiceInfoKV("devmod:modules", value))
    except FdoError:
        pass
