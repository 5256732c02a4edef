"""Owner and device ServiceInfo drivers run against each other in memory.

Each round is encoded to CBOR bytes and decoded again on the other side, exactly as the
68/69 bodies travel, and the owner driver is serialised to bytes and rebuilt between
every round, as the owner service does between HTTP requests.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdo import codec
from fdo.codec import CborValue
from fdo.errors import (
    FdoError,
    FdoUsageError,
    HashMismatchError,
    InternalError,
    InvalidMessageError,
    MessageBodyError,
    UnexpectedMessageError,
)
from fdo.serviceinfo import (
    CommandDevice,
    CommandOwner,
    CommandResult,
    DeviceModule,
    DeviceServiceInfoDriver,
    Devmod,
    DownloadDevice,
    DownloadOwner,
    ModuleStatus,
    OwnerModule,
    OwnerServiceInfoDriver,
    ServiceInfoKV,
    UnlistedModules,
    UploadDevice,
    UploadOwner,
    decode_service_info,
    encode_service_info,
    module_restorer,
    restore_standard,
)

DEVMOD = Devmod(os="Linux", arch="x86_64", version="Fedora 41", device="bootc", sep=":", bin="x86_64")


@dataclass
class Wire:
    """What crossed the link."""

    rounds: int = 0
    device_bodies: list[bytes] = field(default_factory=list)
    owner_bodies: list[bytes] = field(default_factory=list)
    device_kvs: list[ServiceInfoKV] = field(default_factory=list)
    owner_kvs: list[ServiceInfoKV] = field(default_factory=list)


def run(
    owner: OwnerServiceInfoDriver,
    device: DeviceServiceInfoDriver,
    *,
    max_rounds: int = 1000,
) -> tuple[OwnerServiceInfoDriver, Wire]:
    wire = Wire()
    while not device.done:
        assert wire.rounds < max_rounds
        wire.rounds += 1
        request = device.next_request()
        body = codec.encode([request.is_more, encode_service_info(request.service_info)])
        assert len(body) <= owner.mtu  # the owner's limit on DeviceServiceInfo, same value here
        wire.device_bodies.append(body)
        is_more, si = codec.decode(body)
        kvs = decode_service_info(si)
        wire.device_kvs += kvs

        state = codec.encode(owner.to_state())
        owner = OwnerServiceInfoDriver.from_state(codec.decode(state), restore_standard)
        reply = owner.handle(is_more, kvs)

        body = codec.encode([reply.is_more, reply.is_done, encode_service_info(reply.service_info)])
        assert len(body) <= owner.mtu
        wire.owner_bodies.append(body)
        more, done, si = codec.decode(body)
        kvs = decode_service_info(si)
        wire.owner_kvs += kvs
        device.handle_reply(more, done, kvs)
    assert owner.done
    return owner, wire


def pair(
    owner_modules: Sequence[OwnerModule],
    device_modules: Sequence[DeviceModule],
    *,
    mtu: int = 1300,
    devmod: Devmod = DEVMOD,
    unlisted: UnlistedModules = UnlistedModules.SKIP,
) -> tuple[OwnerServiceInfoDriver, Wire]:
    owner = OwnerServiceInfoDriver(owner_modules, mtu=mtu, unlisted=unlisted)
    device = DeviceServiceInfoDriver(devmod, device_modules, mtu=mtu)
    return run(owner, device)


class FakeSystem:
    """The device's injected I/O."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commands: list[list[str]] = []
        self.exitcode = 0
        self.stdout = b"hello\n"
        self.stderr = b"warning\n"

    def run(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        self.commands.append(argv)
        return self.exitcode, self.stdout, self.stderr

    def write(self, name: str, data: bytes) -> None:
        if name.startswith("/readonly/"):
            raise PermissionError(name)
        self.files[name] = data

    def read(self, name: str) -> bytes | None:
        return self.files.get(name)

    def modules(self) -> list[DeviceModule]:
        return [CommandDevice(self.run), DownloadDevice(self.write), UploadDevice(self.read)]


def _owner_module(owner: OwnerServiceInfoDriver, index: int) -> OwnerModule:
    return owner.modules[index][0]


# --------------------------------------------------------------------------- the standard modules


def test_command() -> None:
    system = FakeSystem()
    owner, wire = pair([CommandOwner("sh", ["-c", "echo hello"])], system.modules())
    module = _owner_module(owner, 0)
    assert isinstance(module, CommandOwner)
    assert module.result == CommandResult(0, b"hello\n", b"warning\n")
    assert owner.modules[0][1] == ModuleStatus.DONE
    assert system.commands == [["sh", "-c", "echo hello"]]
    # args travel as bstr .cbor [* tstr], so the value is wrapped twice.
    (args,) = [kv for kv in wire.owner_kvs if kv.key == "fdo.command:args"]
    assert args.value == codec.encode(codec.encode(["-c", "echo hello"]))
    # the module was activated, and confirmed, before it was used
    keys = [kv.key for kv in wire.owner_kvs]
    assert keys.index("fdo.command:active") < keys.index("fdo.command:command")
    assert ServiceInfoKV.of("fdo.command", "active", True) in wire.device_kvs
    assert owner.devmod is not None
    assert owner.devmod.modules == ("devmod", "fdo.command", "fdo.download", "fdo.upload")


def test_command_without_output_and_may_fail() -> None:
    system = FakeSystem()
    system.exitcode = 3
    owner, wire = pair(
        [CommandOwner("false", may_fail=True, return_stdout=False, return_stderr=False)], system.modules()
    )
    module = _owner_module(owner, 0)
    assert isinstance(module, CommandOwner)
    assert module.result == CommandResult(3, b"", b"")
    assert not any(kv.message in ("stdout", "stderr") for kv in wire.device_kvs)


def test_failing_command_fails_the_device() -> None:
    system = FakeSystem()
    system.exitcode = 1
    with pytest.raises(InternalError):
        pair([CommandOwner("false")], system.modules())


def test_large_output_is_reassembled() -> None:
    system = FakeSystem()
    system.stdout = os.urandom(20_000)
    # One 20 kB block: the device driver splits it go-style, the owner joins it.
    device_modules: list[DeviceModule] = [CommandDevice(system.run, block_size=100_000)]
    owner, wire = pair([CommandOwner("cat")], device_modules)
    module = _owner_module(owner, 0)
    assert isinstance(module, CommandOwner) and module.result is not None
    assert module.result.stdout == system.stdout
    assert sum(kv.key == "fdo.command:stdout" for kv in wire.device_kvs) > 15


def test_device_reads_java_plain_args() -> None:
    system = FakeSystem()
    device = CommandDevice(system.run)
    device.activate(True)
    device.handle("command", "sh")
    device.handle("args", ["-c", "true"])  # java: no bstr wrapping
    assert device.handle("execute", None)[-1] == ("exitcode", 0)
    assert system.commands == [["sh", "-c", "true"]]
    with pytest.raises(InvalidMessageError):
        device.handle("execute", None)  # state was reset: no command


def test_download_50k() -> None:
    system = FakeSystem()
    data = os.urandom(50_000)
    owner, wire = pair([DownloadOwner("/var/lib/fdo/image.bin", data)], system.modules(), mtu=1300)
    module = _owner_module(owner, 0)
    assert isinstance(module, DownloadOwner)
    assert module.ok and module.result == 50_000
    assert system.files["/var/lib/fdo/image.bin"] == data
    blocks = [kv.decoded() for kv in wire.owner_kvs if kv.key == "fdo.download:data"]
    assert all(len(b) <= 1014 for b in blocks)  # no go-style splitting needed
    assert len(blocks) == 50
    assert max(len(b) for b in wire.owner_bodies) <= 1300


def test_download_empty_file_and_two_downloads() -> None:
    system = FakeSystem()
    owner, wire = pair([DownloadOwner("a", b""), DownloadOwner("b", b"xyz")], system.modules())
    assert system.files == {"a": b"", "b": b"xyz"}
    # one activation for both modules of the same name
    assert sum(kv.key == "fdo.download:active" for kv in wire.owner_kvs) == 1
    assert [status for _, status in owner.modules] == [ModuleStatus.DONE, ModuleStatus.DONE]


def test_download_write_failure_reports_minus_one() -> None:
    system = FakeSystem()
    owner, _ = pair([DownloadOwner("/readonly/x", b"abc", must_succeed=False)], system.modules())
    module = _owner_module(owner, 0)
    assert isinstance(module, DownloadOwner)
    assert module.result == -1 and not module.ok
    with pytest.raises(InvalidMessageError):
        pair([DownloadOwner("/readonly/x", b"abc")], system.modules())


def test_download_device_checks() -> None:
    system = FakeSystem()
    device = DownloadDevice(system.write, max_size=10)
    device.activate(True)
    # hash mismatch
    device.handle("name", "f")
    device.handle("length", 3)
    device.handle("sha-384", hashlib.sha384(b"abd").digest())
    assert device.handle("data", b"abc") == [("done", -1)]
    # streaming mode: no length, ended by an empty block
    device.handle("name", "g")
    assert device.handle("data", b"ab") == []
    assert device.handle("data", b"c") == []
    assert device.handle("data", b"") == [("done", 3)]
    assert system.files["g"] == b"abc"
    # larger than max_size: counted, not stored, refused
    device.handle("name", "h")
    device.handle("length", 12)
    assert device.handle("data", bytes(12)) == [("done", -1)]
    assert "h" not in system.files
    # data without a name
    device.handle("length", 1)
    with pytest.raises(InvalidMessageError):
        device.handle("data", b"x")


def test_upload() -> None:
    system = FakeSystem()
    system.files["/etc/machine-id"] = os.urandom(3000)
    system.files["/empty"] = b""
    owner, wire = pair(
        [UploadOwner("/etc/machine-id"), UploadOwner("/empty", need_sha=False)], system.modules()
    )
    first, second = (_owner_module(owner, i) for i in range(2))
    assert isinstance(first, UploadOwner) and isinstance(second, UploadOwner)
    assert first.result == system.files["/etc/machine-id"]
    assert second.result == b""
    assert ServiceInfoKV.of("fdo.upload", "data", b"") in wire.device_kvs


def test_upload_50k_uses_device_is_more() -> None:
    system = FakeSystem()
    system.files["big"] = os.urandom(50_000)
    owner, wire = pair([UploadOwner("big")], system.modules())
    module = _owner_module(owner, 0)
    assert isinstance(module, UploadOwner)
    assert module.result == system.files["big"]
    assert sum(codec.decode(b)[0] for b in wire.device_bodies) >= 40  # IsMoreServiceInfo rounds


def test_upload_missing_file_fails_the_device() -> None:
    with pytest.raises(InternalError):
        pair([UploadOwner("nope")], FakeSystem().modules())


def test_upload_owner_checks_hash_and_length() -> None:
    module = UploadOwner("f")
    module.produce()
    module.handle("length", 3)
    module.handle("data", b"abc")
    assert not module.done  # waits for sha-384
    with pytest.raises(HashMismatchError):
        module.handle("sha-384", bytes(48))
    module = UploadOwner("f")
    module.handle("length", 2)
    with pytest.raises(InvalidMessageError):
        module.handle("data", b"abc")


# --------------------------------------------------------------------------- activation and flow


class ProbeOwner(OwnerModule):
    """Sends one ``ping`` and waits for ``pong``."""

    name = "com.example.probe"

    def __init__(self) -> None:
        self.started = False
        self.sent = False
        self.result: CborValue = None
        self.done = False

    def start(self, devmod: Devmod, mtu: int) -> None:
        self.started = True

    def produce(self) -> list[tuple[str, CborValue]]:
        if self.sent:
            return []
        self.sent = True
        return [("ping", 1)]

    def handle(self, message: str, value: CborValue) -> None:
        self.result, self.done = value, True

    def to_state(self) -> CborValue:
        return [self.started, self.sent, self.result, self.done]

    @classmethod
    def from_state(cls, state: CborValue) -> ProbeOwner:
        self = cls()
        self.started, self.sent, self.result, self.done = state
        return self


class ProbeDevice(DeviceModule):
    name = "com.example.probe"

    def __init__(self) -> None:
        self.activations: list[bool] = []

    def activate(self, active: bool) -> None:
        self.activations.append(active)

    def handle(self, message: str, value: CborValue) -> list[tuple[str, CborValue]]:
        return [("pong", value + 1)]


def _run_probe(
    devmod: Devmod, device_modules: Sequence[DeviceModule], unlisted: UnlistedModules
) -> tuple[OwnerServiceInfoDriver, Wire]:
    owner = OwnerServiceInfoDriver([ProbeOwner(), CommandOwner("true")], unlisted=unlisted)
    device = DeviceServiceInfoDriver(devmod, device_modules)
    wire = Wire()
    restore = module_restorer(ProbeOwner, CommandOwner)
    while not device.done:
        wire.rounds += 1
        is_more, kvs = device.next_request()
        wire.device_kvs += kvs
        owner = OwnerServiceInfoDriver.from_state(codec.decode(codec.encode(owner.to_state())), restore)
        reply = owner.handle(is_more, kvs)
        wire.owner_kvs += reply.service_info
        device.handle_reply(*reply)
    return owner, wire


def test_custom_module_round_trip() -> None:
    device = ProbeDevice()
    owner, _ = _run_probe(DEVMOD, [device, *FakeSystem().modules()], UnlistedModules.SKIP)
    probe = _owner_module(owner, 0)
    assert isinstance(probe, ProbeOwner)
    assert probe.started and probe.result == 2
    assert device.activations == [True]


def test_device_answering_inactive_makes_owner_skip() -> None:
    # The device lists the module in devmod but has no implementation. The owner sends
    # the module's first message with ``active`` (as go's owner does); the device
    # answers active=false, ignores the rest, and the owner skips the module.
    devmod = Devmod(
        os="Linux",
        arch="x86",
        version="1",
        device="d",
        sep=":",
        bin="x86",
        modules=("devmod", ProbeOwner.name),
    )
    owner, wire = _run_probe(devmod, FakeSystem().modules(), UnlistedModules.SKIP)
    assert ServiceInfoKV.of(ProbeOwner.name, "active", False) in wire.device_kvs
    assert [s for _, s in owner.modules] == [ModuleStatus.SKIPPED, ModuleStatus.SKIPPED]
    probe = _owner_module(owner, 0)
    assert isinstance(probe, ProbeOwner) and probe.started and probe.result is None
    assert [kv.key for kv in wire.owner_kvs] == [f"{ProbeOwner.name}:active", f"{ProbeOwner.name}:ping"]
    assert not any(kv.module == ProbeOwner.name and kv.message == "pong" for kv in wire.device_kvs)


def test_listed_module_starts_with_active_in_one_message() -> None:
    # A module the device listed gets ``active`` and its first messages in one
    # OwnerServiceInfo, and its answers come back in one DeviceServiceInfo: one round
    # for devmod, one per module, and the round that gets IsDone.
    device = ProbeDevice()
    owner, wire = _run_probe(DEVMOD, [device, *FakeSystem().modules()], UnlistedModules.SKIP)
    probe = _owner_module(owner, 0)
    assert isinstance(probe, ProbeOwner) and probe.result == 2
    assert [s for _, s in owner.modules] == [ModuleStatus.DONE, ModuleStatus.DONE]
    first = [kv.key for kv in wire.owner_kvs[:2]]
    assert first == [f"{ProbeOwner.name}:active", f"{ProbeOwner.name}:ping"]
    assert wire.rounds == 3


def test_unlisted_modules_skipped_or_activated() -> None:
    modules: list[DeviceModule] = [CommandDevice(FakeSystem().run)]
    owner, wire = _run_probe(DEVMOD, modules, UnlistedModules.SKIP)
    assert [s for _, s in owner.modules] == [ModuleStatus.SKIPPED, ModuleStatus.DONE]
    assert not any(kv.module == ProbeOwner.name for kv in wire.owner_kvs)

    owner, wire = _run_probe(DEVMOD, modules, UnlistedModules.ACTIVATE)
    assert [s for _, s in owner.modules] == [ModuleStatus.SKIPPED, ModuleStatus.DONE]
    assert ServiceInfoKV.of(ProbeOwner.name, "active", False) in wire.device_kvs


def test_owner_without_modules_finishes_after_devmod() -> None:
    owner, wire = pair([], FakeSystem().modules(), mtu=256)
    bodies = [codec.decode(b) for b in wire.device_bodies]
    assert [is_more for is_more, _ in bodies] == [True] * (len(bodies) - 1) + [False]
    assert [codec.decode(b) for b in wire.owner_bodies][-1] == [False, True, []]
    assert owner.devmod is not None and owner.devmod.nummodules == 4


def test_owner_waits_for_devmod_and_rejects_other_modules_first() -> None:
    owner = OwnerServiceInfoDriver([])
    kvs = _devmod_kvs()
    assert owner.handle(False, kvs[:3]) == (False, False, [])  # devmod incomplete: wait (go)
    with pytest.raises(InvalidMessageError):
        owner.handle(False, [ServiceInfoKV.of("fdo.command", "stdout", b"")])


def test_owner_round_limit_and_after_done() -> None:
    owner = OwnerServiceInfoDriver([], max_rounds=3)
    for _ in range(3):
        owner.handle(True, [])
    with pytest.raises(InvalidMessageError):
        owner.handle(True, [])
    owner = OwnerServiceInfoDriver([])
    assert owner.handle(False, _devmod_kvs()) == (False, True, [])
    with pytest.raises(UnexpectedMessageError):
        owner.handle(False, [])


def _devmod_kvs() -> list[ServiceInfoKV]:
    return DeviceServiceInfoDriver(DEVMOD).next_request().service_info


def test_device_ignores_messages_for_inactive_modules() -> None:
    system = FakeSystem()
    device = DeviceServiceInfoDriver(DEVMOD, system.modules())
    device.next_request()
    device.handle_reply(
        False,
        False,
        [
            ServiceInfoKV.of("fdo.command", "command", "rm"),
            ServiceInfoKV.of("fdo.command", "execute", None),
            ServiceInfoKV.of("com.unknown", "x", 1),
            ServiceInfoKV.of("com.unknown", "active", True),
        ],
    )
    assert system.commands == []
    assert device.next_request().service_info == [ServiceInfoKV.of("com.unknown", "active", False)]
    device.handle_reply(False, True, [])
    assert device.done
    with pytest.raises(FdoUsageError):
        device.next_request()


def test_device_round_limit() -> None:
    device = DeviceServiceInfoDriver(DEVMOD, max_rounds=2)
    device.next_request()
    device.next_request()
    with pytest.raises(InvalidMessageError):
        device.next_request()


def test_corrupt_owner_state() -> None:
    state = OwnerServiceInfoDriver([CommandOwner("x")]).to_state()
    del state["queue"]
    with pytest.raises(InternalError):
        OwnerServiceInfoDriver.from_state(state, restore_standard)
    with pytest.raises(InternalError):
        OwnerServiceInfoDriver.from_state({"v": 1, "mtu": "x"}, restore_standard)


def test_device_rejects_unanswerable_module_names() -> None:
    device = DeviceServiceInfoDriver(DEVMOD, mtu=256)
    device.next_request()
    device.handle_reply(False, False, [ServiceInfoKV(":active", b"\xf5")])  # no module name: ignored
    with pytest.raises(MessageBodyError):
        device.handle_reply(False, False, [ServiceInfoKV.of("m" * 300, "active", True)])


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**64 - 1),
    st.binary(max_size=60),
    st.text(max_size=10),
    st.lists(st.text(max_size=5) | st.integers(0, 3), max_size=4),
).map(codec.encode) | st.binary(max_size=12)
_keys = st.sampled_from(
    [
        f"{m}:{n}"
        for m in ("fdo.command", "fdo.download", "fdo.upload", "devmod", "x")
        for n in (
            "active",
            "name",
            "length",
            "data",
            "sha-384",
            "done",
            "command",
            "args",
            "execute",
            "exitcode",
            "stdout",
            "need-sha",
            "modules",
            "nummodules",
            "os",
        )
    ]
)
_kv_lists = st.lists(st.builds(ServiceInfoKV, _keys, _values), max_size=6)
_rounds = st.lists(st.tuples(st.booleans(), _kv_lists), max_size=6)


