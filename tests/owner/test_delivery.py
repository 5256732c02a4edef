"""owner.delivery for our bootc client: full only when every item was acknowledged and the
assignment accepted (the stock-client cases run end to end in tests/e2e/test_stock_delivery.py)."""

from __future__ import annotations

from fdo.serviceinfo.bootc import Assignment, BootcOwner, FileItem, ImageRef, ItemResult
from fdo.serviceinfo.devmod import Devmod
from fdo.serviceinfo.owner import ModuleStatus
from owner.delivery import delivery_of
from owner.groups import Assignment as Assigned
from owner.groups import GroupRow, RevisionRow

IMAGE = "quay.io/acme/os@sha256:" + "ab" * 32
DEVMOD = Devmod(os="Linux", arch="x86_64", version="1", device="m", sep=":", bin="x86_64")
REVISION = RevisionRow(5, 1, 3, IMAGE, "registry", "switch-reboot", {})
ASSIGNED = Assigned(GroupRow(1, "fleet"), REVISION, registry_auth=None, secret_files=[])


def module(results: list[tuple[bool, str | None]], accepted: bool | None) -> BootcOwner:
    owner = BootcOwner(Assignment(files=(FileItem(path="/etc/a", content=b"a"),), image=ImageRef(ref=IMAGE)))
    for seq, (ok, error) in enumerate(results):
        label = ["file:/etc/a", f"image:{IMAGE}"][seq]
        owner.results[seq] = ItemResult(seq, label, ok, error)
    owner.accepted = accepted
    return owner


def test_full_once_every_item_is_acknowledged() -> None:
    got = delivery_of(ASSIGNED, DEVMOD, [(module([(True, None), (True, None)], True), ModuleStatus.DONE)])
    assert got is not None and got["result"] == "full" and got["revision"] == 3 and got["missing"] == []


def test_a_failed_or_unanswered_item_is_missing_with_the_devices_reason() -> None:
    got = delivery_of(
        ASSIGNED, DEVMOD, [(module([(True, None), (False, "pull failed")], False), ModuleStatus.DONE)]
    )
    assert got is not None and got["result"] == "partial"
    assert [(m["item"], m["reason"]) for m in got["missing"]] == [
        (f"image:{IMAGE}", "pull failed"),
        ("assignment", "the device did not accept the assignment"),
    ]
    got = delivery_of(ASSIGNED, DEVMOD, [(module([], None), ModuleStatus.SKIPPED)])
    assert got is not None and got["result"] == "none"
    assert {m["needs"] for m in got["missing"]} == {"com.fdo-bootc.bootc"}


def test_nothing_assigned_is_no_delivery() -> None:
    assert delivery_of(None, DEVMOD, []) is None
