"""Empty lists written as CBOR ``null``, as Go encoders that map a nil slice to null do.

go-fdo's own encoder writes a nil slice as ``[]``, but Go peers built on fxamacker/cbor
(its default ``NilContainerAsNull``) write ``null`` (0xf6). Where the CDDL allows an
empty list (``[* x]``) that reads as ``[]``; where it requires one element (``[+ x]``)
null stays a message body error. What we write is always ``[]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fdo import codec
from fdo.crypto import PrivateKeyT, PublicKey, generate_key
from fdo.errors import MessageBodyError
from fdo.machine import Reply
from fdo.rvinfo import RendezvousInfo, RVTO2Addr
from fdo.serviceinfo import (
    CommandDevice,
    CommandOwner,
    DeviceServiceInfoDriver,
    Devmod,
    DownloadDevice,
    DownloadOwner,
    OwnerModule,
    ServiceInfoKV,
    decode_service_info,
    restore_standard,
)
from fdo.to2.device import TO2Device
from fdo.to2.messages import TO2DeviceServiceInfo, TO2OwnerServiceInfo
from fdo.to2.owner import TO2Owner
from fdo.types import Guid, MsgType
from fdo.voucher import OwnershipVoucher
from tests.fdo.flow import Owner, make_manufacturer, run_di, run_pair, sample_devmod

# --------------------------------------------------------------------------- 68 and 69


def test_device_service_info_null_is_empty() -> None:
    msg = TO2DeviceServiceInfo.decode(bytes.fromhex("82f4f6"))  # [false, null]
    assert msg == TO2DeviceServiceInfo(is_more=False, service_info=())
    assert msg.encode() == bytes.fromhex("82f480")  # written back as [false, []]
    assert TO2DeviceServiceInfo.decode(bytes.fromhex("82f5f6")).is_more


def test_owner_service_info_null_is_empty() -> None:
    msg = TO2OwnerServiceInfo.decode(bytes.fromhex("83f4f4f6"))  # [false, false, null]
    assert msg == TO2OwnerServiceInfo(is_more=False, is_done=False, service_info=())
    assert msg.encode() == bytes.fromhex("83f4f480")
    done = TO2OwnerServiceInfo.decode(bytes.fromhex("83f4f5f6"))  # [false, true, null]
    assert done.is_done and done.service_info == ()


@pytest.mark.parametrize("body", ["82f4f5", "82f400", "82f4a0", "82f4818100"])
def test_device_service_info_other_non_lists_still_refused(body: str) -> None:
    with pytest.raises(MessageBodyError):
        TO2DeviceServiceInfo.decode(bytes.fromhex(body))


def test_service_info_null_kv_is_refused() -> None:
    # Only the ServiceInfo array itself may be null, not one of its [key, value] pairs.
    with pytest.raises(MessageBodyError):
        decode_service_info([None])
    assert decode_service_info(None) == []


# --------------------------------------------------------------------------- a TO2 run


def _nullify(plaintext: bytes, msg_type: MsgType) -> bytes:
    """Re-encode an empty ServiceInfo as null, byte for byte as a Go peer would."""
    if msg_type == MsgType.TO2_DEVICE_SERVICE_INFO and plaintext.endswith(b"\x80") and len(plaintext) == 3:
        return plaintext[:-1] + b"\xf6"
    if msg_type == MsgType.TO2_OWNER_SERVICE_INFO and plaintext.endswith(b"\x80") and len(plaintext) == 4:
        return plaintext[:-1] + b"\xf6"
    return plaintext


class GoStyleDevice(TO2Device):
    """Our device, but writing an empty DeviceServiceInfo as ``[IsMore, null]``."""

    nulls_sent = 0

    def _encrypt(self, msg_type: MsgType, plaintext: bytes) -> Reply:
        out = _nullify(plaintext, msg_type)
        if out != plaintext:
            self.nulls_sent += 1
            assert out in (bytes.fromhex("82f4f6"), bytes.fromhex("82f5f6"))
        return super()._encrypt(msg_type, out)


class GoStyleOwner(TO2Owner):
    """Our owner, but writing an empty OwnerServiceInfo as ``[IsMore, IsDone, null]``."""

    nulls_sent: list[bytes] = []

    def _encrypt(self, msg_type: MsgType, plaintext: bytes) -> Reply:
        out = _nullify(plaintext, msg_type)
        if out != plaintext:
            GoStyleOwner.nulls_sent.append(out)
        return super()._encrypt(msg_type, out)


class Recorder:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: list[list[str]] = []

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def run(self, argv: Sequence[str]) -> tuple[int, bytes, bytes]:
        self.commands.append(list(argv))
        return 0, b"", b""


PAYLOAD = bytes(range(256)) * 40  # several chunks: the device answers some with nothing


def _modules(guid: Guid, devmod: Devmod) -> Sequence[OwnerModule]:
    return [DownloadOwner("/etc/fdo/a.toml", PAYLOAD), CommandOwner("systemctl", ["enable", "a"])]


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKeyT]:
    return {"ec256": generate_key("ec256"), "ec384": generate_key("ec384")}


def test_to2_with_null_service_info_both_ways(keys: dict[str, PrivateKeyT]) -> None:
    mfr = make_manufacturer(keys)
    credential, voucher = run_di(mfr, generate_key("ec256"))
    owner_key = generate_key("ec256")
    voucher = voucher.extend(keys["ec256"], PublicKey.from_key(owner_key.public_key()))
    owner = Owner(keys={"ec256": owner_key}, vouchers={voucher.guid: voucher}, modules=_modules)
    owner.restore = restore_standard
    recorder = Recorder()
    device = GoStyleDevice(
        credential,
        service_info=DeviceServiceInfoDriver(
            sample_devmod(), [DownloadDevice(recorder.write), CommandDevice(recorder.run)]
        ),
        to1d=None,
    )
    GoStyleOwner.nulls_sent = []
    server = run_pair(device, lambda: GoStyleOwner(owner), lambda s: GoStyleOwner.from_state(s, owner))

    assert isinstance(server, TO2Owner) and device.done and device.new_credential is not None
    # The device's 68s after devmod carried [false, null]; the owner's final 69 [false, true, null].
    assert device.nulls_sent >= 2
    assert bytes.fromhex("83f4f5f6") in GoStyleOwner.nulls_sent
    assert recorder.files == {"/etc/fdo/a.toml": PAYLOAD}
    assert recorder.commands == [["systemctl", "enable", "a"]]


# --------------------------------------------------------------------------- elsewhere


def test_voucher_without_entries_as_null(keys: dict[str, PrivateKeyT]) -> None:
    credential, voucher = run_di(make_manufacturer(keys), generate_key("ec256"))
    data = voucher.encode()
    assert data.endswith(b"\x80")  # OVEntries = [] as we write it
    go_form = data[:-1] + b"\xf6"
    decoded = OwnershipVoucher.decode(go_form)
    assert decoded.entries == ()
    decoded.verify(hmac_secret=credential.hmac_secret)
    assert decoded.encode() == go_form  # kept verbatim
    owner = generate_key("ec256")
    extended = decoded.extend(keys["ec256"], PublicKey.from_key(owner.public_key()))
    assert len(OwnershipVoucher.decode(extended.encode()).entries) == 1


def test_command_args_null_is_no_arguments() -> None:
    ran: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, bytes, bytes]:
        ran.append(list(argv))
        return 0, b"", b""

    device = CommandDevice(run)
    device.activate(True)
    device.handle("command", "reboot")
    device.handle("args", codec.decode(codec.encode(codec.encode(None))))  # bstr .cbor null
    assert device.handle("execute", None)[-1] == ("exitcode", 0)
    device.handle("command", "sync")
    device.handle("args", None)  # null, not wrapped
    device.handle("execute", None)
    assert ran == [["reboot"], ["sync"]]


@pytest.mark.parametrize(
    ("parse", "what"),
    [
        (RendezvousInfo.from_cbor_obj, "RendezvousInfo"),  # [+ RendezvousDirective]
        (RVTO2Addr.from_cbor_obj, "RVTO2Addr"),  # [+ RVTO2AddrEntry]
    ],
)
def test_non_empty_lists_still_refuse_null(parse: object, what: str) -> None:
    with pytest.raises(MessageBodyError, match=what):
        parse(None)  # type: ignore[operator]


def test_service_info_kv_round_trip_unchanged() -> None:
    kv = ServiceInfoKV.of("devmod", "active", True)
    msg = TO2DeviceServiceInfo(is_more=False, service_info=(kv,))
    assert TO2DeviceServiceInfo.decode(msg.encode()) == msg
