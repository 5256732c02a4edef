"""Device records, group resolution and assignments (no HTTP; see ``docs/groups.md``).

Resolution (:func:`resolve_group`), first rule that yields a group wins:

1. **Explicit listing.** Groups whose ``members`` name the device — one of the GUIDs
   it has had, or its serial number.
2. **Selectors.** Groups with at least one selector (``model`` glob, ``serial_pattern``
   glob, ``labels``) whose selectors *all* match.
3. **Default.** The live default group, if there is one.

Within rule 1 or 2, the highest ``priority`` wins and a tie goes to the oldest group
(lowest id). Deleted groups never match. A group's assignment is its target revision
(:func:`current_assignment`; the newest when unset; publishing and rollouts: docs/rollouts.md).

The TO2 store calls :func:`assignment_for` while ServiceInfo is chosen and
:func:`record_onboarding` when TO2 completes, both inside its unit of work.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlmodel import Session, col, select

from fdo.serviceinfo.devmod import Devmod
from fdo.types import Guid
from fdo_server.db import lent, open_session
from fdo_server.sql import Conn, Sql
from owner.groups_tables import Device, DeviceEvent, DeviceGuid, Group, Revision, RevisionSecret
from owner.states import NEW, ONBOARDED, ONBOARDING, UNDELIVERED

DevmodLike = Devmod | Mapping[str, object] | None


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What group selectors look at."""

    guids: tuple[bytes, ...] = ()
    serial: str | None = None
    model: str | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """A group's current revision with its write-only secrets (for the TO2 store only)."""

    group: Group
    revision: Revision
    #: The registry ``auth.json`` bytes, if one was published.
    registry_auth: bytes | None
    #: Secret files ``[{"path", "mode", "owner", "content"}]``.
    secret_files: list[dict[str, Any]]


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _raw(guid: Guid | bytes) -> bytes:
    return guid.value if isinstance(guid, Guid) else guid


