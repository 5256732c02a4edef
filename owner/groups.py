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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from fdo.serviceinfo.devmod import Devmod
from fdo.types import Guid
from fdo_server.sql import Conn, Sql
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
class GroupRow:
    """The group an assignment comes from (``owner_group``: what the device plane reads)."""

    id: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class RevisionRow:
    """A published revision (``owner_revision``: what the device plane reads of it)."""

    id: int
    group_id: int
    number: int
    #: Digest-pinned image reference, ``name[:tag]@sha256:<64 hex>``.
    image: str
    transport: str
    apply_mode: str
    #: Files, units, ssh, policy, registries.d, public keys (no secrets).
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """A group's revision with its write-only secrets (for TO2 and the check-in only)."""

    group: GroupRow
    revision: RevisionRow
    #: The registry ``auth.json`` bytes, if one was published.
    registry_auth: bytes | None
    #: Secret files ``[{"path", "mode", "owner", "content"}]``.
    secret_files: list[dict[str, Any]]
    #: The device record it was resolved for (:func:`assignment_for`); None when it was
    #: read by revision (:func:`revision_assignment`).
    device_id: int | None = None


def now_or(now: datetime | None) -> datetime:
    """``now``, else the current UTC time."""
    return now or datetime.now(UTC)


def raw_guid(guid: Guid | bytes) -> bytes:
    """``guid``'s 16 bytes."""
    return guid.value if isinstance(guid, Guid) else guid


def json_safe(value: Any) -> Any:
    """``value`` (CBOR-decoded data) as JSON takes it: bytes as hex, tuples as lists, map
    keys as text."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    return value


_DEVMOD_FIELDS = tuple(f.name for f in dataclasses.fields(Devmod))


def devmod_dict(devmod: DevmodLike) -> dict[str, Any]:
    """The devmod facts as JSON-ready data (``dataclasses.asdict`` made JSON-safe: bytes as
    hex, tuples as lists; read field by field, since asdict deep-copies every value)."""
    if devmod is None:
        return {}
    if isinstance(devmod, Devmod):
        return {name: json_safe(getattr(devmod, name)) for name in _DEVMOD_FIELDS}
    out = json_safe(devmod)
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


def device_row(guid: Guid | bytes, conn: Conn | None = None) -> dict[str, Any] | None:
    """The record (id, guid, serial, model, devmod, labels, group_id,
    assigned_revision_id, revision_id) of the device that has, or had, ``guid``; read on
    ``conn``, by default the unit of work's (:func:`fdo_server.sql.current`)."""
    return _ROW_OF_GUID.mapping({"g": raw_guid(guid)}, conn)


def add_event_row(
    device_id: int, kind: str, detail: Mapping[str, object], *, at: datetime, conn: Conn | None = None
) -> None:
    """Append to the timeline of device ``device_id``, on ``conn`` (by default the unit of
    work's)."""
    _INSERT_EVENT.rowcount(
        {"device_id": device_id, "at": at, "kind": kind, "detail": json.dumps(dict(detail))}, conn
    )


def ensure_row(conn: Conn | None, guid: bytes, at: datetime) -> Mapping[Any, Any]:
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
    add_event_row(device_id, "created", {"guid": str(Guid(values["guid"]))}, at=at, conn=conn)
    return device_id


# ---------------------------------------------------------------------------- resolution


class GroupRules(Protocol):
    """What resolution reads of a group: a :class:`~owner.groups_tables.Group` or a
    :class:`GroupRule` (read-only members: either satisfies it)."""

    @property
    def id(self) -> int | None: ...
    @property
    def members(self) -> list[str]: ...
    @property
    def model(self) -> str | None: ...
    @property
    def serial_pattern(self) -> str | None: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def priority(self) -> int: ...
    @property
    def is_default(self) -> bool: ...


G = TypeVar("G", bound=GroupRules)


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


def _best(groups: Sequence[G]) -> G | None:
    return min(groups, key=lambda g: (-g.priority, g.id or 0), default=None)


# To the driver directly: TO2 resolves a group once per onboarding, and usually finds none.
_LIVE_GROUP_RULES = Sql(
    "SELECT id, name, members, model, serial_pattern, labels, priority, is_default FROM owner_group "
    "WHERE deleted_at IS NULL ORDER BY id",
    jsons=("members", "labels"),
    bools=("is_default",),
)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupRule:
    """A live group's name and resolution columns (a :class:`GroupRules`)."""

    id: int | None
    name: str
    members: list[str]
    model: str | None
    serial_pattern: str | None
    labels: dict[str, str]
    priority: int
    is_default: bool


def resolve_group(conn: Conn | None, facts: DeviceFacts) -> GroupRule | None:
    """The live group of a device with ``facts`` (module docstring: the rule), read on
    ``conn`` (by default the unit of work's)."""
    groups = [GroupRule(*row) for row in _LIVE_GROUP_RULES.all({}, conn)]
    found = _best([g for g in groups if _lists(g, facts)])
    if found is None:
        found = _best([g for g in groups if not g.is_default and _selects(g, facts)])
    if found is None:
        found = next((g for g in groups if g.is_default), None)
    return found


# ---------------------------------------------------------------------------- TO2 hooks


