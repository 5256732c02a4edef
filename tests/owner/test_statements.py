"""The owner's FDO-path statements (:class:`fdo_server.sql.Sql`) and SQLAlchemy's ORM
store and read the same values, on SQLite and, with ``FDO_TEST_POSTGRES_URL`` set,
PostgreSQL: JSON columns as the same text, datetimes as the same text (SQLite) or
timestamp (PostgreSQL), booleans alike, and SQL NULL where the ORM stores it.

Each test writes rows with the same values through the statements and through the ORM,
compares what the database holds for both, and reads each back the other way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from fdo.types import Guid
from fdo_server import sql
from fdo_server.clock import utc
from fdo_server.db import make_engine, unit_of_work
from owner import app as owner_app
from owner import checkin, groups, inventory, lifecycle, to0
from owner.groups_tables import Device, DeviceEvent, DeviceGuid, Group, Revision, RevisionSecret
from owner.states import ACTIVE, ONBOARDED
from owner.tables import DeviceOnboarding, OwnerVoucher, To0Work
from tests.conftest import migrated

AT = datetime(2026, 12, 4, 23, 59, 58, 123456, tzinfo=UTC)
#: JSON that its text could get wrong: non-ASCII, escapes, nesting, null, numbers, booleans.
FACTS: dict[str, Any] = {
    "sn": "SN-é",
    "quote": 'a"b\\c',
    "values": [1, 2.5, None, True, False, {"k": "ü\u2028"}],
    "empty": {},
}
LABELS = {"site": "lab", "zone": "ß"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated(database_url, "owner"))
    yield engine
    engine.dispose()


def _stored(engine: Engine, table: str, columns: str, where: str, value: Any) -> tuple[Any, ...]:
    """What the database holds (no type processing: JSON columns are read ``CAST(... AS
    TEXT)``) in ``columns`` of the one row of ``table`` whose ``where`` is ``value``."""
    query = text(f"SELECT {columns} FROM {table} WHERE {where} = :v")  # noqa: S608 - the test's own names
    with engine.connect() as conn:
        return tuple(conn.execute(query, {"v": value}).one())


def assert_stored_alike(engine: Engine, table: str, columns: str, where: str, ours: Any, orm: Any) -> None:
    """The row written by our statements holds in ``columns`` what the ORM's row holds."""
    assert _stored(engine, table, columns, where, ours) == _stored(engine, table, columns, where, orm), table


def _device(**fields: Any) -> Device:
    return Device.model_validate({"guid": os.urandom(16), "created_at": AT, "updated_at": AT, **fields})