def _json_safe(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


_DEVMOD_FIELDS = tuple(f.name for f in dataclasses.fields(Devmod))


def devmod_dict(devmod: DevmodLike) -> dict[str, Any]:
    """The devmod facts as JSON-ready data (``dataclasses.asdict`` made JSON-safe: bytes as
    hex, tuples as lists; read field by field, since asdict deep-copies every value)."""
    if devmod is None:
        return {}
    if isinstance(devmod, Devmod):
        return {name: _json_safe(getattr(devmod, name)) for name in _DEVMOD_FIELDS}
    out = _json_safe(devmod)
    assert isinstance(out, dict)  # noqa: S101 - a mapping maps to a dict
    return out


def serial_of(devmod: DevmodLike) -> str | None:
    """devmod ``sn`` as text (a bstr serial that is not printable UTF-8 becomes hex)."""
    sn = devmod.sn if isinstance(devmod, Devmod) else (devmod or {}).get("sn")
    if isinstance(sn, bytes):
        try:
            text = sn.decode()
        except UnicodeDecodeError:
            return sn.hex()
        return (text if text.isprintable() else sn.hex()) or None
    return sn if isinstance(sn, str) and sn else None


def model_of(devmod: DevmodLike) -> str | None:
    """devmod ``device`` (the model)."""
    model = devmod.device if isinstance(devmod, Devmod) else (devmod or {}).get("device")
    return model if isinstance(model, str) and model else None


# ---------------------------------------------------------------------------- devices


def find_device(db: Session, guid: Guid | bytes) -> Device | None:
    """The device that has, or had, ``guid``."""
    row = db.exec(select(DeviceGuid).where(DeviceGuid.guid == _raw(guid))).first()
    return None if row is None else db.get(Device, row.device_id)


def device_guids(db: Session, device: Device) -> list[bytes]:
    """Every GUID of ``device``, oldest first."""
    rows = db.exec(
        select(DeviceGuid).where(DeviceGuid.device_id == device.id).order_by(col(DeviceGuid.id))
    ).all()
    return [r.guid for r in rows]


def add_event(
    db: Session, device: Device, kind: str, detail: Mapping[str, object] | None = None, *, now: datetime
) -> None:
    """Append to ``device``'s timeline."""
    assert device.id is not None  # noqa: S101 - flushed by ensure_device
    db.add(DeviceEvent(device_id=device.id, at=now, kind=kind, detail=dict(detail or {})))


def ensure_device(db: Session, guid: Guid | bytes, *, now: datetime | None = None) -> Device:
    """The device record for ``guid``, created (status ``new``) when missing."""
    db.flush()  # the lookup below reads the database directly
    row = _ensure_row(lent(db.connection()), _raw(guid), _now(now))
    device = db.get(Device, row["id"])
    assert device is not None  # noqa: S101 - found or made just now
    return device


# The TO2 hooks (:func:`assignment_for`, :func:`record_onboarding`) run once per
# onboarding on the FDO route: they run these statements on the unit of work's connection
# (:class:`fdo_server.sql.Sql`, on the driver's cursor) rather than ORM objects and flushes.
# JSON parameters are given as their text (``json.dumps``, as SQLAlchemy's JSON sends them).
_ROW_OF_GUID = Sql(
    "SELECT d.id, d.guid, d.serial, d.model, d.devmod, d.labels, d.group_id, d.assigned_revision_id, "
    "d.revision_id FROM owner_device_guid g JOIN owner_device d ON g.device_id = d.id WHERE g.guid = :g",
    jsons=("devmod", "labels"),
)
_GUIDS_OF_DEVICE = Sql("SELECT guid FROM owner_device_guid WHERE device_id = :d ORDER BY id")
# A device record made in TO2 (message 68), unless a concurrent TO2 of the same device
# made it first (two attempts of one device, two replicas): then that one is used (no
# row comes back).
_DEVICE_COLUMNS = (
    "guid",
    "serial",
    "model",
    "devmod",
    "labels",
    "group_id",
    "assigned_revision_id",
    "revision_id",
    "status",
    "created_at",
    "updated_at",
)
_INSERT_DEVICE = Sql(
    "INSERT INTO owner_device (guid, serial, model, devmod, labels, group_id, assigned_revision_id, "
    "revision_id, status, created_at, updated_at) VALUES (:guid, :serial, :model, :devmod, :labels, "
    ":group_id, :assigned_revision_id, :revision_id, :status, :created_at, :updated_at) "
    "ON CONFLICT (guid) DO NOTHING RETURNING id"
)
_INSERT_GUID = Sql(
    "INSERT INTO owner_device_guid (device_id, guid, added_at) VALUES (:device_id, :guid, :added_at)"
)
# A GUID the device takes on at the end of TO2, unless a record already holds it (one
# statement instead of a lookup and an insert).
_ADD_GUID = Sql(
    "INSERT INTO owner_device_guid (device_id, guid, added_at) VALUES (:device_id, :guid, :added_at) "
    "ON CONFLICT (guid) DO NOTHING"
)
_INSERT_EVENT = Sql(
    "INSERT INTO owner_device_event (device_id, at, kind, detail) VALUES (:device_id, :at, :kind, :detail)"
)
_SET_ASSIGNED = Sql(
    "UPDATE owner_device SET devmod = :devmod, serial = :serial, model = :model, group_id = :group, "
    "assigned_revision_id = :revision, status = :status, updated_at = :at WHERE id = :d"
)
# The revision handed out is the one the device should run (owner.desired).
_SET_ONBOARDED = Sql(
    "UPDATE owner_device SET guid = :guid, devmod = :devmod, serial = :serial, model = :model, "
    "group_id = :group, revision_id = :revision, status = :status, delivery = :delivery, "
    "desired_revision_id = COALESCE(:desired, desired_revision_id), "
    "desired_generation = COALESCE(:generation, desired_generation), updated_at = :at WHERE id = :d"
)


def _expire_devices(db: Session) -> None:
    """Device objects loaded earlier in this unit of work reload from their rows."""
    for obj in list(db.identity_map.values()):
        if isinstance(obj, Device):
            db.expire(obj)


def device_row(guid: Guid | bytes, conn: Conn | None = None) -> dict[str, Any] | None:
    """The record (id, guid, serial, model, devmod, labels, group_id,
    assigned_revision_id, revision_id) of the device that has, or had, ``guid``; read on
    ``conn``, by default the unit of work's (:func:`fdo_server.sql.current`)."""
    return _ROW_OF_GUID.mapping({"g": _raw(guid)}, conn)


def _event(conn: Conn | None, device_id: int, kind: str, detail: Mapping[str, object], at: datetime) -> None:
    _INSERT_EVENT.rowcount(
        {"device_id": device_id, "at": at, "kind": kind, "detail": json.dumps(dict(detail))}, conn
    )


def _ensure_row(conn: Conn | None, guid: bytes, at: datetime) -> Mapping[Any, Any]:
    """The :func:`device_row` of ``guid``, made now if there is none."""
    row = device_row(guid, conn)
    if row is not None:
        return row
    new: dict[str, Any] = {
        "guid": guid,
        "serial": None,
        "model": None,
        "devmod": {},
        "labels": {},
        "group_id": None,
        "assigned_revision_id": None,
        "revision_id": None,
    }
    new["id"] = _insert_row(conn, new, status=NEW, at=at)
    if new["id"] is None:  # made meanwhile by a concurrent transaction
        made = device_row(guid, conn)
        assert made is not None  # noqa: S101 - the insert found it
        return made
    return new


def _insert_row(conn: Conn | None, values: Mapping[str, Any], *, status: str, at: datetime) -> int | None:
    """A new device record with ``values`` (its GUID among them), that GUID in its
    history and the ``created`` event; returns its id, or None when a record with that
    GUID exists already (made by a concurrent transaction that has committed since)."""
    row = {"revision_id": None, **values, "status": status, "created_at": at, "updated_at": at}
    params = {name: row[name] for name in _DEVICE_COLUMNS}
    params["devmod"], params["labels"] = json.dumps(row["devmod"]), json.dumps(row["labels"])
    inserted = _INSERT_DEVICE.first(params, conn)
    if inserted is None:
        return None
    device_id = int(inserted[0])
    _INSERT_GUID.rowcount({"device_id": device_id, "guid": values["guid"], "added_at": at}, conn)
    _event(conn, device_id, "created", {"guid": str(Guid(values["guid"]))}, at)
    return device_id


# ---------------------------------------------------------------------------- resolution


class GroupRules(Protocol):
    """What resolution reads of a group: a :class:`Group` or a row of its columns."""

    id: int | None
    members: list[str]
    model: str | None
    serial_pattern: str | None
    labels: dict[str, str]
    priority: int
    is_default: bool


def _lists(group: GroupRules, facts: DeviceFacts) -> bool:
    for member in group.members:
        if facts.serial is not None and member == facts.serial:
            return True
        try:
            if uuid.UUID(member).bytes in facts.guids:
                return True
        except ValueError:
            continue
    return False


def has_selectors(group: GroupRules) -> bool:
    return bool(group.model or group.serial_pattern or group.labels)


def _selects(group: GroupRules, facts: DeviceFacts) -> bool:
    if not has_selectors(group):
        return False
    if group.model and (facts.model is None or not fnmatch.fnmatchcase(facts.model, group.model)):
        return False
    if group.serial_pattern and (
        facts.serial is None or not fnmatch.fnmatchcase(facts.serial, group.serial_pattern)
    ):
        return False
    return all(facts.labels.get(k) == v for k, v in group.labels.items())


def _best(groups: Sequence[GroupRules]) -> GroupRules | None:
    return min(groups, key=lambda g: (-g.priority, g.id or 0), default=None)


# To the driver directly: TO2 resolves a group once per onboarding, and usually finds none.
_LIVE_GROUP_RULES = Sql(
    "SELECT id, members, model, serial_pattern, labels, priority, is_default FROM owner_group "
    "WHERE deleted_at IS NULL ORDER BY id",
    jsons=("members", "labels"),
    bools=("is_default",),
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Rules:
    """A live group's resolution columns (a :class:`GroupRules`)."""

    id: int | None
    members: list[str]
    model: str | None
    serial_pattern: str | None
    labels: dict[str, str]
    priority: int
    is_default: bool


def resolve_group(db: Session, facts: DeviceFacts) -> Group | None:
    """The group of a device with ``facts`` (module docstring: the rule)."""
    db.flush()  # the rules are read from the database directly
    found = _resolve_group_id(lent(db.connection()), facts)
    return None if found is None else db.get(Group, found)


def _resolve_group_id(conn: Conn | None, facts: DeviceFacts) -> int | None:
    """:func:`resolve_group`'s group id, from the live groups' rules."""
    groups = [cast(GroupRules, _Rules(*row)) for row in _LIVE_GROUP_RULES.all({}, conn)]
    found = _best([g for g in groups if _lists(g, facts)])
    if found is None:
        found = _best([g for g in groups if not g.is_default and _selects(g, facts)])
    if found is None:
        found = next((g for g in groups if g.is_default), None)
    return None if found is None else found.id


def current_revision(db: Session, group: Group) -> Revision | None:
    """``group``'s target revision (docs/rollouts.md), else its newest."""
    if group.target_revision_id is not None and (found := db.get(Revision, group.target_revision_id)):
        return found
    newest = select(Revision).where(Revision.group_id == group.id).order_by(col(Revision.number).desc())
    return db.exec(newest).first()


def current_assignment(db: Session, group: Group) -> Assignment | None:
    """``group``'s target revision with its secrets; None before the first publish."""
    revision = current_revision(db, group)
    return None if revision is None else revision_assignment(db, group, revision)


def revision_assignment(db: Session, group: Group, revision: Revision) -> Assignment:
    """``revision`` of ``group`` with its write-only secrets."""
    secret = db.exec(select(RevisionSecret).where(RevisionSecret.revision_id == revision.id)).first()
    return Assignment(
        group=group,
        revision=revision,
        registry_auth=None if secret is None else secret.registry_auth,
        secret_files=[] if secret is None else list(secret.files),
    )


# ---------------------------------------------------------------------------- TO2 hooks


#: A session, or what makes the unit of work's session on demand
#: (:func:`fdo_server.db.current_session`): TO2 needs no ORM unless a group matches.
SessionSource = Session | Callable[[], Session]


def _session_now(db: SessionSource) -> Session | None:
    """``db`` if it is a session, else the unit of work's session if one was made."""
    return db if isinstance(db, Session) else open_session()


def assignment_for(
    db: SessionSource, guid: Guid | bytes, devmod: DevmodLike, *, now: datetime | None = None
) -> Assignment | None:
    """What the device ``guid`` with ``devmod`` should receive in this TO2.

    Creates or updates the device record (serial, model, devmod facts), resolves its
    group, and records the assigned revision (a timeline event when it changes). None
    when no group matches or the group has no revision yet. Given a session maker
    (TO2), it makes the session only when a group matches.
    """
    at = _now(now)
    session = _session_now(db)
    if session is not None:
        session.flush()  # the statements below go to the database directly
    conn = None if session is None else lent(session.connection())  # None: the unit of work's
    raw = _raw(guid)
    row = device_row(raw, conn)
    serial = serial_of(devmod) or (None if row is None else row["serial"])
    model = model_of(devmod) or (None if row is None else row["model"])
    guids = (raw,) if row is None else tuple(g for (g,) in _GUIDS_OF_DEVICE.all({"d": row["id"]}, conn))
    labels = {} if row is None else dict(row["labels"])
    group_id = _resolve_group_id(conn, DeviceFacts(guids=guids, serial=serial, model=model, labels=labels))
    group = None
    if group_id is not None:
        session = session if session is not None else db() if callable(db) else db
        group = session.get(Group, group_id)
    assignment = None if group is None or session is None else current_assignment(session, group)
    group_id = None if group is None else group.id
    revision_id = None if assignment is None else assignment.revision.id
    devmod_facts = devmod_dict(devmod) if devmod is not None else ({} if row is None else row["devmod"])
    if row is None:  # first TO2 of this device: the record is made with what it learnt
        values = {
            "guid": raw,
            "serial": serial,
            "model": model,
            "devmod": devmod_facts,
            "labels": {},
            "group_id": group_id,
            "assigned_revision_id": revision_id,
        }
        inserted = _insert_row(conn, values, status=ONBOARDING, at=at)
        if inserted is None:  # a concurrent TO2 of this device made the record first
            row = device_row(raw, conn)
            assert row is not None  # noqa: S101 - the insert found it
    if row is None:
        assert inserted is not None  # noqa: S101 - inserted just now
        device_id = inserted
        changed = group_id is not None or revision_id is not None
    else:
        device_id = row["id"]
        changed = row["group_id"] != group_id or row["assigned_revision_id"] != revision_id
    if changed:
        detail: dict[str, object] = {"group": None if group is None else group.name}
        if assignment is not None:
            detail["revision"] = assignment.revision.number
        _event(conn, device_id, "assigned", detail, at)
    if row is not None:
        _SET_ASSIGNED.rowcount(
            {
                "d": device_id,
                "devmod": json.dumps(devmod_facts),
                "serial": serial,
                "model": model,
                "group": group_id,
                "revision": revision_id,
                "status": ONBOARDING,
                "at": at,
            },
            conn,
        )
    if session is not None:
        _expire_devices(session)
    return assignment


def record_onboarding(
    db: Session | None,
    old_guid: Guid | bytes,
    new_guid: Guid | bytes | None,
    devmod: DevmodLike,
    revision: Revision | None,
    *,
    now: datetime | None = None,
    device: Mapping[Any, Any] | None = None,
    delivery: Mapping[str, Any] | None = None,
) -> int:
    """A TO2 completed: the record follows the device to ``new_guid`` (when TO2 replaced
    the GUID), stores its devmod facts and the revision it received. ``device`` is the
    :func:`device_row` of ``old_guid`` when the caller already read it. ``delivery`` is
    what the device got of ``revision`` (:func:`owner.delivery.delivery_of`): after a
    ``none`` delivery the status is ``undelivered`` and the record keeps the revision
    it had; otherwise ``onboarded`` with ``revision``. Returns the device's id. ``db``
    is None to write on the unit of work's connection when no ORM session was made."""
    at = _now(now)
    if db is not None:
        db.flush()  # the statements below go to the database directly
    conn = None if db is None else lent(db.connection())
    row = device if device is not None else _ensure_row(conn, _raw(old_guid), at)
    detail: dict[str, object] = {"guid": str(Guid(_raw(old_guid)))}
    guid = row["guid"]
    if new_guid is not None and _raw(new_guid) != row["guid"]:
        _ADD_GUID.rowcount({"device_id": row["id"], "guid": _raw(new_guid), "added_at": at}, conn)
        guid = _raw(new_guid)
        detail["new_guid"] = str(Guid(guid))
    group_id, revision_id = row["group_id"], row["revision_id"]
    status = ONBOARDED
    if revision is not None:
        group_id = revision.group_id
        if delivery is not None and delivery.get("result") == "none":
            status = UNDELIVERED  # nothing of the revision reached the device
            detail["assigned_revision"] = revision.number
        else:
            revision_id = revision.id
            detail["revision"] = revision.number
    if delivery is not None:
        detail["delivery"] = delivery.get("result")
        if delivery.get("missing"):
            detail["missing"] = list(delivery["missing"])
    _SET_ONBOARDED.rowcount(
        {
            "d": row["id"],
            "guid": guid,
            "devmod": json.dumps(devmod_dict(devmod) if devmod is not None else row["devmod"]),
            "serial": serial_of(devmod) or row["serial"],
            "model": model_of(devmod) or row["model"],
            "group": group_id,
            "revision": revision_id,
            "status": status,
            "delivery": None if revision is None or delivery is None else json.dumps(dict(delivery)),
            "desired": None if revision is None else revision.id,
            "generation": None if revision is None else 0,
            "at": at,
        },
        conn,
    )
    _event(conn, row["id"], "onboarded", detail, at)
    if db is not None:
        _expire_devices(db)
    return int(row["id"])


def record_status(
    db: Session,
    guid: Guid | bytes,
    status: str,
    detail: Mapping[str, object] | None = None,
    *,
    now: datetime | None = None,
) -> Device | None:
    """Set a device's status (``applied``, ``failed``) with a timeline event."""
    device = find_device(db, guid)
    if device is None:
        return None
    at = _now(now)
    device.status = status
    device.updated_at = at
    db.add(device)
    add_event(db, device, status, detail, now=at)
    return device