@settings(max_examples=300, deadline=None)
@given(_rounds)
def test_device_driver_raises_only_fdo_errors(rounds: list[tuple[bool, list[ServiceInfoKV]]]) -> None:
    system = FakeSystem()
    system.files["a"] = b"abc"
    device = DeviceServiceInfoDriver(DEVMOD, system.modules())
    try:
        for is_done, kvs in rounds:
            device.next_request()
            device.handle_reply(False, is_done, kvs)
            if device.done:
                break
    except FdoError:
        pass


@settings(max_examples=300, deadline=None)
@given(_rounds)
def test_owner_driver_raises_only_fdo_errors(rounds: list[tuple[bool, list[ServiceInfoKV]]]) -> None:
    owner = OwnerServiceInfoDriver(
        [CommandOwner("x"), DownloadOwner("f", b"abc"), UploadOwner("u")], unlisted=UnlistedModules.ACTIVATE
    )
    try:
        owner.handle(False, _devmod_kvs())
        for is_more, kvs in rounds:
            owner = OwnerServiceInfoDriver.from_state(owner.to_state(), restore_standard)
            owner.handle(is_more, kvs)
    except FdoError:
        pass


def test_modules_selected_from_devmod_and_mtu_set_late() -> None:
    system = FakeSystem()
    seen: list[Devmod] = []

    def select(devmod: Devmod) -> list[OwnerModule]:
        seen.append(devmod)
        return [CommandOwner("uname", ["-m"])]

    owner = OwnerServiceInfoDriver(None, mtu=1300)
    device = DeviceServiceInfoDriver(DEVMOD, system.modules())
    device.set_mtu(None)  # 67 said null: 1300
    while not device.done:
        is_more, kvs = device.next_request()
        owner = OwnerServiceInfoDriver.from_state(
            codec.decode(codec.encode(owner.to_state())), restore_standard
        )
        device.handle_reply(*owner.handle(is_more, kvs, select=select))
    assert len(seen) == 1 and seen[0].nummodules == 4
    assert system.commands == [["uname", "-m"]]
    with pytest.raises(FdoUsageError):
        OwnerServiceInfoDriver().handle(False, _devmod_kvs())