def test_device_records_are_stored_and_read_alike(engine: Engine) -> None:
    """A device record, its GUID and its events (JSON, datetimes, a NULL JSON), made by
    TO2's statements and by the ORM."""
    sql_guid = os.urandom(16)
    created = {"guid": str(Guid(sql_guid))}
    with unit_of_work(engine) as db:
        group = Group(name="g", model="m*")
        db.add(group)
        db.flush()
        assert group.id is not None
        revision = Revision(group_id=group.id, number=1, image="quay.io/x/os:1")
        db.add(revision)
        orm = _device(devmod=FACTS, labels=LABELS, status="new")
        db.add(orm)
        db.flush()
        assert orm.id is not None
        db.add(DeviceGuid(device_id=orm.id, guid=orm.guid, added_at=AT))
        db.add(DeviceEvent(device_id=orm.id, at=AT, kind="created", detail=created))
        orm_id, orm_guid = orm.id, orm.guid
    with unit_of_work(engine):
        values = {"guid": sql_guid, "serial": None, "model": None, "devmod": FACTS, "labels": LABELS}
        made = groups._insert_row(
            None, values | {"group_id": None, "assigned_revision_id": None}, status="new", at=AT
        )
    assert made is not None

    device_columns = (
        "serial, model, CAST(devmod AS TEXT), CAST(labels AS TEXT), group_id, revision_id, status, "
        "created_at, updated_at, CAST(delivery AS TEXT), desired_revision_id, desired_generation"
    )
    assert_stored_alike(engine, "owner_device", device_columns, "id", made, orm_id)
    assert _stored(engine, "owner_device", "delivery", "id", made) == (None,)  # SQL NULL, not 'null'
    assert_stored_alike(engine, "owner_device_guid", "added_at", "device_id", made, orm_id)
    event_columns = "at, kind, CAST(detail AS TEXT)"
    assert_stored_alike(engine, "owner_device_event", event_columns, "device_id", made, orm_id)
    with unit_of_work(engine) as db:
        read = db.get(Device, made)
        assert read is not None
        assert (read.devmod, read.labels, read.delivery) == (FACTS, LABELS, None)
        assert utc(read.created_at) == utc(read.updated_at) == AT
        events = db.exec(select(DeviceEvent).where(DeviceEvent.device_id == made)).all()
        assert [(e.kind, e.detail, utc(e.at)) for e in events] == [("created", created, AT)]
        row = groups.device_row(orm_guid)
        assert row is not None
        assert (row["id"], row["devmod"], row["labels"]) == (orm_id, FACTS, LABELS)

    # TO2 completes: the devmod facts, the delivery (JSON) and an event; the ORM the same.
    delivery = {"result": "partial", "revision": 1, "delivered": ["é"], "missing": ["x"]}
    with unit_of_work(engine):
        assert revision.id is not None
        assigned = groups.revision_assignment(revision.id)
        assert assigned is not None
        groups.record_onboarding(sql_guid, None, FACTS, assigned.revision, now=AT, delivery=delivery)
    with unit_of_work(engine) as db:
        same = db.get(Device, orm_id)
        assert same is not None
        same.serial, same.group_id, same.revision_id, same.status = "SN-é", group.id, revision.id, ONBOARDED
        same.delivery, same.desired_revision_id, same.desired_generation = delivery, revision.id, 0
        db.add(same)
        detail = {"guid": str(Guid(sql_guid)), "revision": 1, "delivery": "partial", "missing": ["x"]}
        db.add(DeviceEvent(device_id=orm_id, at=AT, kind="onboarded", detail=detail))
    assert_stored_alike(engine, "owner_device", device_columns, "id", made, orm_id)
    onboarded = "SELECT at, kind, CAST(detail AS TEXT) FROM owner_device_event WHERE kind = 'onboarded'"
    with engine.connect() as conn:
        first, second = conn.execute(text(onboarded)).all()
    assert tuple(first) == tuple(second)
    with unit_of_work(engine) as db:
        read = db.get(Device, made)
        assert read is not None and read.delivery == delivery and read.devmod == FACTS

    # Without a revision the delivery is SQL NULL again (JSON(none_as_null=True), as the ORM).
    with unit_of_work(engine):
        groups.record_onboarding(sql_guid, None, FACTS, None, now=AT)
    assert _stored(engine, "owner_device", "delivery", "id", made) == (None,)


def test_group_rules_read_as_the_orm_reads_them(engine: Engine) -> None:
    """The live groups' rules (JSON lists and maps, a boolean) the ORM wrote, as TO2 reads them."""
    with unit_of_work(engine) as db:
        db.add(Group(name="all", is_default=True, members=["SN-ü", str(Guid.new())], labels=LABELS))
        db.add(Group(name="some", model="x*", priority=3))
        db.add(Group(name="gone", deleted_at=AT))
    with unit_of_work(engine) as db:
        rules = groups._LIVE_GROUP_RULES.all({})
        live = db.exec(select(Group).where(col(Group.deleted_at).is_(None)).order_by(col(Group.id))).all()
    expected = [
        (g.id, g.name, g.members, g.model, g.serial_pattern, g.labels, g.priority, g.is_default) for g in live
    ]
    assert rules == expected
    assert [type(rule[7]) for rule in rules] == [bool, bool] and rules[0][7] is True


