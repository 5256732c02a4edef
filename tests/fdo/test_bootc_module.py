"""The bootc ServiceInfo module: owner and device drivers in memory (docs/serviceinfo.md).

Every round is encoded to CBOR and decoded again, and the owner driver is rebuilt from
its serialised state between rounds, as the owner service does between requests.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from fdo import codec
from fdo.serviceinfo import (
    CommandDevice,
    CommandOwner,
    DeviceServiceInfoDriver,
    Devmod,
    DownloadDevice,
    DownloadOwner,
    OwnerModule,
    OwnerServiceInfoDriver,
    ServiceInfoKV,
    decode_service_info,
    encode_service_info,
    module_restorer,
)
from fdo.serviceinfo.bootc import (
    BOOTC,
    ApplyMode,
    Assignment,
    BootcDevice,
    BootcOwner,
    BootcStatus,
    FileItem,
    ImageRef,
    InvalidAssignmentError,
    ItemKind,
    Report,
    SSHKeys,
    fallback_modules,
    items,
    parse_bootc_status,
    stock_plan,
)

DEVMOD = Devmod(os="Linux", arch="x86_64", version="Fedora 41", device="kiosk", sep=":", bin="x86_64")
DIGEST = "sha256:" + "ab" * 32
REF = f"quay.io/example/kiosk@{DIGEST}"
STATUS = BootcStatus(is_bootc=True, image="quay.io/example/base:41", digest="sha256:" + "00" * 32)
restore = module_restorer(BootcOwner, DownloadOwner, CommandOwner)


def full_assignment(big: bytes = b"x" * 10) -> Assignment:
    return Assignment(
        auth_json=b'{"auths": {"quay.io": {"auth": "c2VjcmV0"}}}',
        policy_json=b'{"default": [{"type": "reject"}]}',
        registries_d=(("quay.io.yaml", b"docker:\n  quay.io:\n    use-sigstore-attachments: true\n"),),
        keys=(("/etc/pki/containers/kiosk.pub", b"-----BEGIN PUBLIC KEY-----\n"),),
        files=(
            FileItem(path="/etc/kiosk/config.toml", content=b"url = 'https://example.com'\n", mode=0o640),
            FileItem(path="/etc/kiosk/big.bin", content=big, mode=0o600, owner="root", group="wheel"),
        ),
        units=("kiosk.service", "podman-auto-update.timer"),
        ssh_keys=SSHKeys("core", ("ssh-ed25519 AAAA one", "ssh-ed25519 AAAA two")),
        image=ImageRef(ref=REF, transport="registry", revision=7, apply=ApplyMode.SWITCH_REBOOT),
        report=Report("https://owner.example/api/v1/status", "tok-123"),
    )


def run(
    owner_modules: list[OwnerModule], device_modules: list[BootcDevice], *, mtu: int = 1300
) -> tuple[OwnerServiceInfoDriver, list[ServiceInfoKV], list[ServiceInfoKV]]:
    owner = OwnerServiceInfoDriver(owner_modules, mtu=mtu)
    device = DeviceServiceInfoDriver(DEVMOD, device_modules, mtu=mtu)
    sent: list[ServiceInfoKV] = []
    received: list[ServiceInfoKV] = []
    for _ in range(10_000):
        if device.done:
            break
        req = device.next_request()
        body = codec.encode([req.is_more, encode_service_info(req.service_info)])
        assert len(body) <= mtu
        is_more, si = codec.decode(body)
        kvs = decode_service_info(si)
        received += kvs
        owner = OwnerServiceInfoDriver.from_state(codec.decode(codec.encode(owner.to_state())), restore)
        reply = owner.handle(is_more, kvs)
        body = codec.encode([reply.is_more, reply.is_done, encode_service_info(reply.service_info)])
        assert len(body) <= mtu
        more, done, si = codec.decode(body)
        kvs = decode_service_info(si)
        sent += kvs
        device.handle_reply(more, done, kvs)
    assert owner.done and device.done
    return owner, sent, received


def bootc_owner(driver: OwnerServiceInfoDriver) -> BootcOwner:
    module = driver.modules[0][0]
    assert isinstance(module, BootcOwner)
    return module


def test_full_assignment_round_trip_with_large_file_chunked() -> None:
    big = os.urandom(50_000)
    assignment = full_assignment(big)
    device = BootcDevice(lambda: STATUS)
    driver, sent, received = run([BootcOwner(assignment)], [device], mtu=1300)

    assert device.assignment == assignment
    owner = bootc_owner(driver)
    assert owner.status == STATUS
    assert owner.accepted is True and owner.ok
    assert [r.ok for r in owner.results.values()] == [True] * len(items(assignment))
    assert owner.results[0].label == "auth"
    # every value fitted in one message (no go-style fragments)
    data = [kv for kv in sent if kv.key == f"{BOOTC}:data"]
    assert len(data) > 50_000 // 1300
    assert all(kv.size() < 1300 for kv in sent)
    # the status came first, before any item was sent
    bootc_sent = [kv.message for kv in sent if kv.module == BOOTC]
    assert bootc_sent[:2] == ["active", "get-status"]
    bootc_received = [kv.message for kv in received if kv.module == BOOTC]
    assert bootc_received[:2] == ["active", "status"]
    assert bootc_received[-1] == "end"
    # items arrive in the documented order
    kinds = [codec.decode(kv.value)[1] for kv in sent if kv.key == f"{BOOTC}:item"]
    assert kinds == [
        "auth", "policy", "registries-d", "key", "file", "file", "unit", "unit", "ssh-keys", "report", "image"
    ]  # fmt: skip


@pytest.mark.parametrize("mtu", [256, 1300, 4000])
def test_chunking_at_several_mtus(mtu: int) -> None:
    assignment = full_assignment(os.urandom(7000))
    device = BootcDevice(lambda: STATUS)
    driver, _, _ = run([BootcOwner(assignment)], [device], mtu=mtu)
    assert device.assignment == assignment and bootc_owner(driver).ok


def test_image_only_and_not_bootc_status() -> None:
    assignment = Assignment(image=ImageRef(ref=REF))
    device = BootcDevice(lambda: BootcStatus(is_bootc=False))
    driver, _, _ = run([BootcOwner(assignment)], [device])
    owner = bootc_owner(driver)
    assert owner.status == BootcStatus(is_bootc=False)
    assert device.assignment == assignment and owner.ok


@pytest.mark.parametrize(
    "ref",
    [
        "quay.io/example/kiosk:latest",
        "quay.io/example/kiosk",
        "quay.io/example/kiosk@sha256:abc",
        f"quay.io/example/kiosk@sha512:{'ab' * 32}",
        f"quay.io/example/kiosk:1@{DIGEST} extra",
    ],
)
def test_image_must_be_pinned_by_digest(ref: str) -> None:
    with pytest.raises(InvalidAssignmentError):
        ImageRef(ref=ref)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FileItem(path="etc/relative", content=b""),
        lambda: FileItem(path="/etc/../shadow", content=b""),
        lambda: FileItem(path="/etc/x", content=b"", mode=0o17777),
        lambda: FileItem(path="/etc/x", content=b"", owner="Root Person"),
        lambda: Assignment(units=("not a unit",)),
        lambda: Assignment(registries_d=(("../x.yaml", b""),)),
        lambda: SSHKeys("core", ("ssh-ed25519 A\nssh-rsa B",)),
        lambda: ImageRef(ref=REF, transport="docker-daemon"),
    ],
)
def test_invalid_items_refused(make: object) -> None:
    assert callable(make)
    with pytest.raises(InvalidAssignmentError):
        make()


def test_device_refuses_a_non_digest_image_with_an_error_result() -> None:
    """A peer that skips validation gets an error result, not an applied image."""
    device = BootcDevice(lambda: STATUS)
    device.activate(True)
    header = [
        0,
        "image",
        {"ref": "quay.io/x:latest", "transport": "registry", "revision": 1, "apply": "stage"},
    ]

    replies = device.handle("item", [*header, 0, hashlib.sha384(b"").digest()])
    assert replies[0][0] == "result"
    seq, ok, error = replies[0][1]
    assert (seq, ok) == (0, False) and "digest" in error
    assert device.handle("end", 1) == [("end", [False, "some items were rejected"])]
    assert device.assignment == Assignment()


def test_device_reports_hash_mismatch() -> None:
    device = BootcDevice(lambda: STATUS)
    device.activate(True)
    meta = {"path": "/etc/x", "mode": 0o644, "owner": "root"}
    assert device.handle("item", [3, "file", meta, 4, b"\0" * 48]) == []
    assert device.handle("data", b"abcd") == [("result", [3, False, "length or sha-384 mismatch"])]


def test_owner_state_round_trips_mid_transfer() -> None:
    owner = BootcOwner(full_assignment(os.urandom(5000)))
    owner.start(DEVMOD, 1297)
    assert owner.produce() == [("get-status", None)]
    owner.handle("status", STATUS.to_cbor_obj())
    first = owner.produce()
    again = BootcOwner.from_state(codec.decode(codec.encode(owner.to_state())))
    assert again.status == STATUS
    assert again.produce() == owner.produce()
    assert first[0][0] == "item"


def test_assignment_encoding_round_trips() -> None:
    a = full_assignment(b"\x00\xff" * 100)
    assert Assignment.decode(a.encode()) == a
    assert "tok-123" not in repr(a) and "c2VjcmV0" not in repr(a)
    assert [i.kind for i in items(a)][0] == ItemKind.AUTH


def test_parse_bootc_status_real_schema() -> None:
    obj = {
        "apiVersion": "org.containers.bootc/v1",
        "kind": "BootcHost",
        "spec": {"image": {"image": "quay.io/a", "transport": "registry"}},
        "status": {
            "booted": {
                "image": {"image": {"image": "quay.io/a", "transport": "registry"}, "imageDigest": DIGEST}
            },
            "staged": None,
            "rollback": None,
        },
    }
    st = parse_bootc_status(obj)
    assert st == BootcStatus(is_bootc=True, image="quay.io/a", digest=DIGEST)
    assert st.has(DIGEST)
    obj["status"] = {"booted": None, "staged": None, "type": None}
    assert parse_bootc_status(obj) == BootcStatus(is_bootc=False)
    assert parse_bootc_status("nonsense") == BootcStatus(is_bootc=False)


def test_fallback_for_stock_clients() -> None:
    """A device without the module gets the files via fdo.download and the switch via fdo.command."""
    assignment = full_assignment(os.urandom(3000))
    written: dict[str, bytes] = {}
    commands: list[list[str]] = []

    def write(name: str, data: bytes) -> None:
        written[name] = data

    def run_cmd(argv: list[str]) -> tuple[int, bytes, bytes]:
        commands.append(argv)
        return 0, b"", b""

    owner = OwnerServiceInfoDriver(fallback_modules(assignment), mtu=1300)
    device = DeviceServiceInfoDriver(DEVMOD, [DownloadDevice(write), CommandDevice(run_cmd)], mtu=1300)
    for _ in range(10_000):
        if device.done:
            break
        req = device.next_request()
        owner = OwnerServiceInfoDriver.from_state(codec.decode(codec.encode(owner.to_state())), restore)
        reply = owner.handle(req.is_more, req.service_info)
        device.handle_reply(reply.is_more, reply.is_done, reply.service_info)
    assert written["/etc/ostree/auth.json"] == assignment.auth_json
    assert written["/etc/kiosk/big.bin"] == assignment.files[1].content
    assert ["systemctl", "enable", "kiosk.service"] in commands
    assert commands[-2:] == [["bootc", "switch", "--transport", "registry", REF], ["systemctl", "reboot"]]


def _argvs(modules: list[OwnerModule]) -> list[list[str]]:
    return [[m.command, *m.args] for m in modules if isinstance(m, CommandOwner)]


def _names(modules: list[OwnerModule]) -> list[str]:
    return [m.filename for m in modules if isinstance(m, DownloadOwner)]


def test_stock_plan_download_only_withholds_secrets_and_every_command() -> None:
    plan = stock_plan(full_assignment(), ["fdo.download"])
    assert _argvs(plan.modules) == []
    # auth.json and the 0640/0600 files stay home: their mode could not be set.
    assert _names(plan.modules) == [
        "/etc/containers/policy.json",
        "/etc/containers/registries.d/quay.io.yaml",
        "/etc/pki/containers/kiosk.pub",
        "/var/home/core/.ssh/authorized_keys",
    ]
    withheld = {m.item for m in plan.missing if m.part == "content"}
    assert withheld == {"auth", "file:/etc/kiosk/config.toml", "file:/etc/kiosk/big.bin"}
    assert all(m.needs == "fdo.command" for m in plan.missing)
    # No switch without fdo.command (and auth.json was not delivered anyway).
    assert ("image:" + REF, "switch") in {(m.item, m.part) for m in plan.missing}


def test_stock_plan_command_only_sends_no_command_about_undelivered_files() -> None:
    plan = stock_plan(full_assignment(), ["fdo.command"])
    assert _names(plan.modules) == []
    argvs = _argvs(plan.modules)
    assert not any(a[0] in ("chmod", "chown") for a in argvs)
    # Units without a file in the assignment are enabled; the switch needs the registry
    # credentials and policy, which were not delivered.
    assert argvs == [
        ["systemctl", "enable", "kiosk.service"],
        ["systemctl", "enable", "podman-auto-update.timer"],
    ]
    switch = [m for m in plan.missing if m.part == "switch"]
    assert len(switch) == 1 and switch[0].needs is None and "pulls with" in switch[0].reason


def test_stock_plan_unit_file_not_delivered_means_no_enable() -> None:
    unit = FileItem(path="/etc/systemd/system/kiosk.service", content=b"[Service]\n")
    assignment = Assignment(
        files=(unit,),
        units=("kiosk.service",),
        image=ImageRef(ref=REF, transport="registry", apply=ApplyMode.SWITCH_REBOOT),
    )
    plan = stock_plan(assignment, ["fdo.command"])
    assert _argvs(plan.modules) == [
        ["bootc", "switch", "--transport", "registry", REF],
        ["systemctl", "reboot"],
    ]
    assert [(m.item, m.part, m.needs) for m in plan.missing] == [
        ("file:/etc/systemd/system/kiosk.service", "content", "fdo.download"),
        ("unit:kiosk.service", "enable", None),
    ]
    assert stock_plan(assignment, []).modules == []
    full = stock_plan(assignment, ["fdo.download", "fdo.command"])
    assert full.missing == [] and _names(full.modules) == ["/etc/systemd/system/kiosk.service"]