def test_devmod_accepts_a_module_list() -> None:
    devmod = Devmod(os="a", arch="b", version="c", device="d", sep=":", bin="b", modules=["devmod"])  # type: ignore[arg-type]
    assert devmod.modules == ("devmod",)
    assert hash(devmod)


@pytest.mark.parametrize("mtu", [256, 700, 1300, 9000])
def test_all_modules_at_various_mtus(mtu: int) -> None:
    system = FakeSystem()
    system.files["log"] = os.urandom(5000)
    system.stdout = os.urandom(3000)
    data = os.urandom(7000)
    owner, wire = pair(
        [CommandOwner("sh"), DownloadOwner("f", data), UploadOwner("log")], system.modules(), mtu=mtu
    )
    assert [s for _, s in owner.modules] == [ModuleStatus.DONE] * 3
    assert system.files["f"] == data
    results = [getattr(m, "result", None) for m, _ in owner.modules]
    assert isinstance(results[0], CommandResult) and results[0].stdout == system.stdout
    assert results[2] == system.files["log"]
    assert max(map(len, wire.device_bodies + wire.owner_bodies)) <= mtu


def test_small_download_goes_out_with_its_header_in_one_message() -> None:
    # While what a module queued still fits in the reply, the owner asks it for more:
    # a small file's active, header and data share the first OwnerServiceInfo, the
    # device answers active and done together, and the next module starts at once.
    system = FakeSystem()
    owner, wire = pair([DownloadOwner("/etc/motd", b"hello"), CommandOwner("true", [])], system.modules())
    assert system.files == {"/etc/motd": b"hello"} and system.commands == [["true"]]
    first = codec.decode(wire.owner_bodies[0])
    assert isinstance(first, list)
    assert [k for k, _ in first[2]] == [
        "fdo.download:active",
        "fdo.download:name",
        "fdo.download:length",
        "fdo.download:sha-384",
        "fdo.download:data",
    ]
    assert wire.rounds == 3  # devmod; download answered; command answered (IsDone)


def test_large_download_still_fills_messages_to_the_limit() -> None:
    # The data of a file larger than one message follows in replies of its own, each
    # within the device's limit, and nothing is lost.
    system = FakeSystem()
    data = os.urandom(5000)
    owner, wire = pair([DownloadOwner("/big", data)], system.modules(), mtu=1300)
    assert system.files == {"/big": data}
    assert all(len(body) <= 1300 for body in wire.owner_bodies)
    download = _owner_module(owner, 0)
    assert isinstance(download, DownloadOwner) and download.ok