def test_assignments_read_as_the_orm_wrote_them(engine: Engine) -> None:
    """A revision with its secrets (JSON config and files, bytes), by id and as the group's
    current one: its target revision when set, else its newest, as owner.inventory reads it."""
    config = {"files": [{"path": "/etc/ü", "content": "x"}], "ssh": {"user": "core", "keys": ["k"]}}
    files = [{"path": "/etc/secret", "mode": "0600", "owner": "root:root", "content": "s"}]
    with unit_of_work(engine) as db:
        group, bare = Group(name="fleet"), Group(name="bare")
        db.add(group)
        db.add(bare)
        db.flush()
        assert group.id is not None and bare.id is not None
        first = Revision(group_id=group.id, number=1, image="q/os@sha256:" + "1" * 64, config=config)
        second = Revision(group_id=group.id, number=2, image="q/os@sha256:" + "2" * 64, apply_mode="stage")
        db.add(first)
        db.add(second)
        db.flush()
        assert first.id is not None and second.id is not None
        db.add(RevisionSecret(revision_id=first.id, registry_auth=b"{}\x00", files=files))
        group_id, bare_id, first_id, second_id = group.id, bare.id, first.id, second.id
    with unit_of_work(engine):
        newest = groups.current_assignment(group_id)
        one = groups.revision_assignment(first_id)
        assert groups.current_assignment(bare_id) is None and groups.revision_assignment(-1) is None
    assert newest is not None and one is not None
    assert newest.revision == groups.RevisionRow(
        second_id, group_id, 2, "q/os@sha256:" + "2" * 64, "registry", "stage", {}
    )
    assert (newest.registry_auth, newest.secret_files, newest.group) == (
        None,
        [],
        groups.GroupRow(group_id, "fleet"),
    )
    assert (one.revision.config, one.registry_auth, one.secret_files) == (config, b"{}\x00", files)
    with unit_of_work(engine) as db:
        held = db.get(Group, group_id)
        assert held is not None
        held.target_revision_id = first_id
        db.add(held)
    with unit_of_work(engine):
        target = groups.current_assignment(group_id)
    with unit_of_work(engine) as db:
        held = db.get(Group, group_id)
        assert held is not None
        orm = inventory.current_revision(db, held)
        assert orm is not None and orm.id == first_id
    assert target is not None and target.revision.id == first_id and target.revision.number == 1


def test_checkins_are_stored_and_read_alike(engine: Engine) -> None:
    """A check-in's boolean, datetimes and event (JSON), recorded by its statements and by the ORM."""
    with unit_of_work(engine) as db:
        orm, checked = _device(status=ONBOARDED), _device(status=ONBOARDED)
        db.add(orm)
        db.add(checked)
        db.flush()
        assert orm.id is not None and checked.id is not None
        orm_id, checked_id = orm.id, checked.id
        secret = checkin.issue_secret(checked_id)
    observation = checkin.Observation(seq=1, state="failed", health="unhealthy", rolled_back=True)
    with unit_of_work(engine):
        outcome = checkin.record(secret, observation, now=AT)
    assert outcome is not None and outcome.device_id == checked_id
    detail = {
        "via": "check-in",
        "state": "failed",
        "revision": None,
        "booted_digest": None,
        "health": "unhealthy",
        "rolled_back": True,
    }
    with unit_of_work(engine) as db:
        same = db.get(Device, orm_id)
        assert same is not None
        same.status, same.updated_at, same.last_checkin_at, same.rolled_back = "failed", AT, AT, True
        same.apply_state, same.health, same.checkin_seq, same.held_generation = "failed", "unhealthy", 1, 0
        db.add(same)
        db.add(DeviceEvent(device_id=orm_id, at=AT, kind="failed", detail=detail))
    columns = (
        "status, updated_at, last_checkin_at, rolled_back, apply_state, health, checkin_seq, held_generation"
    )
    assert_stored_alike(engine, "owner_device", columns, "id", checked_id, orm_id)
    event_columns = "at, kind, CAST(detail AS TEXT)"
    assert_stored_alike(engine, "owner_device_event", event_columns, "device_id", checked_id, orm_id)
    with unit_of_work(engine) as db:
        read = db.get(Device, checked_id)
        assert read is not None and read.last_checkin_at is not None
        assert read.rolled_back is True and utc(read.last_checkin_at) == AT
        events = db.exec(select(DeviceEvent).where(DeviceEvent.device_id == checked_id)).all()
        assert [(e.kind, e.detail) for e in events] == [("failed", detail)]


