"""Group resolution, assignments and device records across the GUID change (no HTTP)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fdo.serviceinfo.devmod import Devmod
from fdo.types import Guid
from fdo_server import sql
from fdo_server.db import lent, make_engine, unit_of_work
from owner.groups import (
    DeviceFacts,
    assignment_for,
    device_row,
    devmod_dict,
    record_onboarding,
    serial_of,
)
from owner.groups_tables import Device, DeviceEvent, Group, Revision, RevisionSecret
from owner.inventory import device_guids, find_device, record_status, resolve_group
from tests.conftest import migrated

NOW = datetime(2025, 1, 1, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated(database_url, "owner"))
    yield engine
    engine.dispose()


def add_group(db: Session, name: str, **fields: object) -> Group:
    group = Group.model_validate({"name": name, **fields})
    db.add(group)
    db.flush()
    return group


def publish(db: Session, group: Group, number: int, *, auth: bytes | None = None) -> Revision:
    assert group.id is not None
    revision = Revision(group_id=group.id, number=number, image=f"quay.io/x/os@{DIGEST}")
    db.add(revision)
    db.flush()
    assert revision.id is not None
    if auth is not None:
        db.add(RevisionSecret(revision_id=revision.id, registry_auth=auth))
    return revision


def devmod(serial: str, model: str) -> Devmod:
    return Devmod(os="linux", arch="x86_64", version="1", device=model, sep=";", bin="x86_64", sn=serial)


@pytest.mark.parametrize(
    ("sn", "serial"),
    [
        ("SN-1", "SN-1"),
        (b"SN-1", "SN-1"),
        (b"\xff\x01", "ff01"),  # not UTF-8
        (b"SN\x00-1", "534e002d31"),  # UTF-8, but a NUL cannot be stored in PostgreSQL text
        (b"", None),
        (None, None),
    ],
)
def test_serial_of_devmod_sn(sn: str | bytes | None, serial: str | None) -> None:
    assert serial_of({"sn": sn}) == serial


def test_resolution_order(engine: Engine) -> None:
    with unit_of_work(engine) as db:
        default = add_group(db, "everything", is_default=True)
        rpi = add_group(db, "rpi", model="rpi-*")
        lab = add_group(db, "lab", labels={"site": "lab"}, priority=10)
        lab_rpi = add_group(db, "lab-rpi", model="rpi-4", labels={"site": "lab"}, priority=10)
        pinned = add_group(db, "pinned", members=["SN-7"], priority=-5)
        gone = add_group(db, "gone", model="x86", priority=100)
        add_group(db, "empty", priority=1000)  # no selectors, no members: matches nothing
        gone.deleted_at = NOW
        db.add(gone)
        guid = Guid(os.urandom(16))
        by_guid = add_group(db, "by-guid", members=[str(guid)], priority=-10)

        def resolve(**facts: Any) -> str | None:
            found = resolve_group(db, DeviceFacts(**facts))
            return None if found is None else found.name

        assert resolve(model="rpi-5") == rpi.name
        # Higher priority wins; lab and lab-rpi tie at 10, the older (lab) wins.
        assert resolve(model="rpi-4", labels={"site": "lab"}) == lab.name
        assert resolve(model="x86", labels={"site": "lab", "extra": "1"}) == lab.name
        # Every selector must match: lab-rpi needs both the model and the label.
        assert resolve(model="rpi-4", labels={"site": "home"}) == rpi.name
        # Explicit listing beats selectors whatever the priority.
        assert resolve(model="rpi-4", serial="SN-7", labels={"site": "lab"}) == pinned.name
        assert resolve(model="rpi-4", guids=(os.urandom(16), guid.value)) == by_guid.name
        # Nothing else: the default; a deleted group never matches.
        assert resolve(model="x86") == default.name
        assert resolve() == default.name
        assert lab_rpi.id is not None

        default.deleted_at = NOW
        db.add(default)
        db.flush()
        assert resolve(model="x86") is None


def test_priority_and_tie_break(engine: Engine) -> None:
    with unit_of_work(engine) as db:
        first = add_group(db, "first", serial_pattern="SN-*")
        add_group(db, "second", serial_pattern="SN-1*")
        facts = DeviceFacts(serial="SN-12")
        assert resolve_group(db, facts) == first
        third = add_group(db, "third", serial_pattern="SN-12", priority=1)
        assert resolve_group(db, facts) == third
        # Members among themselves: priority, then age.
        a = add_group(db, "a", members=["SN-12"])
        add_group(db, "b", members=["SN-12"])
        assert resolve_group(db, facts) == a
        c = add_group(db, "c", members=["SN-12"], priority=3)
        assert resolve_group(db, facts) == c


def test_assignment_and_onboarding_follow_guid_change(engine: Engine) -> None:
    old, new, newer = (Guid(os.urandom(16)) for _ in range(3))
    with unit_of_work(engine) as db:
        group = add_group(db, "fleet", model="box-*")
        assert assignment_for(old, devmod("SN-1", "box-1"), now=NOW) is None  # no revision yet
        first = publish(db, group, 1, auth=b'{"auths": {}}')
    with unit_of_work(engine) as db:
        assignment = assignment_for(old, devmod("SN-1", "box-1"), now=NOW)
        assert assignment is not None
        assert assignment.revision.id == first.id and assignment.registry_auth == b'{"auths": {}}'
        assert assignment.group.name == "fleet"
        record_onboarding(old, new, devmod("SN-1", "box-1"), assignment.revision, now=NOW)
    with unit_of_work(engine) as db:
        device = find_device(db, new)
        assert device is not None and device == find_device(db, old)
        assert device.guid == new.value and device.serial == "SN-1" and device.model == "box-1"
        assert device.status == "onboarded" and device.revision_id == first.id
        assert device.devmod["sn"] == "SN-1"
        assert device_guids(db, device) == [old.value, new.value]
        # A second TO2 (resale) under the new GUID moves the record on again.
        assignment = assignment_for(new, devmod("SN-1", "box-1"), now=NOW)
        assert assignment is not None
        record_onboarding(new, newer, devmod("SN-1", "box-1"), assignment.revision, now=NOW)
        record_status(db, newer, "applied", {"image": "x"}, now=NOW)
    with unit_of_work(engine) as db:
        device = find_device(db, old)
        assert device is not None and device.guid == newer.value and device.status == "applied"
        assert device_guids(db, device) == [old.value, new.value, newer.value]
        query = select(DeviceEvent).where(DeviceEvent.device_id == device.id)
        kinds = [e.kind for e in db.exec(query.order_by(col(DeviceEvent.id))).all()]
        assert kinds == ["created", "assigned", "assigned", "onboarded", "onboarded", "applied"]
        assert db.get(Device, device.id) is not None


def test_new_revision_reaches_next_device_only(engine: Engine) -> None:
    a, a2, b = (Guid(os.urandom(16)) for _ in range(3))
    with unit_of_work(engine) as db:
        group = add_group(db, "all", is_default=True)
        first = publish(db, group, 1)
        got = assignment_for(a, devmod("A", "m"), now=NOW)
        assert got is not None and got.revision.id == first.id
        record_onboarding(a, a2, devmod("A", "m"), got.revision, now=NOW)
        second = publish(db, group, 2)
        got = assignment_for(b, devmod("B", "m"), now=NOW)
        assert got is not None and got.revision.id == second.id and got.registry_auth is None
    with unit_of_work(engine) as db:
        device = find_device(db, a2)
        assert device is not None and device.revision_id == first.id


def test_first_assignment_makes_the_record_whole(engine: Engine) -> None:
    """A device's first TO2 makes its record at once: facts, group, status, one GUID,
    the ``created`` event (and ``assigned`` only when a group matched)."""
    matched, unmatched = Guid(os.urandom(16)), Guid(os.urandom(16))
    with unit_of_work(engine) as db:
        group = add_group(db, "fleet", model="box-*")
        revision = publish(db, group, 1)
        assignment = assignment_for(matched, devmod("SN-7", "box-7"), now=NOW)
        assert assignment is not None and assignment.revision.id == revision.id
        assert assignment_for(unmatched, devmod("SN-8", "other"), now=NOW) is None
    with unit_of_work(engine) as db:
        for guid, group_id, revision_id, kinds in (
            (matched, group.id, revision.id, ["created", "assigned"]),
            (unmatched, None, None, ["created"]),
        ):
            device = find_device(db, guid)
            assert device is not None
            assert (device.status, device.group_id, device.assigned_revision_id) == (
                "onboarding",
                group_id,
                revision_id,
            )
            assert device.serial in ("SN-7", "SN-8") and device.devmod["sn"] == device.serial
            assert device_guids(db, device) == [guid.value]
            query = select(DeviceEvent).where(DeviceEvent.device_id == device.id)
            assert [e.kind for e in db.exec(query.order_by(col(DeviceEvent.id))).all()] == kinds


def test_onboarding_to_a_guid_already_in_the_history(engine: Engine) -> None:
    """A new GUID the record already holds is not added twice (and is no error)."""
    old, new = Guid(os.urandom(16)), Guid(os.urandom(16))
    with unit_of_work(engine) as db:
        assignment_for(old, devmod("SN-9", "box-9"), now=NOW)
        record_onboarding(old, new, devmod("SN-9", "box-9"), None, now=NOW)
        record_onboarding(new, old, devmod("SN-9", "box-9"), None, now=NOW)  # back to a known one
    with unit_of_work(engine) as db:
        device = find_device(db, new)
        assert device is not None and device.guid == old.value
        assert device_guids(db, device) == [old.value, new.value]


def test_device_row_reads_json_and_ids(engine: Engine) -> None:
    """device_row (an Sql statement: the driver's cursor) gives the JSON columns back as
    the values stored, as the ORM does; on the unit of work's connection or a given one."""
    guid = Guid(os.urandom(16))
    with unit_of_work(engine) as db:
        assignment_for(guid, devmod("SN-10", "box-10"), now=NOW)
    with unit_of_work(engine) as db:
        row = device_row(guid)
        device = find_device(db, guid)
        assert row is not None and device is not None
        assert row["id"] == device.id and row["guid"] == guid.value
        assert row["devmod"] == device.devmod and row["devmod"]["sn"] == "SN-10"
        assert row["labels"] == {} and (row["serial"], row["model"]) == ("SN-10", "box-10")
    with engine.connect() as conn:
        assert device_row(Guid(os.urandom(16)), lent(conn)) is None
        assert device_row(guid, lent(conn)) == row


def test_devmod_dict_is_asdict_made_json_safe() -> None:
    """Read field by field, the facts are what ``dataclasses.asdict`` gives, with bytes as
    hex and tuples as lists (what the device record stored before)."""
    devmod = Devmod(
        os="Linux",
        arch="x86_64",
        version="6.1",
        device="model-x",
        sep=";",
        bin="x86_64",
        sn=b"\x00\xffserial",
        modules=("devmod", "fdo.download"),
    )
    expected = {
        k: v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(devmod).items()
    }
    assert devmod_dict(devmod) == expected
    assert devmod_dict(devmod)["modules"] == ["devmod", "fdo.download"]
    assert devmod_dict(None) == {}
    assert devmod_dict({"sn": b"\x01", "modules": ("a",)}) == {"sn": "01", "modules": ["a"]}


def test_to2_hooks_run_on_the_driver_alone(engine: Engine, database_url: str) -> None:
    """TO2 records the device and reads its group's assignment with Sql statements on the
    FDO path's own unit of work (fdo_server.sql.message_scope: no SQLAlchemy, no ORM
    session), with or without a group."""
    database = sql.Database(database_url)  # the engine fixture migrated it
    try:
        with sql.message_scope(database):
            assert assignment_for(Guid.new(), devmod("S-1", "no-group"), now=NOW) is None
        with unit_of_work(engine) as db:
            group = add_group(db, "g", model="grouped")
            publish(db, group, 1)
        with sql.message_scope(database):
            found = assignment_for(Guid.new(), devmod("S-2", "grouped"), now=NOW)
        assert found is not None and found.group.name == "g" and found.revision.number == 1
        assert found.device_id is not None
    finally:
        database.dispose()
