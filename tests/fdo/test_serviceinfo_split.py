"""The device splits its ServiceInfo to the owner's maxDeviceServiceInfoSz (spec §3.8, TO2 68/69).

A devmod larger than the owner's limit goes out in several TO2.DeviceServiceInfo messages
with IsMoreServiceInfo true until the last; the owner answers each of those with an empty
OwnerServiceInfo ``[false, false, []]`` and chooses its modules only once devmod is
complete. Checked at message level (every encoded 68 body within the limit, KVs in order,
the flags) and in full TO2 runs against our owner with a small limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from fdo import codec
from fdo.crypto import PrivateKeyT, PublicKey, generate_key
from fdo.errors import InvalidMessageError
from fdo.serviceinfo import (
    DeviceServiceInfoDriver,
    Devmod,
    DownloadDevice,
    DownloadOwner,
    OwnerModule,
    OwnerServiceInfoDriver,
    Reassembler,
    decode_service_info,
    encode_service_info,
    restore_standard,
)
from fdo.types import MsgType
from tests.fdo.flow import Owner, make_manufacturer, run_di, run_to2, sample_devmod

#: A device announcing many vendor modules: its devmod alone is over 3 kB.
MODULES = ("devmod", *(f"com.example.sensor-{i:03d}" for i in range(120)))
BIG = dataclasses.replace(sample_devmod(), sn="SN-0001", modules=MODULES)


def _run(device: DeviceServiceInfoDriver, mtu: int) -> tuple[list[list[object]], list[object], Devmod, int]:
    """68/69 rounds over bytes until the owner chose its modules; the owner is rebuilt each round.

    Returns the decoded 68 bodies, the decoded 69 bodies, the owner's devmod and the
    round (1-based) in which the owner's ``select`` ran.
    """
    state = OwnerServiceInfoDriver(None, mtu=1300).to_state()
    device_bodies: list[list[object]] = []
    owner_bodies: list[object] = []
    selected_at: list[int] = []

    def select(devmod: Devmod) -> Sequence[OwnerModule]:
        selected_at.append(len(device_bodies))
        return []

    while not device.done:
        request = device.next_request()
        body = codec.encode([request.is_more, encode_service_info(request.service_info)])
        assert len(body) <= mtu, f"DeviceServiceInfo of {len(body)} bytes over the owner's {mtu}"
        is_more, si = codec.decode(body)
        device_bodies.append([is_more, si])
        owner = OwnerServiceInfoDriver.from_state(state, restore_standard)
        reply = owner.handle(codec.as_bool(is_more, "is_more"), decode_service_info(si), select=select)
        state = owner.to_state()
        out = codec.decode(
            codec.encode([reply.is_more, reply.is_done, encode_service_info(reply.service_info)])
        )
        owner_bodies.append(out)
        device.handle_reply(reply.is_more, reply.is_done, reply.service_info)
    final = OwnerServiceInfoDriver.from_state(state, restore_standard)
    assert final.devmod is not None and len(selected_at) == 1
    return device_bodies, owner_bodies, final.devmod, selected_at[0]


@pytest.mark.parametrize("mtu", [128, 300, 1300])
def test_devmod_over_the_limit_goes_in_several_messages(mtu: int) -> None:
    device = DeviceServiceInfoDriver(BIG)
    device.set_mtu(mtu)  # as TO2.OwnerServiceInfoReady said
    sent, replies, devmod, selected_at = _run(device, mtu)

    # The owner runs no module: every 68 is devmod. IsMore on all but the last.
    n = len(sent)
    assert n >= 3 and [is_more for is_more, _ in sent] == [True] * (n - 1) + [False]
    # Each IsMore is answered with an empty OwnerServiceInfo, as the spec says; the
    # last devmod message is answered with IsDone.
    assert replies == [[False, False, []]] * (n - 1) + [[False, True, []]]
    # The owner chose its modules in the round that completed devmod, not before.
    assert selected_at == n
    # KVs arrive in order: joined (fragments too) they are devmod's messages, unchanged.
    reasm = Reassembler()
    got = [m for _, si in sent for m in reasm.feed_all(decode_service_info(si))]
    want = [(kv.module, kv.message, kv.decoded()) for kv in BIG.to_kvs(mtu)]
    assert [tuple(m) for m in got] == want
    assert devmod == BIG


def test_a_value_too_large_for_one_message_is_cut_go_style() -> None:
    """A single KV over the limit (a 700-character serial at 256) goes as same-key fragments."""
    devmod = dataclasses.replace(sample_devmod(), sn="S" * 700)
    device = DeviceServiceInfoDriver(devmod, mtu=256)
    sent, _, seen, _ = _run(device, 256)
    sn_kvs = [kv for _, si in sent for kv in decode_service_info(si) if kv.key == "devmod:sn"]
    assert len(sn_kvs) >= 3 and b"".join(kv.value for kv in sn_kvs) == codec.encode("S" * 700)
    assert seen.sn == "S" * 700


def test_owner_limit_below_256_is_honoured() -> None:
    """No floor on the device side: it never sends more than the owner accepts."""
    device = DeviceServiceInfoDriver(BIG)
    device.set_mtu(96)
    sent, _, seen, _ = _run(device, 96)
    assert len(sent) > 40 and seen == BIG


def test_owner_limit_too_small_for_a_key_fails_clearly() -> None:
    device = DeviceServiceInfoDriver(BIG)
    device.set_mtu(24)
    with pytest.raises(InvalidMessageError, match="maxDeviceServiceInfoSz 24 is too small"):
        device.next_request()


# ---------------------------------------------------------------------------- full TO2 runs


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKeyT]:
    return {kind: generate_key(kind) for kind in ("ec256", "ec384")}


def _onboard(
    keys: dict[str, PrivateKeyT], devmod: Devmod, owner_mtu: int, modules: Sequence[OwnerModule] = ()
) -> tuple[Owner, list[int], dict[str, bytes]]:
    owner_key = generate_key("ec256")
    credential, voucher = run_di(make_manufacturer(keys), generate_key("ec256"))
    voucher = voucher.extend(keys["ec256"], PublicKey.from_key(owner_key.public_key()))
    owner = Owner(
        {"ec256": owner_key},
        vouchers={voucher.guid: voucher},
        modules=lambda guid, dm: list(modules),
        restore=restore_standard,
    )
    types: list[int] = []

    def watch(msg_type: int, body: bytes) -> bytes:
        types.append(msg_type)
        return body

    files: dict[str, bytes] = {}
    driver = DeviceServiceInfoDriver(devmod, [DownloadDevice(files.__setitem__)])
    client, server = run_to2(owner, credential, None, device_si=driver, tamper=watch, owner_mtu=owner_mtu)
    assert client.done and server.done and client.new_credential is not None
    return owner, types, files


@pytest.mark.parametrize("owner_mtu", [200, 512])
def test_to2_with_a_devmod_larger_than_the_owner_limit(keys: dict[str, PrivateKeyT], owner_mtu: int) -> None:
    devmod = dataclasses.replace(BIG, modules=(*MODULES, "fdo.download"))
    payload = bytes(range(256)) * 8
    owner, types, files = _onboard(keys, devmod, owner_mtu, [DownloadOwner("/etc/motd", payload)])
    # The owner saw devmod once, whole, only after all of it arrived.
    assert len(owner.seen_devmod) == 1 and owner.seen_devmod[0] == devmod
    assert files == {"/etc/motd": payload}  # and the modules ran afterwards
    devmod_size = len(codec.encode(encode_service_info(devmod.to_kvs(owner_mtu))))
    assert types.count(int(MsgType.TO2_DEVICE_SERVICE_INFO)) > devmod_size // owner_mtu
    assert types[-1] == int(MsgType.TO2_DONE2)


def test_to2_default_limit_1300(keys: dict[str, PrivateKeyT]) -> None:
    owner, types, _ = _onboard(keys, BIG, 1300)
    assert owner.seen_devmod == [BIG]
    assert types.count(int(MsgType.TO2_DEVICE_SERVICE_INFO)) >= 3  # 3 kB of devmod