def test_vouchers_to0_work_and_onboardings_are_stored_and_read_alike(engine: Engine) -> None:
    """TO2.Done's rows (datetimes, JSON) written by its statements and by the ORM."""
    modules = [{"module": "fdo.command", "status": "done", "command": ["/bin/true"], "ok": True}]
    values = {
        "raw": b"\x00voucher",
        "device_info": "dévice",
        "owner_key_spki": b"spki",
        "num_entries": 1,
        "state": ACTIVE,
        "imported_at": AT,
        "replaces_id": None,
    }
    guid = os.urandom(16)
    with unit_of_work(engine) as db:
        orm = OwnerVoucher.model_validate(values | {"guid": os.urandom(16)})
        db.add(orm)
        db.flush()
        assert orm.id is not None
        db.add(To0Work(voucher_id=orm.id, next_attempt_at=AT))
        db.add(DeviceOnboarding(guid=guid, voucher_id=orm.id, devmod=FACTS, modules=modules, completed_at=AT))
        orm_id, orm_guid = orm.id, orm.guid
    with unit_of_work(engine):
        inserted = lifecycle._INSERT_VOUCHER.first(values | {"guid": os.urandom(16)})
        assert inserted is not None
        made = int(inserted[0])
        lifecycle._ADD_TO0_WORK.rowcount({"voucher_id": made, "next_attempt_at": AT, "attempts": 0})
        onboarding = {"guid": guid, "new_guid": None, "voucher_id": made, "completed_at": AT}
        owner_app._INSERT_ONBOARDING.rowcount(
            onboarding | {"devmod": json.dumps(FACTS), "modules": json.dumps(modules)}
        )
    voucher_columns = "raw, device_info, owner_key_spki, num_entries, state, imported_at, replaced_by_id"
    assert_stored_alike(engine, "owner_voucher", voucher_columns, "id", made, orm_id)
    work_columns = "next_attempt_at, attempts, registered_until, claimed_by"
    assert_stored_alike(engine, "owner_to0_work", work_columns, "voucher_id", made, orm_id)
    onboarding_columns = "guid, new_guid, CAST(devmod AS TEXT), CAST(modules AS TEXT), completed_at"
    assert_stored_alike(engine, "owner_device_onboarding", onboarding_columns, "voucher_id", made, orm_id)
    with unit_of_work(engine) as db:
        voucher, work = (
            db.get(OwnerVoucher, made),
            db.exec(select(To0Work).where(To0Work.voucher_id == made)).one(),
        )
        assert voucher is not None and utc(voucher.imported_at) == AT and utc(work.next_attempt_at) == AT
        record = db.exec(select(DeviceOnboarding).where(DeviceOnboarding.voucher_id == made)).one()
        assert (record.devmod, record.modules, utc(record.completed_at)) == (FACTS, modules, AT)
        row = lifecycle.usable_row(orm_guid)
        assert row is not None and (row.id, row.raw, row.state) == (orm_id, b"\x00voucher", ACTIVE)


def test_to0_claims_and_outcomes_are_stored_and_read_alike(engine: Engine) -> None:
    """The TO0 scheduler's claim (datetime parameters) and a batch's outcome (datetimes
    inside its JSON parameter) store what the ORM stores, and read back alike."""
    renew, until = AT + timedelta(seconds=2700), AT + timedelta(seconds=3600)
    with unit_of_work(engine) as db:
        vouchers = [
            OwnerVoucher(guid=os.urandom(16), raw=b"v", owner_key_spki=b"k", imported_at=AT) for _ in range(2)
        ]
        db.add_all(vouchers)
        db.flush()
        assert vouchers[0].id is not None and vouchers[1].id is not None
        ours = To0Work(voucher_id=vouchers[0].id, next_attempt_at=AT)
        orm = To0Work(voucher_id=vouchers[1].id, next_attempt_at=AT, claimed_by="w", claim_expires_at=until)
        db.add_all([ours, orm])
        db.flush()
        ours_id, orm_id = ours.id, orm.id
    assert ours_id is not None and orm_id is not None
    with unit_of_work(engine):  # the ORM's row is claimed already: only ours is claimable
        claimed = to0._CLAIM.all({"worker": "w", "expires": until, "now": AT, "limit": 2})
    assert claimed == [(ours_id,)]
    assert_stored_alike(
        engine, "owner_to0_work", "next_attempt_at, claimed_by, claim_expires_at", "id", ours_id, orm_id
    )

    with unit_of_work(engine) as db:
        row = db.get(To0Work, orm_id)
        assert row is not None
        row.registered_until, row.next_attempt_at, row.attempts, row.last_error = until, renew, 2, 'é "x"'
        row.claimed_by = row.claim_expires_at = None
        db.add(row)
    with unit_of_work(engine):
        outcome = to0._outcome(sql.current().dialect, ours_id, until, renew, 2, 'é "x"')
        assert to0._FINISH.rowcount({"worker": "w", "rows": json.dumps([outcome])}) == 1
    columns = "registered_until, next_attempt_at, attempts, last_error, claimed_by, claim_expires_at"
    assert_stored_alike(engine, "owner_to0_work", columns, "id", ours_id, orm_id)
    with unit_of_work(engine) as db:
        read = db.get(To0Work, ours_id)
        assert read is not None and read.registered_until is not None
        assert (utc(read.registered_until), utc(read.next_attempt_at)) == (until, renew)