# A revision with its group's name and its secrets: one statement, by revision or as a
# group's current one (its target, docs/rollouts.md, else its newest).
_ASSIGNMENT = (
    "SELECT g.id AS g_id, g.name AS g_name, r.id, r.group_id, r.number, r.image, r.transport, "
    "r.apply_mode, r.config, s.registry_auth, s.files FROM owner_revision r "
    "JOIN owner_group g ON g.id = r.group_id "
    "LEFT JOIN owner_revision_secret s ON s.revision_id = r.id WHERE r.id = "
)
_REVISION_ASSIGNMENT = Sql(_ASSIGNMENT + ":r", jsons=("config", "files"))
# A group's current revision: its target (docs/rollouts.md), else its newest.
_CURRENT_REVISION = (
    "SELECT COALESCE(cg.target_revision_id, (SELECT cr.id FROM owner_revision cr "
    "WHERE cr.group_id = cg.id ORDER BY cr.number DESC LIMIT 1)) FROM owner_group cg WHERE cg.id = :g"
)
_CURRENT_REVISION_ID = Sql(_CURRENT_REVISION)
_CURRENT_ASSIGNMENT = Sql(f"{_ASSIGNMENT}({_CURRENT_REVISION})", jsons=("config", "files"))


def _assignment(row: Sequence[Any] | None, device_id: int | None = None) -> Assignment | None:
    if row is None:
        return None
    g_id, g_name, r_id, group_id, number, image, transport, apply_mode, config, auth, files = row
    return Assignment(
        group=GroupRow(int(g_id), str(g_name)),
        revision=RevisionRow(
            int(r_id), int(group_id), int(number), str(image), str(transport), str(apply_mode), dict(config)
        ),
        registry_auth=None if auth is None else bytes(auth),
        secret_files=[] if files is None else list(files),
        device_id=device_id,
    )


def revision_assignment(revision_id: int, conn: Conn | None = None) -> Assignment | None:
    """Revision ``revision_id`` with its write-only secrets; None when there is none."""
    return _assignment(_REVISION_ASSIGNMENT.first({"r": revision_id}, conn))


def current_revision_id(group_id: int, conn: Conn | None = None) -> int | None:
    """The id of group ``group_id``'s target revision, else its newest; None before the
    first publish."""
    found = _CURRENT_REVISION_ID.scalar({"g": group_id}, conn)
    return None if found is None else int(found)


def current_assignment(group_id: int, conn: Conn | None = None) -> Assignment | None:
    """Group ``group_id``'s target revision with its secrets; None before the first publish."""
    return _assignment(_CURRENT_ASSIGNMENT.first({"g": group_id}, conn))


def assignment_for(
    guid: Guid | bytes, devmod: DevmodLike, *, now: datetime | None = None, conn: Conn | None = None
) -> Assignment | None:
    """What the device ``guid`` with ``devmod`` should receive in this TO2.

    Creates or updates the device record (serial, model, devmod facts), resolves its
    group, and records the assigned revision (a timeline event when it changes). None
    when no group matches or the group has no revision yet. Runs on ``conn``, by default
    the unit of work's (:func:`fdo_server.sql.current`).
    """
    at = now_or(now)
    raw = raw_guid(guid)
    row = device_row(raw, conn)
    serial = serial_of(devmod) or (None if row is None else row["serial"])
    model = model_of(devmod) or (None if row is None else row["model"])
    guids = (raw,) if row is None else tuple(g for (g,) in _GUIDS_OF_DEVICE.all({"d": row["id"]}, conn))
    labels = {} if row is None else dict(row["labels"])
    group = resolve_group(conn, DeviceFacts(guids=guids, serial=serial, model=model, labels=labels))
    assignment = None if group is None or group.id is None else current_assignment(group.id, conn)
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
        add_event_row(device_id, "assigned", detail, at=at, conn=conn)
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
    return None if assignment is None else dataclasses.replace(assignment, device_id=int(device_id))


def record_onboarding(
    old_guid: Guid | bytes,
    new_guid: Guid | bytes | None,
    devmod: DevmodLike,
    revision: RevisionRow | None,
    *,
    now: datetime | None = None,
    device: Mapping[Any, Any] | None = None,
    delivery: Mapping[str, Any] | None = None,
    conn: Conn | None = None,
) -> int:
    """A TO2 completed: the record follows the device to ``new_guid`` (when TO2 replaced
    the GUID), stores its devmod facts and the revision it received. ``device`` is the
    :func:`device_row` of ``old_guid`` when the caller already read it. ``delivery`` is
    what the device got of ``revision`` (:func:`owner.delivery.delivery_of`): after a
    ``none`` delivery the status is ``undelivered`` and the record keeps the revision
    it had; otherwise ``onboarded`` with ``revision``. Returns the device's id. Runs on
    ``conn``, by default the unit of work's."""
    at = now_or(now)
    row = device if device is not None else ensure_row(conn, raw_guid(old_guid), at)
    detail: dict[str, object] = {"guid": str(Guid(raw_guid(old_guid)))}
    guid = row["guid"]
    if new_guid is not None and raw_guid(new_guid) != row["guid"]:
        _ADD_GUID.rowcount({"device_id": row["id"], "guid": raw_guid(new_guid), "added_at": at}, conn)
        guid = raw_guid(new_guid)
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
    add_event_row(row["id"], "onboarded", detail, at=at, conn=conn)
    return int(row["id"])
